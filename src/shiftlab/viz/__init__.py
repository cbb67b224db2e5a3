"""Pictures: matplotlib figures, GIF animations and the HTML report."""
from .figure import new_figure, save_figure
from .plots import (plot_accuracy_heatmap, plot_layer_errors, plot_model_bars, plot_sensitivity,
                    plot_stability)

__all__ = ["new_figure", "save_figure", "plot_layer_errors", "plot_stability",
           "plot_accuracy_heatmap", "plot_sensitivity", "plot_model_bars"]
