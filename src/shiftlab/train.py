"""A small, fast, seeded training loop with shift augmentation and resumable checkpoints.

Reproducibility: the initial weights come from ``seed``; epoch ``e`` shuffles and augments
with a generator seeded by ``(seed, e)``; the checkpoint written after each epoch holds the
model and the Adam state. So an interrupted run resumed with ``resume=True`` ends with the
same weights as an uninterrupted one (bitwise on CPU, same thread count). The learning
rate is a pure function of the step and the planned number of steps, so resuming with a
larger ``epochs`` continues on a re-planned (longer) cosine schedule.

Outputs in ``out``: ``checkpoint.pt`` (atomic, every epoch; read with
``weights_only=True``), ``model.safetensors`` (final weights) and ``train.json`` (config,
per-epoch loss/accuracy, test accuracy, throughput). The checkpoint and the weights carry a
SHA-256 of their tensors (see :func:`shiftlab.io.digest`), checked when they are read back
(``resume``, ``init``): a flipped bit is an error, not a run that trains on garbage. While
a run writes, ``out`` is locked (:func:`shiftlab.io.locked_folder`): a second run into the
same folder fails at once instead of overwriting it.
"""
from __future__ import annotations

from io import BytesIO
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import MAX_SEED, ShiftlabError, check_seed, one_line, run_model
from .loading import WEIGHTS, load_matching_weights, load_model
from .io import check_writable, digest, locked_folder, write_bytes_atomic, write_text_atomic

CHECKPOINT = "checkpoint.pt"
RECORD = "train.json"
DIGEST_KEY = "sha256"                 # metadata key of the tensors' SHA-256 in WEIGHTS


@dataclass
class TrainConfig:
    model: str = "lenet-wolf"
    data: str = "mnist"
    epochs: int = 3
    batch_size: int = 128
    lr: float = 3e-3                    # peak learning rate
    schedule: str = "cosine"            # "cosine" (warm-up, then cosine decay to 0) or "constant"
    augment: str | None = None          # "shift:K": random canvas shifts in [-K, K]^2
    canvas: int | None = None           # place images centred on an NxN canvas first
    seed: int = 0
    limit: int | None = None            # train on the first N images only
    channels_last: bool = True
    init: str | None = None             # start from these weights (matching names and shapes)

    def shift_range(self) -> int:
        if not self.augment:
            return 0
        match = re.fullmatch(r"shift:(\d{1,9})", self.augment, re.ASCII)
        if match is None:
            raise ShiftlabError(f"unknown augmentation {self.augment!r}; write shift:K with K a "
                                "whole number of pixels (e.g. shift:4)")
        return int(match[1])

    def validate(self) -> None:
        """Check every setting before any work; a bad one is a one-line error."""
        for name in ("epochs", "batch_size", "limit", "canvas"):
            value = getattr(self, name)
            if value is None and name in ("limit", "canvas"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ShiftlabError(f"{name} must be a whole number of at least 1, got {value!r}")
        check_seed(self.seed)
        if not isinstance(self.lr, (int, float)) or not (math.isfinite(self.lr) and self.lr > 0):
            raise ShiftlabError(f"lr must be a positive finite number (e.g. 3e-3), got {self.lr!r}")
        if self.schedule not in SCHEDULES:
            raise ShiftlabError(f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")
        if not isinstance(self.model, str) or not self.model:
            raise ShiftlabError(f"model must be a zoo name or path.py:factory, got {self.model!r}")
        self.shift_range()


@dataclass
class TrainRecord:
    config: dict
    epochs: list[dict] = field(default_factory=list)       # loss, accuracy, seconds per epoch
    test_accuracy: float | None = None
    test_images: int = 0
    images_per_second: float | None = None
    resumed_from_epoch: int | None = None
    device: str = "cpu"                 # where it trained: cpu, cuda:0, mps


SCHEDULES = ("cosine", "constant")
# MAX_SEED (errors.py) is numpy's range; seed·1_000_003 + epoch stays in int64


def learning_rate(config: TrainConfig, step: int, total: int) -> float:
    """The learning rate at optimiser step ``step`` of ``total``: a pure function of the
    step, so a resumed run follows the same schedule. ``cosine`` warms up linearly over the
    first 3 % of steps, then decays as ``lr·(1 + cos(π·t))/2``."""
    if config.schedule == "constant":
        return config.lr
    warm = max(1, round(0.03 * total))
    if step < warm:
        return config.lr * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * t))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that shuffles and augments epoch ``epoch`` of a run seeded ``seed``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def prepare(x: Tensor, canvas: int | None) -> Tensor:
    if canvas:
        from .data import place_on_canvas
        x = place_on_canvas(x, (canvas, canvas))
    return x


