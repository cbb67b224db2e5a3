"""The audit driver: data × shifts → model with probes → observers → AuditResult.

For every batch of signals (N×C×T) or images (N×C×H×W) the driver forwards, in chunks of
at most ``batch_size`` rows (:mod:`shiftlab.plan` lays them out):

1. the reference views ``T_0 x`` (their maps are kept for the batch);
2. every non-zero shift of the grid, each probed map handed to the observers from the
   forward hook, while it is still in cache, and compared there with the reference (the
   one comparison of :mod:`shiftlab.law`), never stacked for the whole chunk;
3. ``pairs`` random shift pairs per image, for consistency.

The observers (:mod:`shiftlab.observers`) own every metric: per-layer errors, the
sensitivity map, the classifier's stability, consistency and worst-case gap, half-pixel
shifts (Michaeli, Michaeli & Soudry, CVPR 2023). The driver knows none of them by name.

Memory is bounded by the batch size, not the dataset: nothing but metric state outlives
a batch. Random pairs are a pure function of (seed, image index), so the numbers do not
depend on how the data is batched. The options travel as one :class:`AuditConfig`.

The driver follows the model's device; ``amp`` runs the forward passes under autocast and
compares the maps in float32, with the "exact" tolerance of the 16-bit compute dtype.
Inside an initialised ``torch.distributed`` process group each rank audits an exact shard
and the observers' states are merged in rank order (:mod:`shiftlab.distributed`).
"""
from __future__ import annotations

import dataclasses
import platform
import time

import torch
from torch import Tensor, nn

from . import distributed
from .batches import iter_batches, pair_shifts, shard_batches, stream_seed
from .config import MAX_PAIRS, AuditConfig
from .data.preprocess import normalization_record, normalize
from .device import autocast, check_amp, device_name, ieee_float32
from .errors import ShiftlabError
from .law import TOLERANCE, tolerance
from .metrics import Counts
from .observers import Batch, half_pixel_lattice, observers_for
from .plan import AuditPlan, Chunk
from .probe import OUTPUT, Probe, resolve_layers
from .result import AuditResult, InvarianceResult, Provenance

__all__ = ["audit", "AuditConfig", "iter_batches", "shard_batches", "pair_shifts",
           "stream_seed", "half_pixel_lattice", "TOLERANCE", "MAX_PAIRS"]


