"""Pictures: matplotlib figures, GIF animations and the HTML report."""
from .figure import new_figure, save_figure

__all__ = ["new_figure", "save_figure"]
