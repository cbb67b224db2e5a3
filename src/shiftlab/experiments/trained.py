"""Trained nets for the experiments: the shipped weights (seconds), or the same run again.

An experiment that needs a trained net asks for a :data:`shiftlab.weights.PRETRAINED`
entry by name. By default it gets the shipped weights (``weights/NAME/``); with
``retrain=True`` the entry's exact ``shiftlab train`` settings run again into
``OUT/experiment-models/NAME/`` (not ``OUT/models/``, which holds the demo's audited models).
Either way the experiment records what it used (:func:`describe`) in its JSON ``settings``.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..weights import PRETRAINED, WEIGHTS_FILE, provenance, sha256

FOLDER = "experiment-models"


def experiment_model(name: str, out: str | Path, *, retrain: bool = False,
                     log=print) -> tuple[nn.Module, dict]:
    """The trained model of entry ``name`` in eval mode, and a description of its weights
    (source, SHA-256, training config, test accuracy on all 10,000 MNIST test digits)."""
    from ..loading import load_trained
    from ..weights import load_pretrained
    entry = PRETRAINED[name]
    if not retrain:
        model, info = load_pretrained(name), {"source": "shipped", **provenance(name)}
        log(f"using the shipped weights {info['weights']} ({info['test_accuracy']:.2%} on "
            f"{info['test_images']:,} MNIST test digits; retrain=True trains them again)")
        return model, info
    from ..train import train
    folder = Path(out) / FOLDER / name
    log(f"training {name} ({entry.model}, {entry.epochs} epoch{'s' * (entry.epochs > 1)} on "
        f"{f'{entry.limit:,}' if entry.limit else 'all 50,000'} MNIST training digits) ...")
    record = train(entry.train_config(), folder, progress=False, log=lambda *_: None)
    info = {"source": "retrained", "weights": str(folder), "model": entry.model,
            "sha256": sha256(folder / WEIGHTS_FILE), "config": record.config,
            "test_accuracy": record.test_accuracy, "test_images": record.test_images}
    return load_trained(entry.model, folder, entry.input_size), info


def describe(info: dict) -> str:
    """One phrase for a summary: where the weights came from and how accurate they are."""
    how = "shipped" if info["source"] == "shipped" else "retrained"
    return (f"{how} weights {info['weights']}, {info['test_accuracy']:.1%} on "
            f"{info['test_images']:,} MNIST test digits")


__all__ = ["experiment_model", "describe", "FOLDER"]
