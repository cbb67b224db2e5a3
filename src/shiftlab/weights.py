"""Trained weights shipped with shiftlab in ``weights/NAME/``, and how each one was trained.

The catalogue sits above the zoo, the loader and the training loop (it names zoo models,
loads them with :mod:`shiftlab.loading` and retrains them with ``shiftlab train``), so the
zoo (:mod:`shiftlab.models`) imports none of them.

Every entry of :data:`PRETRAINED` is one seeded ``shiftlab train`` run on real MNIST
(50,000 training digits, tested on all 10,000 test digits). Its folder holds
``model.safetensors`` and ``train.json``: the training record (config, loss and accuracy per
epoch, test accuracy) plus a ``provenance`` block written here (the exact command, the
versions, the CPU kernels and torch's thread count, and the SHA-256 of the file and of its
tensors).

``make weights`` (``python -m shiftlab.weights``) retrains them all, in order (an
entry that starts from another's weights comes after it). Training is bitwise reproducible
on CPU for the same versions, CPU kernels and thread count (see :mod:`shiftlab.train`): the
tensors come out the same (``tensors_sha256``), though the file's bytes may not, since
safetensors does not fix the order of its header.

Who uses what: the demo's five models (:data:`shiftlab.demo.RUNS`), the ``rotation``
experiment (``rotation-*``, trained on a 29×29 canvas), the ``augmentation`` experiment
(``augmentation-*``, a 40×40 canvas) and the ``receptive-fields`` experiment (``lenet-wolf``).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ShiftlabError

WEIGHTS_FILE = "model.safetensors"
RECORD_FILE = "train.json"
#: the repository's weights folder (src/shiftlab/ → repository root)
ROOT = Path(__file__).resolve().parents[2] / "weights"


@dataclass(frozen=True)
class Pretrained:
    """One shipped ``shiftlab train`` run: the zoo ``model`` trained as ``name``."""
    name: str
    model: str
    epochs: int
    lr: float = 3e-3
    batch_size: int = 128
    augment: str | None = None
    canvas: int | None = None          # images placed centred on a canvas x canvas first
    init: str | None = None            # the entry whose weights this one starts from
    seed: int = 0
    limit: int | None = None           # training digits (None: all 50,000; tests shrink it)
    min_accuracy: float = 0.98         # on all 10,000 MNIST test digits (a test checks it)
    used_by: str = "demo"

    @property
    def input_size(self) -> int:
        return self.canvas or 28

    def train_args(self, root: str | Path = "weights") -> list[str]:
        """The ``shiftlab train`` arguments that make this entry in ``root/NAME``."""
        root = Path(root)
        args = ["train", "--model", self.model, "--data", "mnist", "--epochs", str(self.epochs),
                "--batch-size", str(self.batch_size), "--lr", str(self.lr), "--seed", str(self.seed)]
        if self.augment:
            args += ["--augment", self.augment]
        if self.canvas:
            args += ["--canvas", str(self.canvas)]
        if self.init:
            args += ["--init", str(root / self.init / WEIGHTS_FILE)]
        if self.limit:
            args += ["--limit", str(self.limit)]
        return args + ["--out", str(root / self.name), "--quiet"]

    def train_config(self, init: str | Path | None = None):
        """The :class:`shiftlab.train.TrainConfig` of this run (``init``: the weights file of
        the entry it starts from, wherever they are)."""
        from .train import TrainConfig
        if self.init and init is None:
            raise ShiftlabError(f"{self.name} starts from {self.init}'s weights; say where they are")
        return TrainConfig(model=self.model, data="mnist", epochs=self.epochs, batch_size=self.batch_size,
                           lr=self.lr, augment=self.augment, canvas=self.canvas, seed=self.seed,
                           limit=self.limit, init=None if init is None else str(init))

    def config(self) -> dict:
        """The settings ``train.json`` must show (a subset of its ``config``)."""
        return {"model": self.model, "data": "mnist", "epochs": self.epochs, "lr": self.lr,
                "batch_size": self.batch_size, "augment": self.augment, "canvas": self.canvas,
                "seed": self.seed, "limit": self.limit}


PRETRAINED: dict[str, Pretrained] = {p.name: p for p in (
    Pretrained("lenet-wolf", "lenet-wolf", epochs=3,
               used_by="demo, receptive-fields experiment"),
    Pretrained("lenet-wolf-shift3", "lenet-wolf", epochs=2, lr=2e-3, augment="shift:3", init="lenet-wolf"),
    Pretrained("lenet-wolf-maxpool", "lenet-wolf-maxpool", epochs=4),
    Pretrained("lenet-wolf-maxpool-blur", "lenet-wolf-maxpool-blur", epochs=2, lr=1e-3,
               init="lenet-wolf-maxpool"),
    Pretrained("lenet-wolf-maxpool-aps", "lenet-wolf-maxpool-aps", epochs=5, lr=3e-3,
               init="lenet-wolf-maxpool"),
    Pretrained("lenet-wolf-maxpool-blur5", "lenet-wolf-maxpool-blur5", epochs=2, lr=1e-3,
               init="lenet-wolf-maxpool", used_by="side-by-side table (benchmarks/mnist_side_by_side.py)"),
    Pretrained("lenet-wolf-maxpool-alias-free", "lenet-wolf-maxpool-alias-free", epochs=3, lr=1e-3,
               init="lenet-wolf-maxpool", used_by="side-by-side table (benchmarks/mnist_side_by_side.py)"),
    Pretrained("rotation-lenet-wolf", "lenet-wolf", epochs=2, canvas=29, used_by="rotation experiment"),
    Pretrained("rotation-p4-cnn", "p4-cnn", epochs=10, canvas=29, min_accuracy=0.97,
               used_by="rotation experiment"),
    Pretrained("augmentation-centred", "lenet-wolf", epochs=1, canvas=40, used_by="augmentation experiment"),
    Pretrained("augmentation-shifted", "lenet-wolf", epochs=1, canvas=40, augment="shift:2",
               used_by="augmentation experiment"),
)}


def pretrained_folder(name: str, root: str | Path | None = None) -> Path:
    """The folder of shipped weights ``name``; a one-line error if they are missing."""
    if name not in PRETRAINED:
        raise ShiftlabError(f"no shipped weights named {name!r}; choose from {', '.join(PRETRAINED)}")
    folder = Path(root or ROOT) / name
    for file in (WEIGHTS_FILE, RECORD_FILE):
        if not (folder / file).is_file():
            raise ShiftlabError(f"shipped weights {name!r} are missing ({folder / file}); "
                                "run `make weights` to train them again")
    return folder


def load_pretrained(name: str, root: str | Path | None = None):
    """The shipped model ``name`` (its zoo model with the shipped weights), in eval mode."""
    from .loading import load_trained
    folder = pretrained_folder(name, root)
    entry = PRETRAINED[name]
    return load_trained(entry.model, folder, entry.input_size)


def sha256(path: str | Path) -> str:
    """SHA-256 of the file's bytes (what was shipped)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tensors_sha256(path: str | Path) -> str:
    """SHA-256 of the tensors in a safetensors file (name, dtype, shape and bytes of each, by
    name): equal for equal weights even where the file's header orders its entries otherwise,
    as safetensors may from one save to the next."""
    from safetensors.torch import load_file
    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(str(path)).items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b"")
    return digest.hexdigest()


