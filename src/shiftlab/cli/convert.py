"""``shiftlab convert``: make a model anti-aliased, APS-sampled, circular or alias-free, and
write its weights, an ONNX file, or both (both or neither)."""
from __future__ import annotations

import argparse

from ..errors import ShiftlabError, one_line
from ..io import check_writable
from .options import MODEL_HELP, PRETRAINED_HELP, check_input, load_model, sizes

NAME = "convert"
HELP = ("Make a model anti-aliased (blurpool), APS-sampled, circular or alias-free; write its "
        "weights and/or an ONNX file.")
EXAMPLES = """examples:
  shiftlab convert --model lenet-wolf-maxpool --weights out/maxpool/model.safetensors --method blurpool --out out/blur.safetensors
  shiftlab convert --model resnet-small --method aps --input 1x32x32 --out out/resnet-aps.safetensors
  shiftlab convert --model conv-maxpool --method alias-free --onnx out/alias-free.onnx
  shiftlab convert --model lenet-wolf-maxpool-aps --method none --onnx out/aps.onnx"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--weights", help="checkpoint of the unconverted model (.pt state dict or .safetensors)")
    p.add_argument("--pretrained", action="store_true", help=PRETRAINED_HELP)
    p.add_argument("--method", required=True, help="blurpool, aps, circular, alias-free, or none "
                                                   "(export the model as it is)")
    p.add_argument("--activation", help="alias-free: polynomial (exact, default) or keep "
                                        "(the model's own nonlinearities, approximate)")
    p.add_argument("--filter-size", type=int, help="binomial filter size 1..7 (default 3 for blurpool, "
                                                   "no pre-blur for aps)")
    p.add_argument("--padding", help="blur padding: reflect, replicate, zeros or circular")
    p.add_argument("--input", type=sizes, default=(1, 28, 28),
                   help="one input's CxHxW, or CxT for signals, to check sizes (default 1x28x28)")
    p.add_argument("--out", help="where to write the converted weights (.safetensors or .pt)")
    p.add_argument("--onnx", help="also (or only) export the converted model to this .onnx file: "
                                  "dynamic batch and spatial size, checked in ONNX Runtime")


def run(args) -> None:
    from ..convert import convert
    from ..train import verify_weights
    out, onnx_out = _check(args)
    if args.weights:
        verify_weights(args.weights)                  # a stored SHA-256 that no longer matches
    model = load_model(args, args.input[-1])
    before = dict(model.named_modules())
    if args.method == "none":
        converted, replaced = model, []
    else:
        options = {"activation": args.activation} if args.activation else {}
        converted, replaced = convert(model, args.method, filter_size=args.filter_size,
                                      padding=args.padding, input_shape=args.input, **options)
    after = dict(converted.named_modules())
    for name in replaced:
        old, new = type(before[name]).__name__, type(after[name]).__name__
        print(f"{name or '(model)'}: " + (f"{old} -> {new}" if old != new else f"{old} made circular"))
    if not replaced and args.method != "none":
        print(f"nothing to convert: {args.model} has no layer that {args.method} changes")
    _write(args, converted, replaced, out, onnx_out)


def _check(args):
    """Every option checked before the model is built; returns the ``--out`` and ``--onnx``
    paths (None where not given)."""
    from ..convert import ACTIVATIONS, METHODS, check_input_shape
    from ..layers.blurpool import check_filter_size
    from ..layers.padding import check_padding_mode
    if args.out is None and args.onnx is None:
        raise ShiftlabError("give --out (the converted weights), --onnx (an ONNX file) or both")
    out = check_writable(args.out) if args.out is not None else None
    if out is not None and out.suffix not in (".safetensors", ".pt"):
        raise ShiftlabError(f"--out must end in .safetensors or .pt, got {str(out)!r}")
    if args.onnx is not None:
        from ..export import check_onnx_path, require_onnx
        onnx_out = check_onnx_path(args.onnx)
        require_onnx()                                # before any work: say how to install it
    else:
        onnx_out = None
    if args.method not in METHODS + ("none",):
        raise ShiftlabError(f"unknown --method {args.method!r}; choose one of {', '.join(METHODS)} or none")
    if args.activation is not None and args.method != "alias-free":
        raise ShiftlabError("--activation chooses the nonlinearities of alias-free; leave it out "
                            f"for --method {args.method}")
    if args.activation is not None and args.activation not in ACTIVATIONS:
        raise ShiftlabError(f"unknown --activation {args.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    check_input(args.input)
    check_input_shape(args.input)
    if args.method in ("circular", "alias-free", "none") and (args.filter_size is not None or
                                                               args.padding is not None):
        raise ShiftlabError("--filter-size and --padding set the blur of blurpool and aps; "
                            f"--method {args.method} has no blur, so leave them out")
    if args.filter_size is not None:
        check_filter_size(args.filter_size)
    if args.padding is not None:
        check_padding_mode(args.padding)
    return out, onnx_out


def _write(args, converted, replaced: list[str], out, onnx_out) -> None:
    """The converted weights and the ONNX file, both or neither: each is made in memory
    before either file is written."""
    from io import BytesIO

    from ..io import write_bytes_atomic
    from ..train import weights_bytes
    exported = None
    if onnx_out is not None:                          # before any file: a failed export writes none
        from ..export import onnx_bytes
        exported = onnx_bytes(converted, args.input,
                              metadata={"shiftlab.model": args.model, "shiftlab.method": args.method})
    if out is None:
        write_bytes_atomic(onnx_out, exported.data)
        print(f"wrote {onnx_out} (ONNX opset {exported.opset}; {exported.summary()})")
        return
    # serialised in memory first: a full disk is then an OSError that atomic writing reports
    state = converted.state_dict()
    try:
        if out.suffix == ".pt":
            import torch
            buffer = BytesIO()
            # own contiguous copies, as weights_bytes makes for safetensors
            torch.save({k: v.detach().clone().contiguous() for k, v in state.items()}, buffer)
            data = buffer.getvalue()
        else:
            data = weights_bytes(state, {"model": args.model, "method": args.method,
                                         "filter_size": str(args.filter_size), "padding": str(args.padding)})
    except RuntimeError as err:
        raise ShiftlabError(f"cannot save the converted weights to {str(out)!r}: "
                            f"{one_line(err)}") from None
    existed = out.exists()
    write_bytes_atomic(out, data)
    if exported is not None:
        try:
            write_bytes_atomic(onnx_out, exported.data)
        except ShiftlabError:
            if not existed:                           # both outputs or neither
                out.unlink(missing_ok=True)
            raise
    print(f"wrote {out} ({len(replaced)} layers converted by {args.method}; rebuild the model "
          "with shiftlab.convert before loading it)")
    if exported is not None:
        print(f"wrote {onnx_out} (ONNX opset {exported.opset}; {exported.summary()})")
