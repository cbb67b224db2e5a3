"""``make demo``, the main job: train the zoo on real MNIST, audit it, animate it, report it.

Steps (each prints one progress line, with its time):

1. **models**: the demo models (:data:`RUNS`) in ``out/models/NAME/``. By default they are
   the weights shipped in ``weights/NAME/`` (:mod:`shiftlab.weights`; trained by
   ``make weights`` with ``shiftlab train``, ≥ 98 % on all 10,000 MNIST test digits), copied
   with their ``train.json``. With ``retrain`` every run is trained again with the same
   settings (a run that has no shipped weights is always trained; one whose ``train.json``
   shows the same settings is reused, and says so). The fixed nets (BlurPool, APS) and the
   shift-augmented net start from their baseline's trained weights (``init``: tensors
   matching by name and shape) and are fine-tuned, the way a user fixes a trained model:
   convert, then train briefly.
2. **audit** each model on MNIST test digits under circular and canvas shifts
   → ``out/audit-NAME-PROTOCOL.json``; the circular audit adds half-pixel shifts, so the
   report's overview shows every model's worst-case gap over integer and half-pixel shifts.
3. **animate** Wolf's sliding digit on a 38×38 canvas through ``lenet-wolf`` with and
   without shift augmentation (their trained weights in ``lenet-wolf-sliding``, whose
   linear head slides over the canvas) → ``out/animation-NAME.gif``, and precompute the
   report's shift explorer → ``out/explorer-NAME.json``.
4. **experiments**: every one of ``shiftlab experiment --list`` but time-vs-frequency, those that need trained
   nets with their shipped weights (trained again with ``retrain``), then the **report**:
   figures and one self-contained ``out/report.html``.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .experiments import EXPERIMENTS
from .fmt import pct, points
from .weights import PRETRAINED


@dataclass(frozen=True)
class DemoRun:
    """One model the demo trains: a zoo ``model`` trained as ``name``."""
    name: str
    model: str
    epochs: int = 1
    limit: int | None = None          # training images (None: all 50,000)
    augment: str | None = None
    init: str | None = None           # the demo run whose weights this one starts from
    lr: float = 3e-3
    animate_as: str | None = None     # a zoo model that runs these weights on the canvas


def shipped_run(name: str, animate_as: str | None = None) -> DemoRun:
    """The demo run of the shipped weights ``name``, with the settings they were trained with."""
    p = PRETRAINED[name]
    return DemoRun(name, p.model, epochs=p.epochs, augment=p.augment, init=p.init, lr=p.lr,
                   animate_as=animate_as)


RUNS: tuple[DemoRun, ...] = (
    shipped_run("lenet-wolf", animate_as="lenet-wolf-sliding"),
    shipped_run("lenet-wolf-shift3", animate_as="lenet-wolf-sliding"),
    shipped_run("lenet-wolf-maxpool"),
    shipped_run("lenet-wolf-maxpool-blur"),
    shipped_run("lenet-wolf-maxpool-aps"),
)


@dataclass
class DemoSettings:
    """Sizes of the demo; the test suite shrinks them."""
    train_limit: int | None = None    # cap on every run's training images
    test_images: int | None = None    # for test accuracy (None: all 10,000)
    audit_images: int = 100
    audit_shifts: str = "-4:4"
    digit_index: int = 0              # the MNIST test digit that slides
    path: str = "left-right"          # its path across the canvas
    canvas: int = 38                  # the canvas it slides on
    # every experiment but the speech one, which first makes its spoken digits and trains
    # an audio net (about a minute more): `shiftlab experiment time-vs-frequency --out out`
    experiments: tuple[str, ...] = tuple(n for n in EXPERIMENTS if n != "time-vs-frequency")
    runs: tuple[DemoRun, ...] = RUNS
    seed: int = 0
    shipped: bool = True              # use the shipped weights of runs that have them


def _say(step: str, message: str) -> None:
    print(f"[{step}] {message}", flush=True)


def use_shipped(folder: Path, name: str) -> dict:
    """Copy the shipped weights ``name`` and their ``train.json`` into ``folder`` (unless the
    same files are there already); return the training record."""
    from .weights import RECORD_FILE, WEIGHTS_FILE, pretrained_folder
    source = pretrained_folder(name)
    for file in (WEIGHTS_FILE, RECORD_FILE):
        target = folder / file
        if not (target.is_file() and target.read_bytes() == (source / file).read_bytes()):
            from .io import atomic_path
            with atomic_path(target) as tmp:
                shutil.copyfile(source / file, tmp)
    return json.loads((folder / RECORD_FILE).read_text())


def train_runs(out: Path, settings: DemoSettings, retrain: bool = False) -> dict[str, dict]:
    """Use the shipped weights of every demo run (train, or reuse, with ``retrain`` or where
    none are shipped); return each run's training record."""
    from .data import load_data
    from .train import RECORD, WEIGHTS, TrainConfig, train
    records: dict[str, dict] = {}
    to_train = []
    for i, run in enumerate(settings.runs, 1):
        step = f"train {i}/{len(settings.runs)}"
        if settings.shipped and not retrain and run.name in PRETRAINED:
            record = records[run.name] = use_shipped(out / "models" / run.name, run.name)
            _say(step, f"using shipped {run.name}: test accuracy {record['test_accuracy']:.2%} on "
                       f"{record['test_images']:,} MNIST test digits (weights/{run.name}; --retrain to train)")
        else:
            to_train.append((step, run))
    if not to_train:
        return records
    train_xy = load_data("mnist", split="train", seed=settings.seed)
    test_x, test_y = load_data("mnist", split="test", seed=settings.seed)
    test_xy = (test_x[:settings.test_images], test_y[:settings.test_images])
    for step, run in to_train:
        folder = out / "models" / run.name
        limit = min(filter(None, (run.limit, settings.train_limit)), default=None)
        init = str(out / "models" / run.init / WEIGHTS) if run.init else None
        config = TrainConfig(model=run.model, data="mnist", epochs=run.epochs, lr=run.lr,
                             augment=run.augment, seed=settings.seed,
                             limit=limit, init=init)
        record_path = folder / RECORD
        weights = folder / WEIGHTS
        stale = init is not None and weights.is_file() and Path(init).is_file() and \
            Path(init).stat().st_mtime > weights.stat().st_mtime    # its baseline was retrained
        if not retrain and not stale and record_path.is_file() and weights.is_file():
            try:
                old = json.loads(record_path.read_text())
            except ValueError:                              # damaged: train again
                old = {}
            if old.get("config") == asdict(config) and old.get("test_images") == len(test_xy[0]):
                records[run.name] = old
                _say(step, f"reusing trained {run.name}: test accuracy "
                           f"{old['test_accuracy']:.2%} ({record_path}; --retrain to train again)")
                continue
        start = time.perf_counter()
        _say(step, f"training {run.name} ({run.model}, {limit or len(train_xy[0])} images x "
                   f"{run.epochs} epoch{'s' * (run.epochs > 1)}"
                   + (f", augment {run.augment}" if run.augment else "")
                   + (f", from {run.init}" if run.init else "") + ") ...")
        record = train(config, folder, data=(train_xy, test_xy), progress=False,
                       log=lambda *_: None)
        records[run.name] = asdict(record)
        _say(step, f"{run.name}: test accuracy {record.test_accuracy:.2%} "
                   f"({time.perf_counter() - start:.0f} s)")
    return records