def provenance(name: str, root: str | Path | None = None) -> dict:
    """What an experiment or the demo records about the shipped weights it used."""
    folder = pretrained_folder(name, root)
    record = json.loads((folder / RECORD_FILE).read_text())
    return {"weights": f"weights/{name}", "model": PRETRAINED[name].model,
            "sha256": sha256(folder / WEIGHTS_FILE), "config": record.get("config"),
            "test_accuracy": record.get("test_accuracy"), "test_images": record.get("test_images")}


def versions() -> dict:
    """What decides whether retraining gives the same bits: versions, CPU kernels, threads."""
    import numpy

    from . import __version__
    return {"shiftlab": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": torch.get_num_threads()}


def in_order(names: list[str]) -> list[str]:
    """``names`` with every entry after the one it starts from (``init``), when both are asked for."""
    done: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        init = PRETRAINED[name].init
        if init and init in names:
            visit(init)
        done.append(name)
    for name in names:
        visit(name)
    return done


def retrain(names: list[str] | None = None, root: str | Path | None = None, log=print) -> list[Path]:
    """Train shipped weights again with ``shiftlab train`` (in a subprocess, from the folder
    above ``root``), then stamp each ``train.json`` with its provenance and drop the checkpoint."""
    root = Path(root or ROOT).resolve()
    unknown = [n for n in names or () if n not in PRETRAINED]
    if unknown:
        raise ShiftlabError(f"no shipped weights named {', '.join(unknown)}; choose from {', '.join(PRETRAINED)}")
    names = in_order(list(names or PRETRAINED))
    written = []
    for i, name in enumerate(names, 1):
        entry = PRETRAINED[name]
        args = entry.train_args(root.name)
        command = "shiftlab " + shlex.join(args)
        log(f"[weights {i}/{len(names)}] {command}")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                                          os.environ.get("PYTHONPATH")])))
        done = subprocess.run([sys.executable, "-m", "shiftlab", *args], cwd=root.parent, env=env)
        if done.returncode:
            raise ShiftlabError(f"training {name} failed (exit status {done.returncode}): {command}")
        folder = stamp(name, root, command)
        record = json.loads((folder / RECORD_FILE).read_text())
        log(f"[weights {i}/{len(names)}] {name}: test accuracy {record['test_accuracy']:.2%} "
            f"on {record['test_images']:,} digits -> {folder}")
        written.append(folder)
    from .io import write_text_atomic
    write_text_atomic(root / "README.md", readme(root))
    return written


