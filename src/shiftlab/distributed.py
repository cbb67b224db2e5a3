"""Many processes on ``torch.distributed``: exact shards, one exchange, states merged in rank order.

Under ``torchrun --standalone --nproc-per-node K -m shiftlab audit …`` (or a multi-node
torchrun rendezvous) every process audits one shard of the data and the shards' metric
states are merged in rank order, so K processes give the numbers of one. In Python,
:func:`shiftlab.audit` does the same inside any initialised process group: call it on
every rank with the same model, data and config; every rank gets the merged result.

**Shards** (no padding, no duplicates). The data are cut into the U batches one process
would see, and rank r of K takes a contiguous run of ⌈U/K⌉ or ⌊U/K⌋ of them, in rank order
(:func:`block`; rank 0 never gets fewer than the others). A rank thus computes the very
batches a single process computes, and only the order in which their float64 sums are
added changes (a relative difference of order 1e-16); counts and maxima are exact.
Random consistency pairs are keyed by each image's index in the whole data
(:func:`shiftlab.audit.pair_shifts`), which every rank knows:

* a tensor or an ``(inputs, labels)`` pair: U = ⌈N / batch_size⌉ batches of ``batch_size``
  images; each rank slices its own;
* a ``DataLoader`` over a map-style dataset with its default sequential sampler
  (``shuffle=False``): U = its number of batches; each rank builds the same loader over
  a ``Subset`` of its batches (:func:`loader_shard`) and reads only its own samples; the
  first image of loader batch b has index ``b · batch_size``;
* any other iterable of batches (an ``IterableDataset``, a generator, a list): every rank
  reads all of it and keeps batches ``r, r + K, r + 2K, …``, so it must yield the same
  batches in the same order in every process; the reading is done K times. A shuffling
  DataLoader cannot be sharded exactly and is refused.

**Failure.** A run is a fixed sequence of collectives, each a :meth:`Group.exchange`
that every rank takes whether or not its work succeeded: a rank that failed sends its
one-line error instead of its state, and then every rank raises (the failing rank its
own error; rank 0 ``rank r of K failed: …``; other ranks the same, silently), so no rank
waits for another and nothing is written. A rank that dies outright makes the others'
next collective fail (gloo: at once; nccl: after the timeout) and torchrun stops the rest.
The timeout is ``SHIFTLAB_DIST_TIMEOUT`` seconds (default 1800): more than the time by
which the slowest rank may finish after the fastest.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch

from .device import resolve_device
from .errors import ShiftlabError, one_line

__all__ = ["Group", "PeerFailed", "current", "from_env", "block", "loader_shard", "stage"]

TIMEOUT_ENV = "SHIFTLAB_DIST_TIMEOUT"
_SOURCE_TAG = re.compile(r"\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\] ")   # "[/…/gloo/pair.cc:553] "
DEFAULT_TIMEOUT = 1800.0


class PeerFailed(ShiftlabError):
    """Another process of the run failed. ``quiet``: this rank exits with status 2 without
    printing (the failing rank and rank 0 say what happened)."""

    def __init__(self, message: str, quiet: bool = False):
        super().__init__(message)
        self.quiet = quiet


def block(units: int, rank: int, size: int) -> range:
    """Rank ``rank``'s contiguous run of ``units`` items split over ``size`` ranks: with
    ``units = q·size + m``, ranks below m take q + 1 items and the others q, in rank order.
    Together the runs cover every item once; rank 0 is empty only when there is nothing.

    >>> [list(block(5, r, 2)) for r in range(2)], [list(block(2, r, 3)) for r in range(3)]
    ([[0, 1, 2], [3, 4]], [[0], [1], []])
    """
    q, m = divmod(units, size)
    start = rank * q + min(rank, m)
    return range(start, start + q + (rank < m))


@dataclass
class Group:
    """The process group as an audit uses it: this process's ``rank`` of ``size``, and the
    number of :meth:`exchange` steps taken so far (every rank takes the same steps)."""

    rank: int
    size: int
    exchanges: int = 0

    def exchange(self, payload=None, error: BaseException | None = None) -> list:
        """One step every rank takes: gather each rank's ``payload`` in rank order; a rank
        whose work failed passes its ``error`` instead.

        If any rank failed, raise on every rank: ``error`` itself where it is given, else a
        :class:`PeerFailed` naming the first failing rank and its message (printed by
        rank 0 only). A peer that died or timed out is a :class:`PeerFailed` too.
        """
        import torch.distributed as dist
        mine = ("error", one_line(error)) if error is not None else ("ok", payload)
        got: list = [None] * self.size
        self.exchanges += 1
        try:
            dist.all_gather_object(got, mine)
        except Exception as err:
            if error is not None:
                raise error
            why = _SOURCE_TAG.sub("", one_line(err, limit=400)).split(". ")[0][:160]
            raise PeerFailed(f"lost contact with the other processes of this run: another rank "
                             f"crashed, was stopped or timed out ({why}); nothing was "
                             "written") from None
        failed = [(rank, item[1]) for rank, item in enumerate(got) if item[0] == "error"]
        if error is not None:
            raise error
        if failed:
            rank, message = failed[0]
            raise PeerFailed(f"rank {rank} of {self.size} failed: {message}; nothing was written",
                             quiet=self.rank != 0)
        return [item[1] for item in got]

    def fail(self, message: str) -> ShiftlabError:
        """An error every rank raises alike after an exchange; printed by rank 0 only."""
        return PeerFailed(message, quiet=self.rank != 0) if self.size > 1 else ShiftlabError(message)


_CURRENT: tuple[object, Group] | None = None


def current() -> Group | None:
    """The :class:`Group` of the initialised default process group, or None (one process)."""
    global _CURRENT
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.group.WORLD
    if _CURRENT is None or _CURRENT[0] is not world:
        _CURRENT = (world, Group(dist.get_rank(), dist.get_world_size()))
    return _CURRENT[1]


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise ShiftlabError(f"environment variable {name}={value!r} must be a whole number >= 0 "
                            "(torchrun sets it); start the run with torchrun")
    return number


def _timeout() -> float:
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < 1e7:
        raise ShiftlabError(f"{TIMEOUT_ENV}={text!r} must be a number of seconds > 0")
    return seconds


@contextmanager
def from_env(device: "str | torch.device | None" = "auto"):
    """Yield ``(group, device)``: under torchrun (``WORLD_SIZE`` and ``RANK`` set) join its
    process group (gloo on the CPU, nccl on CUDA, with ``cuda`` meaning the GPU of this
    process's ``LOCAL_RANK``) and leave it afterwards; otherwise ``(None, device)``, or
    the group already initialised by the caller.

    The device is checked before the group is joined, so a machine without it fails at
    once on every rank, with one line each and no collective pending.
    """
    import torch.distributed as dist
    world, rank = _env_int("WORLD_SIZE"), _env_int("RANK")
    if world is None or rank is None or (dist.is_available() and dist.is_initialized()):
        yield current(), resolve_device(device)
        return
    if not dist.is_available():
        raise ShiftlabError("this torch is built without torch.distributed; run one process "
                            "(without torchrun)")
    local = _env_int("LOCAL_RANK") or 0
    if not 0 <= rank < max(world, 1):
        raise ShiftlabError(f"RANK={rank} is not below WORLD_SIZE={world}; start the run with torchrun")
    chosen = resolve_device(device, local_rank=local)
    timeout = timedelta(seconds=_timeout())
    try:
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
            dist.init_process_group("nccl", timeout=timeout, device_id=chosen)
        else:
            dist.init_process_group("gloo", timeout=timeout)
    except Exception as err:
        raise ShiftlabError(f"cannot join the torchrun process group: {one_line(err)}") from None
    try:
        yield current(), chosen
    finally:
        try:
            dist.destroy_process_group()
        except Exception:                       # a peer already gone: nothing to tidy
            pass


@contextmanager
def stage(group: Group | None):
    """A block that ends in one :meth:`Group.exchange` on every rank (e.g. a call of
    :func:`shiftlab.audit`): if it fails before its exchange, take that exchange with the
    error, so that no peer waits for this rank."""
    if group is None:
        yield
        return
    before = group.exchanges
    try:
        yield
    except Exception as err:
        if group.exchanges == before:
            group.exchange(error=err)
        raise


def loader_shard(loader, rank: int, size: int):
    """``(loader, index of its first sample, batch size)`` for this rank's run of the
    batches of a DataLoader that reads a map-style dataset in order; None for any other
    iterable (see the module's notes). One process gets ``loader`` itself."""
    from torch.utils.data import (BatchSampler, DataLoader, IterableDataset, RandomSampler,
                                  SequentialSampler, Subset)
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset) \
            or loader.batch_size is None:
        return None
    if not isinstance(loader.sampler, SequentialSampler) or type(loader.batch_sampler) is not BatchSampler:
        if size > 1 and isinstance(loader.sampler, RandomSampler):
            raise ShiftlabError("a shuffling DataLoader cannot be split exactly across processes "
                                "(each would draw its own order); use shuffle=False")
        return None
    per, n = loader.batch_size, len(loader.dataset)
    if size == 1:
        return loader, 0, per
    units = n // per if loader.drop_last else -(-n // per)
    run = block(units, rank, size)
    lo, hi = run.start * per, min(run.stop * per, n)
    extra = {"prefetch_factor": loader.prefetch_factor,
             "persistent_workers": loader.persistent_workers} if loader.num_workers else {}
    sub = DataLoader(Subset(loader.dataset, range(lo, hi)), batch_size=per, shuffle=False,
                     num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                     pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                     timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
                     multiprocessing_context=loader.multiprocessing_context, **extra)
    return sub, lo, per