def trained_model(out: Path, run: DemoRun, as_model: str | None = None) -> torch.nn.Module:
    """The demo run's trained model (or its weights in the zoo model ``as_model``), eval mode."""
    from .loading import load_trained
    return load_trained(as_model or run.model, out / "models" / run.name)


def audit_runs(out: Path, settings: DemoSettings) -> dict[str, Path]:
    """Audit every trained run; write ``audit-NAME-PROTOCOL.json``; return the paths."""
    from .audit import audit
    from .data import load_data
    from .protocols import capabilities
    x, y = load_data("mnist", split="test", seed=settings.seed)
    x, y = x[-settings.audit_images:], y[-settings.audit_images:]   # not the test-accuracy images
    written = {}
    for i, run in enumerate(settings.runs, 1):
        model = trained_model(out, run)
        for protocol in ("circular", "canvas"):
            start = time.perf_counter()
            result = audit(model, (x, y), protocol=protocol, shifts=settings.audit_shifts,
                           seed=settings.seed, name=run.name,
                           half_pixel=capabilities(protocol).has_half_pixel)
            path = result.to_json(out / f"audit-{run.name}-{protocol}.json")
            written[f"{run.name}-{protocol}"] = path
            inv = result.invariance
            _say(f"audit {i}/{len(settings.runs)}",
                 f"{run.name}, {protocol} shifts {settings.audit_shifts}: consistency "
                 f"{pct(inv.consistency)}, flip rate {pct(inv.flip_rate)}, worst-case accuracy "
                 f"{pct(inv.worst_case_accuracy)}, gap {points(inv.gap_integer)} integer"
                 + (f" / {points(inv.gap_half_pixel)} half-pixel, half-pixel consistency "
                    f"{pct(inv.half_pixel_consistency)}" if inv.gap_half_pixel is not None else "")
                 + f" ({time.perf_counter() - start:.0f} s) -> {path}")
    return written


