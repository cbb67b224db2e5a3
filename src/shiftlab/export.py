"""ONNX export that works: any model, fixed or plain, with dynamic batch and spatial size.

:func:`export_onnx` runs ``torch.onnx.export(..., dynamo=True)`` on an ``eval()`` copy of the
model, with the batch axis and every spatial axis marked dynamic (``Dim.AUTO``: an axis the
model fixes — a ``Linear`` head sized from the map fixes H and W — stays static, and the
result says so; a model that does not run at other sizes keeps them static too). Before
anything is written, ONNX Runtime (when installed) runs the graph on the example, on batch
1 with odd sides and on the smallest size the export allows, and must agree with PyTorch;
then the ``.onnx`` file is written atomically (a temporary file, ``fsync``, a rename), so a
failure — the exporter's, a disagreement, a full disk — leaves no file.

shiftlab's layers are written to export: padding indices are computed with tensor-by-tensor
``Mod`` (the exporter cannot lower ``tensor % size`` for a dynamic size), BlurPool's filter
is a constant of the graph (its channel count is static, never read from the input at run
time), APS picks its component with computed indices (``argmax`` then a gather), and the
alias-free layers use real DFT matrices built from the map's size, not complex FFTs.

onnx, onnxscript (the exporter's) and onnxruntime are an optional extra, imported only
here: ``pip install 'shiftlab[onnx]'``.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import ShiftlabError, first_line, one_line
from .io import check_writable, write_bytes_atomic
from .law import CROSS_CHECK

INSTALL = "pip install 'shiftlab[onnx]' (onnx, onnxscript and onnxruntime)"
#: ONNX Runtime must agree with PyTorch to this, relative to the output's largest magnitude
TOLERANCE = CROSS_CHECK
AXES = {3: ("batch", "time"), 4: ("batch", "height", "width")}


@dataclass(frozen=True)
class ExportResult:
    """What :func:`onnx_bytes` made and checked (and :func:`export_onnx` wrote to ``path``)."""

    data: bytes = field(repr=False)                          # the serialised ONNX model
    opset: int
    dynamic: dict[str, int] = field(default_factory=dict)    # axis name → smallest size
    static: dict[str, int] = field(default_factory=dict)     # axis name → the size it keeps
    why_static: str = ""                                     # why the model fixes them
    checked: list[tuple[int, ...]] = field(default_factory=list)   # input shapes run in ORT
    max_difference: float | None = None                      # largest |ORT − PyTorch| there
    path: Path | None = None                                 # where export_onnx wrote it

    def summary(self) -> str:
        dyn = ", ".join(f"{a} (from {n})" for a, n in self.dynamic.items()) or "none"
        text = f"dynamic axes: {dyn}"
        if self.static:
            text += "; fixed: " + ", ".join(f"{a} = {n}" for a, n in self.static.items())
            text += f" ({self.why_static})" if self.why_static else ""
        if self.max_difference is None:
            return text + "; not checked (onnxruntime is not installed)"
        shapes = ", ".join("x".join(map(str, s)) for s in self.checked)
        return text + f"; ONNX Runtime agrees with PyTorch on {shapes} (max |diff| {self.max_difference:.1e})"


def _require(name: str):
    try:
        return __import__(name)
    except ImportError:
        raise ShiftlabError(f"ONNX export needs {name}, which is not installed; {INSTALL}") from None


def require_onnx():
    """The ``onnx`` module, or a one-line error saying how to install the export extra."""
    onnx = _require("onnx")
    _require("onnxscript")
    return onnx


def exporter_reason(err: BaseException) -> str:
    """The exporter's reason on one line: the innermost cause's first line, not the
    wrapper's "Failed to export … step 1/3"."""
    seen = set()
    while err.__cause__ is not None and id(err.__cause__) not in seen:
        seen.add(id(err))
        err = err.__cause__
    return f"{type(err).__name__}: {first_line(str(err)) or 'no message'}"


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress, logs registration warnings and graph dumps, and warns
    about module attributes it traced; none of that is for the user."""
    disabled = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(disabled)


def _axis_sizes(program, rank: int) -> tuple[dict[str, int], dict[str, int]]:
    """``(dynamic axis → smallest size torch.export allows, static axis → size)``; an axis
    torch.export narrowed to one size (it does so for ``max_pool1d``) counts as static."""
    exported = program.exported_program
    ranges = exported.range_constraints
    user = set(exported.graph_signature.user_inputs)
    shape = next(n for n in exported.graph.nodes if n.op == "placeholder" and n.name in user).meta["val"].shape
    dynamic, static = {}, {}
    for name, size in zip(AXES[rank + 2], (shape[0], *shape[2:])):
        bound = ranges.get(size.node.expr) if isinstance(size, torch.SymInt) else None
        if bound is None or bound.lower == bound.upper:
            static[name] = int(size if bound is None else bound.lower)
        else:
            dynamic[name] = int(bound.lower)
    if "batch" in dynamic:
        dynamic["batch"] = 1           # torch.export's 0/1 specialisation says 2; batch 1 is checked
    return dynamic, static


def _outputs(value) -> list[Tensor]:
    leaves = torch.utils._pytree.tree_leaves(value)
    return [t.detach() for t in leaves if isinstance(t, Tensor)]


def _check_with_onnxruntime(data: bytes, model: nn.Module, shapes, dtype) -> tuple[list, float]:
    """Run the graph in ONNX Runtime on random inputs of ``shapes``; the largest difference
    to PyTorch, refused above :data:`TOLERANCE` (relative to the output's magnitude)."""
    import onnxruntime
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    generator = torch.Generator().manual_seed(0)
    checked, worst = [], 0.0
    for shape in shapes:
        x = torch.randn(*shape, generator=generator).to(dtype)
        with torch.no_grad():
            try:
                expected = _outputs(model(x))
            except Exception:                 # PyTorch itself cannot run this size: skip it
                continue
        got = session.run(None, {name: x.numpy()})
        for e, g in zip(expected, got):
            diff = float((torch.from_numpy(g) - e).abs().max()) if e.numel() else 0.0
            scale = max(1.0, float(e.abs().max())) if e.numel() else 1.0
            if not diff <= TOLERANCE * scale:
                raise ShiftlabError(f"ONNX Runtime disagrees with PyTorch on a {'x'.join(map(str, shape))} "
                                    f"input (max |diff| {diff:.3g}); the model was not written")
            worst = max(worst, diff)
        checked.append(tuple(shape))
    return checked, worst


def export_onnx(model: nn.Module, path, input_shape, *, check: bool = True,
                metadata: dict[str, str] | None = None) -> ExportResult:
    """Export ``model`` to the ONNX file ``path`` (written atomically), with dynamic batch
    and spatial axes; see :func:`onnx_bytes` for the arguments."""
    path = check_onnx_path(path)
    result = onnx_bytes(model, input_shape, check=check, metadata=metadata)
    write_bytes_atomic(path, result.data)
    return dataclasses.replace(result, path=path)


def check_onnx_path(path) -> Path:
    """A writable path ending in ``.onnx`` (checked before any work)."""
    path = Path(path)
    if path.suffix != ".onnx":
        raise ShiftlabError(f"the ONNX file must end in .onnx, got {str(path)!r}")
    return check_writable(path)


def onnx_bytes(model: nn.Module, input_shape, *, check: bool = True,
               metadata: dict[str, str] | None = None) -> ExportResult:
    """Export ``model`` to ONNX in memory, with dynamic batch and spatial axes.

    Args:
        model: any ``nn.Module`` taking ``N×C×T`` or ``N×C×H×W`` (exported in ``eval()``,
            from a copy: the model itself is not touched).
        input_shape: one input's ``(C, T)`` or ``(C, H, W)``, for the example.
        check: run the graph in ONNX Runtime (if installed) and refuse a disagreement.
        metadata: strings stored in the model's ``metadata_props``.

    Raises :class:`ShiftlabError` with one line: onnx missing (and how to install it),
    the exporter's reason, or a disagreement with PyTorch.
    """
    from .convert import check_input_shape
    if not isinstance(model, nn.Module):
        raise ShiftlabError(f"export needs an nn.Module, got {type(model).__name__}")
    shape = check_input_shape(input_shape)
    onnx = require_onnx()
    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None else torch.float32
    model = copy.deepcopy(model).eval()            # export may set attributes (APS phases)
    example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    rank = len(shape) - 1
    other = (1, shape[0], *(s + 1 + 2 * a for a, s in enumerate(shape[1:])))   # odd sides
    double = (1, shape[0], *(2 * s for s in shape[1:]))
    why_static = _runs_at(model, other, dtype) or _runs_at(model, double, dtype)
    auto = torch.export.Dim.AUTO
    dynamic = ({0: auto, **({2 + a: auto for a in range(rank)} if not why_static else {})},)
    try:
        with _quiet():
            program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=dynamic,
                                        input_names=["input"], output_names=["output"],
                                        verbose=False, report=False)
            proto = program.model_proto
            onnx.checker.check_model(proto)
    except ShiftlabError:
        raise
    except Exception as err:
        raise ShiftlabError(f"torch cannot export the model to ONNX: {exporter_reason(err)}") from None
    dynamic_axes, static_axes = _axis_sizes(program, rank)
    if not why_static and set(static_axes) - {"batch"}:
        why_static = "torch.export fixed them (it does for 1-D max-pools)"
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    try:
        data = proto.SerializeToString()
    except ValueError as err:                      # protobuf's 2 GB limit
        raise ShiftlabError(f"the ONNX model is too large to write as one file: {first_line(str(err))}") from None
    checked, worst = [], None
    if check:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            pass
        else:                         # the example, another batch with odd sides, the smallest
            shapes = [tuple(example.shape), (1, shape[0], *shape[1:])]
            if len(dynamic_axes) == rank + 1:
                smallest = (1, shape[0], *(dynamic_axes[a] for a in AXES[rank + 2][1:]))
                shapes = [tuple(example.shape), other, smallest]
            checked, worst = _check_with_onnxruntime(data, model, shapes, dtype)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    return ExportResult(data, opset, dynamic_axes, static_axes, why_static, checked, worst)


def _runs_at(model: nn.Module, shape, dtype) -> str:
    """``""`` if ``model`` runs on an input of ``shape``, else why not (one line). A model
    that does not run at odd sides and at twice the example's (a Linear head sized from the
    map) keeps its spatial axes at the example's size."""
    try:
        with torch.no_grad():
            model(torch.zeros(shape, dtype=dtype))
    except Exception as err:
        return f"the model does not run at {'x'.join(map(str, shape[2:]))}: {one_line(err)}"
    return ""