def batches(x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator, shift: int):
    """Shuffled ``(images, labels)`` batches; with ``shift`` each image moves by a random
    canvas shift in ``[-shift, shift]²`` (what leaves the frame is lost)."""
    from .actions import canvas_shift
    order = torch.randperm(len(x), generator=generator)
    for lo in range(0, len(x), batch_size):
        idx = order[lo:lo + batch_size]
        xb = x[idx]
        if shift:
            xb = canvas_shift(xb, torch.randint(-shift, shift + 1, (len(idx), 2), generator=generator))
        yield xb, y[idx]


@torch.inference_mode()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000,
             channels_last: bool = False) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``(x, y)``; batches go to the model's device."""
    was = model.training
    model.eval()
    hits = 0
    device = next((p.device for p in model.parameters()), x.device)
    for lo in range(0, len(x), batch_size):
        xb = x[lo:lo + batch_size].to(device)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        hits += int((model(xb).argmax(1).cpu() == y[lo:lo + batch_size].cpu()).sum())
    model.train(was)
    return hits / len(x)


def _save_checkpoint(path: Path, model: nn.Module, optimizer, epoch: int, record: TrainRecord) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
             "config": record.config, "history": json.dumps(asdict(record))}
    state["sha256"] = digest(state)
    buffer = BytesIO()
    torch.save(state, buffer)                 # in memory: a full disk is then a plain OSError
    write_bytes_atomic(path, buffer.getvalue())


def _corrupt(path: Path, what: str = "checkpoint") -> ShiftlabError:
    return ShiftlabError(f"{path} is corrupt: its tensors do not match the SHA-256 stored in it "
                         f"when it was written; restore the {what} or delete it to start over")