def readme(root: str | Path | None = None) -> str:
    """``weights/README.md``: what each folder holds, how it was trained, how accurate it is
    (read from the records; :func:`retrain` rewrites it)."""
    root = Path(root or ROOT)
    lines = ["# Shipped weights", "",
             "Trained by `make weights` (`python -m shiftlab.weights`): one seeded "
             "`shiftlab train` run per folder on real MNIST (all 50,000 training digits), tested on "
             "all 10,000 test digits. Each folder holds `model.safetensors` and `train.json` (config, "
             "loss and accuracy per epoch, test accuracy, and a `provenance` block: the exact command, "
             "versions, torch's thread count, the weights' SHA-256). Catalogue: "
             "`src/shiftlab/weights.py`.", "",
             "| folder | zoo model | canvas | epochs | lr | augment | starts from | test accuracy | used by |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, p in PRETRAINED.items():
        record = root / name / RECORD_FILE
        acc = json.loads(record.read_text())["test_accuracy"] if record.is_file() else None
        lines.append(f"| `{name}` | `{p.model}` | {f'{p.canvas}x{p.canvas}' if p.canvas else '28x28'} | "
                     f"{p.epochs} | {p.lr:g} | {p.augment or '-'} | {p.init or '-'} | "
                     f"{'not trained' if acc is None else f'{acc:.2%}'} | {p.used_by} |")
    return "\n".join(lines) + "\n"


def stamp(name: str, root: str | Path, command: str) -> Path:
    """After training ``name`` into ``root/NAME``: drop the checkpoint (pickled Adam state, not
    shipped) and add the ``provenance`` block to ``train.json``."""
    from .io import write_text_atomic
    folder = Path(root) / name
    (folder / "checkpoint.pt").unlink(missing_ok=True)
    record = json.loads((folder / RECORD_FILE).read_text())
    record["provenance"] = {"command": command, "versions": versions(),
                            "sha256": sha256(folder / WEIGHTS_FILE),
                            "tensors_sha256": tensors_sha256(folder / WEIGHTS_FILE),
                            "used_by": PRETRAINED[name].used_by}
    write_text_atomic(folder / RECORD_FILE, json.dumps(record, indent=1) + "\n")
    return folder


def main(argv: list[str] | None = None) -> int:
    """``python -m shiftlab.weights [NAME ...]``: retrain shipped weights (all by default)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        retrain(argv or None)
    except ShiftlabError as err:
        print(f"shiftlab weights: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
