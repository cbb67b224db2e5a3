"""A small, fast, seeded training loop with shift augmentation and resumable checkpoints.

Reproducibility: the initial weights come from ``seed``; epoch ``e`` shuffles and augments
with a generator seeded by ``(seed, e)``; the checkpoint written after each epoch holds the
model and the Adam state. So an interrupted run resumed with ``resume=True`` ends with the
same weights as an uninterrupted one (bitwise on CPU, same thread count). The learning
rate is a pure function of the step and the planned number of steps, so resuming with a
larger ``epochs`` continues on a re-planned (longer) cosine schedule.

Outputs in ``out``: ``checkpoint.pt`` (atomic, every epoch; read with
``weights_only=True``), ``model.safetensors`` (final weights) and ``train.json`` (config,
per-epoch loss/accuracy, test accuracy, throughput).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import ShiftlabError
from .io import atomic_path, write_text_atomic

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.safetensors"
RECORD = "train.json"


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
        kind, _, k = self.augment.partition(":")
        if kind != "shift" or not k.isdigit():
            raise ShiftlabError(f"unknown augmentation {self.augment!r}; write shift:K (e.g. shift:4)")
        return int(k)

    def validate(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ShiftlabError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ShiftlabError(f"lr must be positive, got {self.lr}")
        if self.limit is not None and self.limit < 1:
            raise ShiftlabError(f"limit must be at least 1, got {self.limit}")
        if self.schedule not in SCHEDULES:
            raise ShiftlabError(f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")
        self.shift_range()


@dataclass
class TrainRecord:
    config: dict
    epochs: list[dict] = field(default_factory=list)       # loss, accuracy, seconds per epoch
    test_accuracy: float | None = None
    test_images: int = 0
    images_per_second: float | None = None
    resumed_from_epoch: int | None = None


SCHEDULES = ("cosine", "constant")


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
    from .transforms import canvas_shift
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
    """Top-1 accuracy of ``model`` (in eval mode) on ``(x, y)``."""
    was = model.training
    model.eval()
    hits = 0
    for lo in range(0, len(x), batch_size):
        xb = x[lo:lo + batch_size]
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        hits += int((model(xb).argmax(1) == y[lo:lo + batch_size]).sum())
    model.train(was)
    return hits / len(x)


def _save_checkpoint(path: Path, model: nn.Module, optimizer, epoch: int, record: TrainRecord) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
             "config": record.config, "history": json.dumps(asdict(record))}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    """Read a training checkpoint safely; a damaged one is a clear error."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ShiftlabError(f"{path} is not a readable checkpoint ({type(err).__name__}); "
                            "delete it to start over") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "epoch", "config"} <= state.keys():
        raise ShiftlabError(f"{path} is not a shiftlab training checkpoint; delete it to start over")
    return state


def build_model(config: TrainConfig, sample: Tensor) -> nn.Module:
    from .loading import load_model
    from .models import builder_accepts, create_model
    torch.manual_seed(config.seed)
    if builder_accepts(config.model, "in_channels"):
        kwargs = {"in_channels": sample.shape[0]}
        if builder_accepts(config.model, "input_size"):
            kwargs["input_size"] = sample.shape[-1]
        return create_model(config.model, **kwargs)
    return load_model(config.model)


def train(config: TrainConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
          data=None, log=print) -> TrainRecord:
    """Train ``config.model`` on ``config.data``; write checkpoints and the record to ``out``.

    ``data`` may give ``((x_train, y_train), (x_test, y_test))`` directly (tests do).
    """
    from tqdm.auto import tqdm

    config.validate()
    out = Path(out)
    if data is None:
        from .data import load_data
        train_xy = load_data(config.data, split="train", seed=config.seed)
        test_xy = load_data(config.data, split="test", seed=config.seed)
    else:
        train_xy, test_xy = data
    (x, y), (x_test, y_test) = train_xy, test_xy
    if y is None or y_test is None:
        raise ShiftlabError(f"data {config.data!r} has no labels; training needs labelled data")
    if config.limit:
        x, y = x[:config.limit], y[:config.limit]
    x, x_test = prepare(x, config.canvas), prepare(x_test, config.canvas)
    model = build_model(config, x[0])
    if config.init and not (resume and (out / CHECKPOINT).is_file()):
        from .loading import load_matching_weights
        loaded, kept = load_matching_weights(model, config.init)
        log(f"initialised {len(loaded)} tensors from {config.init}"
            + (f"; {len(kept)} newly initialised ({', '.join(kept[:4])})" if kept else ""))
    memory = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    record = TrainRecord(config=asdict(config))
    start_epoch = 0
    ckpt_path = out / CHECKPOINT
    if resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path)
        changed = [k for k in record.config                  # more epochs may be asked for
                   if k != "epochs" and state["config"].get(k) != record.config[k]]
        if changed:
            raise ShiftlabError(f"{ckpt_path} was written with other settings ({', '.join(changed)}); "
                                "use another --out or drop --resume")
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise ShiftlabError(f"{ckpt_path} does not fit the model ({type(err).__name__}); "
                                "delete it to start over") from None
        start_epoch = int(state["epoch"])
        previous = json.loads(state.get("history", "{}"))
        record.epochs = previous.get("epochs", [])
        record.resumed_from_epoch = start_epoch
        log(f"resuming {config.model} after epoch {start_epoch} from {ckpt_path}")
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
        for i, (xb, yb) in enumerate(batches(x, y, config.batch_size, g, shift)):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, epoch * steps_per_epoch + i, total_steps)
            xb = xb.contiguous(memory_format=memory)
            logits = model(xb)
            loss = loss_fn(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = len(yb)
            loss_sum += loss.item() * n
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
    record.test_accuracy = accuracy(model, x_test, y_test, channels_last=config.channels_last)
    record.test_images = len(x_test)
    record.images_per_second = round(seen / busy, 1) if busy else None
    from safetensors.torch import save_file
    with atomic_path(out / WEIGHTS) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
                  metadata={"model": config.model, "shiftlab_config": json.dumps(record.config)})
    write_text_atomic(out / RECORD, json.dumps(asdict(record), indent=1) + "\n")
    log(f"test accuracy {record.test_accuracy:.2%} on {len(x_test)} images; wrote {out / WEIGHTS}")
    return record