def load_checkpoint(path: Path) -> dict:
    """Read a training checkpoint safely (``weights_only=True``: no code runs) and check it:
    the SHA-256 of its contents (checkpoints of earlier versions hold none) and the type
    of each field. ``history`` comes back parsed (a dict)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        unsafe = "weights_only" in str(err) or "pickl" in type(err).__name__.lower()
        raise ShiftlabError(f"{path} is not a readable checkpoint ({type(err).__name__}"
                            + (": it holds objects other than tensors, refused for safety" if unsafe else "")
                            + "); delete it to start over") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "epoch", "config"} <= state.keys():
        raise ShiftlabError(f"{path} is not a shiftlab training checkpoint; delete it to start over")
    expected = state.pop("sha256", None)
    if expected is not None:
        try:
            actual = digest(state)
        except TypeError:
            actual = None
        if actual != expected:
            raise _corrupt(path)
    epoch, config, history = state["epoch"], state["config"], state.get("history", "{}")
    try:
        previous = json.loads(history) if isinstance(history, str) else None
    except ValueError:
        previous = None
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0 or not isinstance(config, dict) \
            or not isinstance(state["model"], dict) or not isinstance(state["optimizer"], dict) \
            or not isinstance(previous, dict) or not isinstance(previous.get("epochs", []), list):
        raise ShiftlabError(f"{path} is not a shiftlab training checkpoint (a field has the wrong "
                            "type); delete it to start over")
    state["history"] = previous
    return state


def verify_weights(path: str | Path) -> None:
    """Check the SHA-256 that shiftlab stores with weights (``model.safetensors`` metadata,
    a checkpoint's ``sha256``) against the tensors; a mismatch is a one-line error. Files
    without one, or that cannot be read, pass: the loader that reads them next says why."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), "pt") as f:
                expected = (f.metadata() or {}).get(DIGEST_KEY)
                tensors = {k: f.get_tensor(k) for k in f.keys()} if expected else {}
        else:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
            expected = tensors.pop("sha256", None) if isinstance(tensors, dict) else None
    except Exception:
        return
    if expected is not None and _safe_digest(tensors) != expected:
        raise _corrupt(path, "weights")


def _safe_digest(obj) -> str | None:
    try:
        return digest(obj)
    except TypeError:
        return None


def weights_bytes(tensors: dict[str, Tensor], metadata: dict[str, str]) -> bytes:
    """``tensors`` as a safetensors file, with their SHA-256 in the metadata (see
    :func:`verify_weights`). Tied tensors are copied: safetensors refuses shared storage."""
    from safetensors.torch import save
    own = {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}
    return save(own, metadata={**metadata, DIGEST_KEY: digest(own)})


def build_model(config: TrainConfig, sample: Tensor) -> nn.Module:
    from .models import builder_accepts, create_model
    torch.manual_seed(config.seed)
    if builder_accepts(config.model, "in_channels"):
        kwargs = {"in_channels": sample.shape[0]}
        if builder_accepts(config.model, "input_size"):
            kwargs["input_size"] = sample.shape[-1]
        return create_model(config.model, **kwargs)
    return load_model(config.model)


def _size(x: Tensor) -> str:
    return "x".join(map(str, x.shape[1:]))


def _check_images(x, name: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4 or len(x) == 0:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ShiftlabError(f"{name} images must be a non-empty N x C x H x W tensor, got {shape}")
    if not x.is_floating_point():
        raise ShiftlabError(f"{name} images must be real floating point, got {x.dtype}; scale them, "
                            "e.g. x.float() / 255")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        which = f"{bad} {name} image" + ("s contain" if bad > 1 else " contains")
        raise ShiftlabError(f"{which} NaN or infinite values; clean the data first")


def _check_labels(y, n: int, classes: int, name: str) -> None:
    """Labels are a vector of ``n`` class indices in ``[0, classes)``."""
    if not isinstance(y, Tensor) or y.ndim != 1 or len(y) != n:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ShiftlabError(f"{name} labels must be a vector of {n} class indices, got {shape}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ShiftlabError(f"{name} labels must be integer class indices, got {y.dtype}")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= classes:
        bad = low if low < 0 else high
        raise ShiftlabError(f"{name} label {bad} is out of range: the model has {classes} outputs, so "
                            f"labels must be in [0, {classes - 1}]; fix the labels or use a model "
                            "with more classes")


def _check_canvas(config: TrainConfig, images: int, x: Tensor) -> None:
    """A canvas the images fit on, and that fits in memory (half the machine's)."""
    if not config.canvas:
        return
    h, w = x.shape[-2:]
    if config.canvas < max(h, w):
        raise ShiftlabError(f"{h}x{w} images do not fit on a {config.canvas}x{config.canvas} canvas; "
                            f"use a canvas of at least {max(h, w)}")
    need = images * x.shape[1] * config.canvas ** 2 * 4
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > memory / 2:
        raise ShiftlabError(f"a {config.canvas}x{config.canvas} canvas for {images} images needs "
                            f"{need / 1e9:,.1f} GB, more than half this machine's memory; use a "
                            "smaller canvas or --limit")


def _check_shift(config: TrainConfig, x: Tensor) -> None:
    shift, (h, w) = config.shift_range(), x.shape[-2:]
    if shift >= min(h, w):
        raise ShiftlabError(f"augment {config.augment} moves {h}x{w} images out of the frame; K must "
                            f"be smaller than the image (at most {min(h, w) - 1}), or place the "
                            "images on a larger canvas")


def _classes(model: nn.Module, config: TrainConfig, x: Tensor) -> int:
    """Run ``model`` (eval mode, no gradients: nothing about it changes) on two images;
    return its number of outputs. A model that does not fit the data is a one-line error."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = run_model(model, x[:2], who=f"model {config.model!r}")
    except ShiftlabError as err:
        raise ShiftlabError(f"{err}; choose a model made for {_size(x)} images"
                            + ("" if config.canvas else " or place them on a larger canvas")) from None
    finally:
        model.train(was)
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != len(x[:2]) or out.shape[1] < 1:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ShiftlabError(f"model {config.model!r} gives {shape} on {_size(x)} images; training "
                            "needs one row of class scores per image (N x classes)")
    if not out.is_floating_point():
        raise ShiftlabError(f"model {config.model!r} gives {out.dtype} outputs; training needs "
                            "floating-point class scores")
    return int(out.shape[1])


def _check_model(model: nn.Module, config: TrainConfig, images: int) -> None:
    if not any(p.requires_grad for p in model.parameters()):
        raise ShiftlabError(f"model {config.model!r} has no trainable parameters")
    last = images % config.batch_size
    if last == 1 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ShiftlabError(f"the last batch of {images} images in batches of {config.batch_size} holds "
                            "one image, and batch norm cannot train on one; change the batch size "
                            "or the limit")


def _load_data(config: TrainConfig, data):
    if data is None:
        from .data import load_data
        return (load_data(config.data, split="train", seed=config.seed),
                load_data(config.data, split="test", seed=config.seed))
    return data


def train(config: TrainConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
          data=None, log=print, device=None) -> TrainRecord:
    """Train ``config.model`` on ``config.data``; write checkpoints and the record to ``out``.

    ``data`` may give ``((x_train, y_train), (x_test, y_test))`` directly (tests do).
    ``device``: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (:mod:`shiftlab.device`;
    None: :func:`~shiftlab.device.default_training_device`, the CPU unless set); the data stay on the CPU (shuffling and augmentation draw there, so a seed gives the
    same batches on every device) and each batch moves to the device. Checkpoints resume on
    any device.

    Everything is checked before any work (settings, images, labels against the model's
    outputs, that the model runs on the images); ``out`` is created only then, and held
    locked while training, so a second run into it fails at once. A run that fails before
    its first checkpoint leaves no folder behind.
    """
    from tqdm.auto import tqdm

    config.validate()
    from .device import default_training_device, device_name, resolve_device
    device = default_training_device() if device is None else resolve_device(device)
    out = Path(out)
    check_writable(out / RECORD)                  # a file in the way, no permission: now
    ckpt_path = out / CHECKPOINT
    if resume and not ckpt_path.is_file():
        raise ShiftlabError(f"nothing to resume: {out} holds no {CHECKPOINT}; drop --resume to "
                            "start a new run")
    (x, y), (x_test, y_test) = _load_data(config, data)
    if y is None or y_test is None:
        raise ShiftlabError(f"data {config.data!r} has no labels; training needs labelled data")
    if config.limit:
        x, y = x[:config.limit], y[:config.limit]
    _check_images(x, "training")
    _check_images(x_test, "test")
    if x.shape[1:] != x_test.shape[1:]:
        raise ShiftlabError(f"training images are {_size(x)} but test images {_size(x_test)}; "
                            "give data whose splits match")
    _check_canvas(config, len(x) + len(x_test), x)
    x, x_test = prepare(x, config.canvas), prepare(x_test, config.canvas)
    _check_shift(config, x)
    model = build_model(config, x[0])
    classes = _classes(model, config, x)
    _check_labels(y, len(x), classes, "training")
    _check_labels(y_test, len(x_test), classes, "test")
    _check_model(model, config, len(x))
    if config.init and not resume:
        verify_weights(config.init)
        loaded, kept = load_matching_weights(model, config.init)
        log(f"initialised {len(loaded)} tensors from {config.init}"
            + (f"; {len(kept)} newly initialised ({', '.join(kept[:4])})" if kept else ""))
    memory = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    record = TrainRecord(config=asdict(config), device=device_name(device))
    with locked_folder(out, who="training run"):
        start_epoch = _resume(ckpt_path, model, optimizer, record, log) if resume else 0
        _fit(model, optimizer, config, record, x, y, start_epoch, memory, ckpt_path, progress, log, tqdm)
        record.test_accuracy = accuracy(model, x_test, y_test, channels_last=config.channels_last)
        record.test_images = len(x_test)
        _write_outputs(out, model, config, record)
    log(f"test accuracy {record.test_accuracy:.2%} on {len(x_test)} images; wrote {out / WEIGHTS}")
    return record


def _resume(ckpt_path: Path, model: nn.Module, optimizer, record: TrainRecord, log) -> int:
    """Load the checkpoint into ``model`` and ``optimizer``; return its epoch."""
    state = load_checkpoint(ckpt_path)
    config = record.config
    changed = [k for k in config                          # more epochs may be asked for
               if k != "epochs" and state["config"].get(k) != config[k]]
    if changed:
        raise ShiftlabError(f"{ckpt_path} was written with other settings ({', '.join(changed)}); "
                            "use another --out or drop --resume")
    start_epoch = state["epoch"]
    if start_epoch > config["epochs"]:
        raise ShiftlabError(f"{ckpt_path} is after epoch {start_epoch}, beyond the {config['epochs']} "
                            f"asked for; ask for at least {start_epoch} epochs")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise ShiftlabError(f"{ckpt_path} does not fit the model ({type(err).__name__}); "
                            "delete it to start over") from None
    record.epochs = state["history"].get("epochs", [])
    record.resumed_from_epoch = start_epoch
    log(f"resuming {config['model']} after epoch {start_epoch} from {ckpt_path}")
    return start_epoch


def _fit(model, optimizer, config: TrainConfig, record: TrainRecord, x, y, start_epoch: int,
         memory, ckpt_path: Path, progress: bool, log, tqdm) -> None:
    """Epochs ``start_epoch`` … ``config.epochs - 1``, a checkpoint after each."""
    loss_fn = nn.CrossEntropyLoss()
    shift = config.shift_range()
    model.train()
    seen, busy = 0, 0.0
    steps_per_epoch = -(-len(x) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    for epoch in range(start_epoch, config.epochs):
        g = epoch_generator(config.seed, epoch)
        loss_sum, hits, count, t0 = 0.0, 0, 0, time.perf_counter()
        bar = tqdm(total=len(x), unit="img", desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not progress, leave=False)
        device = next(model.parameters()).device
        for i, (xb, yb) in enumerate(batches(x, y, config.batch_size, g, shift)):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, epoch * steps_per_epoch + i, total_steps)
            xb, yb = xb.to(device).contiguous(memory_format=memory), yb.to(device)
            logits = run_model(model, xb, who=f"model {config.model!r}")
            loss = loss_fn(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            try:
                loss.backward()
            except RuntimeError as err:
                raise ShiftlabError(f"model {config.model!r} cannot be trained: {one_line(err)}") from None
            optimizer.step()
            n = len(yb)
            value = loss.item()
            if not math.isfinite(value):
                raise ShiftlabError(f"the loss became {value} in epoch {epoch + 1} (step {i + 1}): "
                                    f"training diverged; use a smaller learning rate than {config.lr:g}")
            loss_sum += value * n
            hits += int((logits.argmax(1) == yb).sum())
            count += n
            bar.update(n)
            bar.set_postfix(loss=f"{loss_sum / count:.4f}", acc=f"{hits / count:.4f}", refresh=False)
        bar.close()
        seconds = time.perf_counter() - t0
        seen, busy = seen + count, busy + seconds
        record.epochs.append({"epoch": epoch + 1, "loss": loss_sum / count,
                              "train_accuracy": hits / count, "seconds": round(seconds, 2)})
        _save_checkpoint(ckpt_path, model, optimizer, epoch + 1, record)
        log(f"epoch {epoch + 1}/{config.epochs}: loss {loss_sum / count:.4f}, train accuracy "
            f"{hits / count:.2%} ({count / seconds:.0f} img/s)")
    record.images_per_second = round(seen / busy, 1) if busy else None


def _write_outputs(out: Path, model: nn.Module, config: TrainConfig, record: TrainRecord) -> None:
    """``model.safetensors`` then ``train.json``, each atomic. If the second cannot be
    written, neither is left (a weights file needs its record); the checkpoint stays, so
    the run can be finished with ``resume``."""
    weights = weights_bytes(model.state_dict(), {"model": config.model,
                                                 "shiftlab_config": json.dumps(record.config)})
    text = json.dumps(asdict(record), indent=1) + "\n"
    try:
        write_bytes_atomic(out / WEIGHTS, weights)
        write_text_atomic(out / RECORD, text)
    except ShiftlabError as err:
        for name in (WEIGHTS, RECORD):
            (out / name).unlink(missing_ok=True)
        raise ShiftlabError(f"{err}; {CHECKPOINT} is kept, so once that is fixed --resume finishes "
                            "the run") from None
