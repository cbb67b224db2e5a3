"""The seeds' claims as experiments: ``shiftlab experiment NAME``.

Each experiment is a module with ``compute`` (the numbers, as plain data, no drawing),
``draw`` (the figures from that data alone), ``claims`` and ``summarise`` (claims, table,
summary) and ``run(out: Path, *, seed: int = 0, quick: bool = False, log=print) ->
ExperimentResult``, which does them in turn and saves the data (:mod:`.base`);
:func:`run_experiment` writes ``experiment-NAME.json`` beside the figures, :func:`redraw`
draws the figures again from the saved data. ``quick=True`` shrinks it for the test suite (and
trains its nets from scratch on a few digits). An experiment that needs trained nets
(:data:`TRAINS`) uses the shipped weights by default and takes ``retrain=True`` to train
them again (:mod:`.trained`). Modules are imported only when their experiment runs.
"""
from __future__ import annotations

import importlib
import time
from pathlib import Path

from ..errors import ShiftlabError
from .base import ExperimentResult, load_data

#: name -> (module, one-line description)
EXPERIMENTS: dict[str, tuple[str, str]] = {
    "pooling": ("pooling", "max-pooling gives invariance only to small shifts: no pool vs pool 2, 4 vs global"),
    "augmentation": ("augmentation", "invariance learned from shifted data does not reach beyond the trained region"),
    "convolution-theorem": ("convolution_theorem", "a linear map that commutes with shifts is a convolution"),
    "template-matching": ("template_matching", "correlation maps move with the object; their max does not"),
    "bag-of-features": ("bag_of_features", "global pooling of letter detectors cannot tell anagrams apart"),
    "rotation": ("rotation", "CNNs are not rotation-equivariant; a p4 group-conv net is, exactly for rot90"),
    "receptive-fields": ("receptive_fields", "Hubel & Wiesel for a CNN: bar sweeps give position/orientation tuning"),
    "weight-sharing": ("weight_sharing", "a conv layer: far fewer parameters than a dense one, and equivariant"),
    "time-vs-frequency": ("time_vs_frequency", "speech: spectrograms are shift-invariant along time, not frequency"),
}


#: experiments that use trained nets -> the shipped weights they use (unless quick or retrain)
TRAINS: dict[str, tuple[str, ...]] = {
    "augmentation": ("augmentation-centred", "augmentation-shifted"),
    "rotation": ("rotation-lenet-wolf", "rotation-p4-cnn"),
    "receptive-fields": ("lenet-wolf",),
}


def _module(name: str):
    if name not in EXPERIMENTS:
        raise ShiftlabError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f"{__name__}.{EXPERIMENTS[name][0]}")


def run_experiment(name: str, out: str | Path, *, seed: int = 0, quick: bool = False,
                   retrain: bool = False, log=print) -> ExperimentResult:
    """Run experiment ``name``, save its JSON (and figures) in ``out``, return the result.
    ``retrain``: train the nets it needs again instead of using the shipped weights."""
    module = _module(name)
    out = Path(out)
    start = time.perf_counter()
    extra = {"retrain": retrain} if name in TRAINS else {}
    result = module.run(out, seed=seed, quick=quick, log=log, **extra)
    result.seconds = round(time.perf_counter() - start, 2)
    result.save(out)
    return result


def redraw(name: str, folder: str | Path) -> list[Path]:
    """Draw experiment ``name``'s figures again in ``folder`` from the data its run saved
    there (``experiment-data/NAME.json``), computing nothing; returns the PNGs."""
    return _module(name).draw(load_data(folder, name), Path(folder))


__all__ = ["EXPERIMENTS", "TRAINS", "ExperimentResult", "run_experiment", "redraw"]