def run_demo(out: str | Path = "out", *, retrain: bool = False,
             settings: DemoSettings | None = None) -> Path:
    """Run every step of the demo into ``out``; return the report's path."""
    settings = settings or DemoSettings()
    out = Path(out)
    start = time.perf_counter()
    from .data.mnist import load_mnist
    load_mnist("test")                  # a one-line error, before any output, if MNIST is missing or damaged
    train_runs(out, settings, retrain)
    audit_runs(out, settings)
    report = visualise(out, settings, retrain)
    _say("done", f"{time.perf_counter() - start:.0f} s; open {report.resolve()}")
    return report


def visualise(out: Path, settings: DemoSettings, retrain: bool = False) -> Path:
    """Wolf's animation and the shift explorer for each run with ``animate_as``, the
    experiments (``retrain``: their nets trained again), then the HTML report."""
    from .data import load_data
    from .report import build_report
    from .viz.animate import animate
    from .viz.explorer import explorer_frames, save_explorer
    x, y = load_data("mnist", split="test", seed=settings.seed)
    image, label = x[settings.digit_index], int(y[settings.digit_index])
    canvas_runs = [r for r in settings.runs if r.animate_as]
    for i, run in enumerate(canvas_runs, 1):
        start = time.perf_counter()
        model = trained_model(out, run, run.animate_as)
        title = f"{run.name}: a {label} slides across a {settings.canvas}x{settings.canvas} canvas"
        gif, frames = animate(model, image, out / f"animation-{run.name}.gif", canvas=settings.canvas,
                              path=settings.path, label=label, title=title, seed=settings.seed)
        explorer = explorer_frames(model, image, canvas=settings.canvas, label=label,
                                   title=run.name, seed=settings.seed)
        saved = save_explorer(explorer, out, run.name)
        _say(f"animate {i}/{len(canvas_runs)}", f"{run.name}: {len(frames)} frames -> {gif}, "
                                                f"explorer -> {saved} ({time.perf_counter() - start:.0f} s)")
    for i, name in enumerate(settings.experiments, 1):
        from .experiments import run_experiment
        start = time.perf_counter()
        result = run_experiment(name, out, seed=settings.seed, retrain=retrain, log=lambda *_: None)
        held = sum(result.claims.values())
        _say(f"experiment {i}/{len(settings.experiments)}",
             f"{name}: {held}/{len(result.claims)} claims hold ({time.perf_counter() - start:.0f} s)")
    start = time.perf_counter()
    report = build_report(out, out / "report.html", title="shiftlab: is the CNN shift-equivariant?")
    _say("report", f"{report} ({report.stat().st_size / 1e6:.1f} MB, "
                   f"{time.perf_counter() - start:.0f} s)")
    return report


__all__ = ["DemoRun", "DemoSettings", "RUNS", "run_demo", "train_runs", "audit_runs", "trained_model",
           "shipped_run", "use_shipped"]