# ----------------------------------------------------------------------------- driver
class _Driver:
    """Forwards each batch's rows through the probed model and hands the observers the data."""

    def __init__(self, model: nn.Module, config: AuditConfig, names: list[str],
                 amp: torch.dtype | None = None, extra=()):
        self.model, self.config, self.names, self.amp = model, config, names, amp
        self.extra = tuple(extra)              # observers beyond the built-in ones
        self.plan: AuditPlan | None = None
        self.observers: list = []
        self.counts = Counts("images", "forwards")
        self.data_records: list[dict] = []     # what the data said about itself (folder streams)
        self.probe: Probe | None = None

    def process(self, x: Tensor, y: Tensor | None, start: int | None = None) -> None:
        """Fold in a batch whose first sample has index ``start`` in the whole data (this
        driver's image count when None): the index keys the random pairs."""
        start = self.counts["images"] if start is None else start
        if self.plan is None:
            self.plan = AuditPlan.build(self.model, self.config, x, self.names)
            self.observers = observers_for(self.plan, self.extra)
            self.probe = Probe(self.model, self.names, clone=self.plan.overwritten).__enter__()
        elif tuple(x.shape[1:]) != self.plan.sample_shape:
            raise ShiftlabError(f"all inputs must have one shape; got {tuple(x.shape[1:])} "
                                f"after {self.plan.sample_shape}")
        plan, n = self.plan, len(x)
        if y is not None and plan.classifier and len(y) and \
                (int(y.min()) < 0 or int(y.max()) >= plan.classes):
            raise ShiftlabError(f"labels must be class indices in [0, {plan.classes - 1}] for this "
                                f"model's {plan.classes} outputs, got values in "
                                f"[{int(y.min())}, {int(y.max())}]; check the data's labels")
        rows = plan.rows(n, start)
        with torch.inference_mode():
            batch = Batch(x, y, start, self._forward(plan.action.reference(x)), self._predict)
            self.counts.add(forwards=n)
            for obs in self.observers:
                obs.reference(batch)
            if plan.classifier:
                logits = batch.ref[OUTPUT]
                batch.grid_logits = logits.new_zeros(len(plan.grid), n, logits.shape[-1])
                if plan.zero is not None:
                    batch.grid_logits[plan.zero] = logits
                batch.pair_pred = torch.zeros(len(rows.shift) - rows.n_grid, dtype=torch.int64)
            for chunk in rows.chunks(self.config.batch_size):
                image = rows.image[chunk.lo:chunk.hi].to(x.device)
                out = self._forward(plan.action(x[image], rows.shift[chunk.lo:chunk.hi].to(x.device)),
                                    chunk)[OUTPUT]
                self.counts.add(forwards=chunk.hi - chunk.lo)
                if plan.classifier:
                    for a, b, k, i in chunk.runs:
                        batch.grid_logits[k, i:i + b - a] = out[a:b]
                    first = max(chunk.lo, rows.n_grid)           # pair rows come last
                    if chunk.hi > first:
                        batch.pair_pred[first - rows.n_grid:chunk.hi - rows.n_grid] = \
                            out[first - chunk.lo:].argmax(-1).cpu()
            for obs in self.observers:
                obs.batch(batch)
        self.counts.add(images=n)

    def _forward(self, x: Tensor, chunk: Chunk | None = None) -> dict[str, Tensor]:
        """The probed maps of the (shifted) inputs ``x``, normalised first when configured
        (under autocast with ``amp``). With a ``chunk``, each map goes to the observers as
        it is made and only the output is returned (and handed over too). Maps reach the
        law as it compares them: 16-bit ones in float32, on the CPU when the device has no
        float64 (MPS)."""
        lawful = self._lawful
        if chunk is not None:
            takers = [obs for obs in self.observers if obs.maps]

            def sink(name: str, out: Tensor) -> None:
                out = lawful(out)
                for obs in takers:
                    obs.on_map(name, out, chunk)
            self.probe.sink = sink
        norm = self.config.normalize
        try:
            with autocast(x.device, self.amp):
                feats = self.probe(x if norm is None else normalize(x, norm))
        finally:
            self.probe.sink = None
        feats = {k: lawful(v) for k, v in feats.items()}
        if chunk is not None:
            sink(OUTPUT, feats[OUTPUT])
        return feats

    def _lawful(self, v: Tensor) -> Tensor:
        if self.amp is None and v.device.type != "mps":
            return v
        low = (torch.float16, torch.bfloat16)
        return v.to(device="cpu" if v.device.type == "mps" else v.device,
                    dtype=torch.float32 if v.dtype in low else v.dtype)

    def _predict(self, x: Tensor) -> Tensor:
        """Top-1 classes of the (shifted) inputs ``x``, on the CPU: the output only."""
        norm = self.config.normalize
        with autocast(x.device, self.amp):
            out = self.probe(x if norm is None else normalize(x, norm))[OUTPUT]
        self.counts.add(forwards=len(x))
        return out.argmax(-1).cpu()

    def close(self) -> None:
        if self.probe is not None:
            self.probe.__exit__(None, None, None)
            self.probe = None

    # --- shards: sent to the other ranks, merged in rank order ---------------------------
    def __getstate__(self) -> dict:
        """What another rank needs to merge this shard: no model, no hooks."""
        return dict(self.__dict__, model=None, probe=None)

    def merge(self, other: "_Driver") -> None:
        """Fold in another shard of the same audit (a no-op if it saw no data)."""
        if other.plan is None:
            return
        if other.plan.sample_shape != self.plan.sample_shape:
            raise ShiftlabError(f"all inputs must have one shape; got {other.plan.sample_shape} "
                                f"after {self.plan.sample_shape}")
        if [l.name for l in other.plan.layers] != [l.name for l in self.plan.layers]:
            raise ShiftlabError("the processes probed different layers; give every rank the same model")
        for mine, theirs in zip(self.observers + [self.counts], other.observers + [other.counts]):
            mine.merge(theirs)
        self.data_records = self.data_records + other.data_records

    # --- the result --------------------------------------------------------------------
    def result(self, dtype: torch.dtype, device: torch.device, processes: int,
               seconds: float = 0.0) -> AuditResult:
        parts = {"invariance": InvarianceResult()}
        for obs in self.observers:
            obs.contribute(parts)
        grid = self.plan.grid
        return AuditResult(_provenance(self, dtype, device, processes), self.plan.shifts.tolist(),
                           list(grid.shape) if grid.shape else None, parts["layers"],
                           parts["invariance"], seconds=round(seconds, 3),
                           forwards=self.counts["forwards"], extra=parts.get("extra"))


def _provenance(driver: _Driver, dtype: torch.dtype, device: torch.device, processes: int) -> Provenance:
    """How the result was produced: the driver's plan, options and counts."""
    from .data.folder import merge_records
    cfg, plan = driver.config, driver.plan
    settings = plan.action.settings()
    paired = plan.classifier and cfg.pairs > 0
    compute = driver.amp or dtype
    return Provenance(
        model=cfg.name or type(driver.model).__name__, protocol=plan.action.name,
        shifts=plan.grid.spec, n_images=driver.counts["images"], seed=cfg.seed,
        input_shape=plan.input_shape, dtype=str(dtype).replace("torch.", ""),
        tolerance=tolerance(compute), margin=cfg.margin,
        fill=settings.get("fill"), crop=settings.get("crop"),
        pairs_per_image=cfg.pairs if plan.classifier else 0,
        pair_range=plan.pair_rule.as_list() if paired else None,
        pair_offsets=plan.pair_rule.words if paired else None,
        batch_size=cfg.batch_size, device=device_name(device), amp=cfg.amp,
        compute_dtype=str(compute).replace("torch.", ""), processes=processes,
        normalize=normalization_record(cfg.normalize), data=merge_records(driver.data_records),
        versions={"shiftlab": _version(), "torch": torch.__version__,
                  "python": platform.python_version()})


