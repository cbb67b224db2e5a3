"""Every circular shift from ``S^d`` forward passes instead of ``N^d``.

A net whose layers are all circular (convolutions with circular padding, pointwise
nonlinearities, subsampling by ``s``) commutes with circular shifts by multiples of its total
stride ``S``: ``f(T_{δ + kS} x)`` is ``f(T_δ x)`` with its stride-``S`` map rolled by ``k``, so
an output that pools that map globally is *S-periodic*, ``f(T_{δ + kS} x) = f(T_δ x)``.
Then the predictions at all ``N_1 ⋯ N_d`` circular shifts of an input follow from the
``S^d`` residues ``δ ∈ [0, S)^d``, each standing for ``∏ N_a / S`` shifts, and the exact
worst case and consistency over every shift cost ``S^d`` passes per input (a stride-2 net on
28×28 images: 4 instead of 784, 196× fewer).

Periodicity is verified, never assumed: on the first batch, ``f(T_{δ + S e_a} x)`` must equal
``f(T_δ x)`` for every residue ``δ`` and axis ``a`` (to a tolerance relative to the logits'
size); a net that is not periodic (zero padding, a flatten head, a stride that does not
divide the size) is refused in one line.

Definitions, over shifts ``d`` uniform on all ``N^d`` circular shifts of each input:
clean accuracy at ``d = 0``; mean accuracy over ``d``; *worst-case* accuracy, the fraction of
inputs classified correctly at every ``d`` (Michaeli et al. 2023's worst case over shifts);
*consistency*, the probability that two independent uniform shifts ``d, d'`` give the same
class, ``Σ_c (n_c / N^d)²`` per input (Zhang 2019's consistency, over all shifts rather than
sampled pairs).
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

from .actions import circular_shift
from .batches import iter_batches
from .errors import ShiftlabError, run_model
from .law import CROSS_CHECK
from .result import AllShifts

#: periodicity holds when |f(T_{δ+S} x) − f(T_δ x)| ≤ TOLERANCE · (1 + max |f|)
TOLERANCE = CROSS_CHECK


def total_stride(model: nn.Module, example: Tensor) -> int:
    """The largest cumulative stride of any spatial layer, measured by :mod:`shiftlab.probe`."""
    from .probe import infer_layers

    infos = infer_layers(model, example[:1], "all")
    if any(info.stride_source == "unknown" for info in infos):
        raise ShiftlabError("cannot measure this net's total stride (a layer's map does not "
                            "grow with its input); --all-shifts needs a fully convolutional trunk")
    return max((info.stride for info in infos if info.stride), default=1)


def _residues(stride: int, rank: int) -> list[tuple[int, ...]]:
    return list(itertools.product(range(stride), repeat=rank))


def check_periodic(model: nn.Module, x: Tensor, stride: int) -> float:
    """The largest ``|f(T_{δ + S e_a} x) − f(T_δ x)|`` over residues ``δ`` and axes ``a``;
    a :class:`ShiftlabError` when it exceeds the tolerance."""
    rank = x.ndim - 2
    worst = 0.0
    with torch.no_grad():
        for delta in _residues(stride, rank):
            base = run_model(model, circular_shift(x, delta))
            scale = 1.0 + float(base.abs().max())
            for a in range(rank):
                moved = list(delta)
                moved[a] += stride
                err = float((run_model(model, circular_shift(x, tuple(moved))) - base).abs().max())
                worst = max(worst, err / scale)
                if worst > TOLERANCE:
                    raise ShiftlabError(
                        f"--all-shifts needs a net whose outputs repeat every {stride} pixels of "
                        f"circular shift (circular padding, a global-pooling head); this one "
                        f"changes by {worst:.2g} (relative) between shifts {delta} and "
                        f"{tuple(moved)}; audit it with sampled shifts instead")
    return worst


def all_shifts(model: nn.Module, data, batch_size: int = 64, stride: int | None = None) -> AllShifts:
    """Clean, mean and worst-case accuracy and consistency over every circular shift of every
    input, from ``S^d`` forward passes per input (see the module doc).

    Args:
        model: a classifier returning ``N × classes`` logits.
        data: a tensor, an ``(inputs, labels)`` pair or an iterable of batches.
        stride: the total stride ``S``; measured when None.
    """

    was_training = model.training
    model.eval()
    sums = {"consistency": 0.0, "clean": 0, "mean": 0.0, "worst": 0}
    labelled, seen, size, periodic_error = None, 0, None, 0.0
    try:
        for x, y in iter_batches(data, batch_size):
            rank = x.ndim - 2
            if size is None:
                size = list(x.shape[2:])
                stride = total_stride(model, x) if stride is None else int(stride)
                bad = [n for n in size if n % stride]
                if bad:
                    raise ShiftlabError(f"--all-shifts needs sizes that are multiples of the net's "
                                        f"total stride {stride}; got {'x'.join(map(str, size))}: "
                                        "crop or pad the inputs")
                periodic_error = check_periodic(model, x[:4], stride)
                labelled = y is not None
            elif list(x.shape[2:]) != size:
                raise ShiftlabError(f"--all-shifts needs inputs of one size; got "
                                    f"{'x'.join(map(str, x.shape[2:]))} after {'x'.join(map(str, size))}")
            with torch.no_grad():
                preds = torch.stack([run_model(model, circular_shift(x, d)).argmax(1)
                                     for d in _residues(stride, rank)], dim=1)    # N × S^d
            classes = int(preds.max()) + 1
            counts = torch.zeros(len(x), classes, dtype=torch.float64)
            counts.scatter_add_(1, preds, torch.ones_like(preds, dtype=torch.float64))
            sums["consistency"] += float(((counts / preds.shape[1]) ** 2).sum())
            if labelled:
                right = preds == y[:, None]
                sums["clean"] += int(right[:, 0].sum())
                sums["mean"] += float(right.double().mean(1).sum())
                sums["worst"] += int(right.all(1).sum())
            seen += len(x)
    finally:
        model.train(was_training)
    if seen == 0:
        raise ShiftlabError("no inputs for --all-shifts")
    rate = (lambda v: v / seen) if labelled else (lambda v: None)            # noqa: E731
    return AllShifts(stride=stride, size=size, shifts=math.prod(size),
                     passes=stride ** len(size), images=seen,
                     consistency=sums["consistency"] / seen, clean_accuracy=rate(sums["clean"]),
                     mean_accuracy=rate(sums["mean"]), worst_case_accuracy=rate(sums["worst"]),
                     periodic_error=periodic_error)