def audit(model: nn.Module, data, config: AuditConfig | None = None, observers=(),
          **options) -> AuditResult:
    """Measure how ``model`` responds to shifts of ``data``.

    Args:
        model: any ``nn.Module`` taking ``N×C×T`` signals or ``N×C×H×W`` images (in
            ``eval()`` during the audit), on any device: the batches follow it.
        data: an input tensor, an ``(inputs, labels)`` pair, or an iterable of either
            (a DataLoader).
        config: an :class:`AuditConfig`; keyword ``options`` override its fields
            (``protocol="canvas"``, ``shifts="-4:4"``, ``pairs=5``, ``amp="bf16"``, …).
        observers: more :class:`~shiftlab.observers.Observer` classes to run beside the
            built-in ones (their results land in ``result.extra``).

    Inside an initialised ``torch.distributed`` process group, call it on every rank with
    the same arguments: each rank audits an exact shard of ``data`` and every rank returns
    the merged result, equal to one process's (see :mod:`shiftlab.distributed`). If any
    rank fails, every rank raises. ``shard=False`` audits all of ``data`` in this process
    alone (e.g. on rank 0 only of a training job).

    Returns:
        An :class:`~shiftlab.result.AuditResult`; ``result.table()`` prints it,
        ``result.to_json(path)`` saves it.
    """
    start = time.perf_counter()
    config = config or AuditConfig()
    if options:                                  # a checked config is checked only once
        config = dataclasses.replace(config, **options)
    group = distributed.current() if config.shard else None
    rank, world = (group.rank, group.size) if group else (0, 1)
    try:
        config = config.check()
        driver, dtype, device = _audit_shard(model, data, config, rank, world, observers)
    except Exception as err:
        if group is None:
            raise
        group.exchange(error=err)              # tell the others; raises err
        raise
    if group is not None:
        sent = group.exchange((driver, _fingerprint(model) if world > 1 else None))
        if len({digest for _, digest in sent}) > 1:
            raise group.fail("the processes hold different models (their weights differ); load "
                             "the same weights on every rank (--weights) or seed the model's "
                             "construction")
        try:
            driver = _merge_shards([e for e, _ in sent])      # every rank's driver, in rank order
        except ShiftlabError as err:
            raise group.fail(str(err)) from None
        driver.model = model
    if driver.counts["images"] == 0:
        message = "no inputs to audit: the data is empty"
        raise group.fail(message) if group else ShiftlabError(message)
    return driver.result(dtype, device, world, seconds=time.perf_counter() - start)


def _merge_shards(shards: list[_Driver]) -> _Driver:
    """The shards' drivers merged in rank order into the first that saw data: integer
    counts add exactly, float64 sums add, maxima take the larger."""
    first = next((k for k, e in enumerate(shards) if e.plan is not None), 0)
    driver = shards[first]
    for other in shards[first + 1:]:
        driver.merge(other)
    return driver


def _fingerprint(model: nn.Module) -> str | None:
    """SHA-256 of the model's parameters and buffers (None if its state is not plain tensors)."""
    from .io import digest
    try:
        return digest(dict(model.state_dict()))
    except TypeError:
        return None


def _audit_shard(model: nn.Module, data, config: AuditConfig, rank: int, world: int,
                 observers=()):
    """Run this rank's shard of the audit; return its driver, the model's dtype and device."""
    from tqdm.auto import tqdm

    names = resolve_layers(model, config.layers)
    if config.sensitivity_layer != OUTPUT and config.sensitivity_layer not in names:
        names += resolve_layers(model, [config.sensitivity_layer])
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    driver = _Driver(model, config, names, amp=check_amp(config.amp, device, dtype),
                     extra=observers)
    total = len(data) if isinstance(data, Tensor) else \
        len(data[0]) if isinstance(data, tuple) and isinstance(data[0], Tensor) else None
    if total is not None and world > 1:
        run = distributed.block(-(-total // config.batch_size), rank, world)
        total = min(run.stop * config.batch_size, total) - run.start * config.batch_size
    stream = data.shard(rank, world) if callable(getattr(data, "indexed", None)) else None
    batches = stream.indexed() if stream is not None else \
        shard_batches(data, config.batch_size, rank, world)
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=total, unit="img", desc="audit", leave=False,
                  disable=not config.progress or rank != 0) as bar, ieee_float32(device):
            for first, x, y in batches:
                driver.process(x.to(device=device, dtype=dtype), y, first)
                bar.update(len(x))
    finally:
        driver.close()
        model.train(was_training)
    source = stream if stream is not None else data              # what was read, and how
    driver.data_records = [source.record()] if callable(getattr(source, "record", None)) else []
    return driver, dtype, device


def _version() -> str:
    from . import __version__
    return __version__
