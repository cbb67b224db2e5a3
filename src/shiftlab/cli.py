"""The ``shiftlab`` command line. Bad input exits with status 2 and one line on stderr."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import ShiftlabError
from .io import check_writable

EXAMPLES = {
    "audit": """examples:
  shiftlab audit --model conv-maxpool --data synthetic:256 --protocol circular --out out/maxpool.json
  shiftlab audit --model my_net.py:build --weights net.pt --data digits.npz --protocol canvas --margin 2
  shiftlab audit --model lenet-wolf --data synthetic:64 --protocol fractional --shifts=-1:1:0.25""",
    "train": """examples:
  shiftlab train --model lenet-wolf --data mnist --epochs 3 --out out/lenet-wolf
  shiftlab train --model lenet-wolf --data mnist --canvas 38 --augment shift:5 --out out/aug
  shiftlab train --model lenet-wolf --data mnist --epochs 3 --out out/lenet-wolf --resume""",
    "layers": """example:
  shiftlab layers --model conv-maxpool --input 1x28x28""",
    "demo": """example:
  shiftlab demo --out out""",
}


def _size(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes like 28x28, got {text!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shiftlab", description="Measure, see and fix shift-equivariance of CNNs.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"shiftlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text,
                              epilog=EXAMPLES.get(name),
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, help="a zoo name (see `shiftlab models`) or path.py:factory")
        p.add_argument("--weights", help="checkpoint to load (.pt state dict or .safetensors)")
        p.add_argument("--dtype", choices=["float32", "float64"], default="float32")

    p = command("audit", "Audit a model's per-layer shift-equivariance and output stability.")
    model_args(p)
    p.add_argument("--data", default="synthetic:256",
                   help="mnist[:split], fashion-mnist, digits, idx:DIR, folder:DIR, "
                        "synthetic[:N[:CxHxW]] or an .npz/.npy/.pt file (default synthetic:256)")
    p.add_argument("--canvas", type=int, help="place each image centred on an NxN canvas first")
    p.add_argument("--protocol", default="circular", choices=["circular", "canvas", "crop", "fractional"])
    p.add_argument("--shifts", help="shift grid: -4:4, x=-8:8, -1:1:0.25 or 0,0;1,2 "
                                    "(default -4:4; fractional -2:2:0.5). Write --shifts=-4:4")
    p.add_argument("--layers", help="comma-separated layer names (default: convs, pools, "
                                    "activations, blocks); see `shiftlab layers`")
    p.add_argument("--pairs", type=int, default=5, help="random shift pairs per image for consistency")
    p.add_argument("--pair-range", type=float, help="consistency shifts in [-R, R)")
    p.add_argument("--margin", type=int, default=0, help="ignore feature positions this close to a border")
    p.add_argument("--fill", type=float, default=0.0, help="canvas background value")
    p.add_argument("--crop", type=_size, help="crop window HxW for --protocol crop")
    p.add_argument("--sensitivity-layer", default="output", help="layer for the sensitivity map")
    p.add_argument("--limit", type=int, help="audit only the first N images")
    p.add_argument("--batch-size", type=int, default=256, help="most images in one forward pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/audit.json", help="where to write the JSON result")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    command("models", "List the models of the zoo.")

    p = command("layers", "Show the layers shiftlab probes, with their measured strides.")
    model_args(p)
    p.add_argument("--input", type=_size, default=(1, 28, 28), help="one input's CxHxW (default 1x28x28)")
    p.add_argument("--all", action="store_true", help="every submodule, not just the default set")

    p = command("train", "Train a zoo model (Adam, seeded, resumable checkpoints every epoch).")
    p.add_argument("--model", required=True, help="a zoo name (see `shiftlab models`) or path.py:factory")
    p.add_argument("--data", default="mnist", help="labelled data with train/test splits (default mnist)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    p.add_argument("--schedule", default="cosine", choices=("cosine", "constant"),
                   help="cosine: 3%% warm-up then cosine decay to 0 (default)")
    p.add_argument("--augment", help="shift:K = random shifts in [-K, K] px per image and epoch")
    p.add_argument("--canvas", type=int, help="place images centred on an NxN canvas (e.g. 38)")
    p.add_argument("--limit", type=int, help="train on the first N images only")
    p.add_argument("--init", help="start from these weights (tensors matching by name and shape), "
                                  "e.g. a baseline's model.safetensors before fine-tuning a converted net")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder for checkpoint.pt, model.safetensors, train.json")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW memory layout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = command("fetch-mnist", "Set up real MNIST once (download, verify, store); offline after.")
    p.add_argument("--dest", default="data", help="folder for mnist.npz (default ./data)")

    p = command("experiment", "Run one of the seeds' claims as an experiment (see --list).")
    p.add_argument("name", nargs="?", help="experiment name (see --list)")
    p.add_argument("--list", action="store_true", help="list the experiments, one line each")
    p.add_argument("--out", default="out", help="folder for the JSON and figures (default out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny settings (seconds; for tests)")

    p = command("demo", "The main job: audit a circular conv net and a max-pooled one.")
    p.add_argument("--out", default="out", help="folder for the results")
    return parser


def _dtype(name: str):
    import torch
    return {"float32": torch.float32, "float64": torch.float64}[name]


def _load_model(args, input_size: int | None = None):
    from .loading import load_model, load_weights
    model = load_model(args.model, input_size)
    if args.weights:
        load_weights(model, args.weights)
    return model.to(_dtype(args.dtype))


def cmd_audit(args) -> None:
    from .audit import audit
    from .data import load_data
    if args.limit is not None and args.limit < 1:
        raise ShiftlabError(f"--limit must be at least 1, got {args.limit}")
    check_writable(args.out)                          # fail before the work, not after
    if args.crop is not None and len(args.crop) != 2:
        raise ShiftlabError(f"--crop needs HxW, got {'x'.join(map(str, args.crop))}")
    x, y = load_data(args.data, split="test", seed=args.seed)
    if args.limit:
        x, y = x[:args.limit], (None if y is None else y[:args.limit])
    if args.canvas:
        from .data import place_on_canvas
        x = place_on_canvas(x, (args.canvas, args.canvas))
    model = _load_model(args, input_size=args.crop[0] if args.crop else x.shape[-1])
    result = audit(model, (x, y), protocol=args.protocol, shifts=args.shifts, layers=args.layers,
                   pairs=args.pairs, pair_range=args.pair_range, margin=args.margin, fill=args.fill,
                   crop=args.crop, batch_size=args.batch_size, seed=args.seed,
                   sensitivity_layer=args.sensitivity_layer, name=args.model,
                   progress=not args.quiet and sys.stderr.isatty())
    print(result.table())
    path = result.to_json(args.out)
    print(f"\nwrote {path}  ({result.forwards} forwards in {result.seconds:.1f} s)")


def cmd_models(args) -> None:
    from .models import list_models, model_doc
    names = list_models()
    width = max(map(len, names))
    for name in names:
        print(f"{name.ljust(width)}  {model_doc(name)}")


def cmd_layers(args) -> None:
    import torch
    from .probe import infer_layers, resolve_layers
    if len(args.input) != 3:
        raise ShiftlabError(f"--input needs CxHxW, got {'x'.join(map(str, args.input))}")
    model = _load_model(args, input_size=args.input[-1]).eval()
    names = resolve_layers(model, "all" if args.all else None)
    infos = infer_layers(model, torch.zeros(1, *args.input, dtype=_dtype(args.dtype)), names)
    rows = [("layer", "type", "output", "stride")] + [
        (i.name, i.kind, "x".join(map(str, i.shape)),
         "-" if i.stride is None else f"{i.stride} ({i.stride_source})") for i in infos]
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def cmd_train(args) -> None:
    from .train import TrainConfig, train
    config = TrainConfig(model=args.model, data=args.data, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, schedule=args.schedule, augment=args.augment,
                         canvas=args.canvas, seed=args.seed, limit=args.limit,
                         channels_last=not args.no_channels_last, init=args.init)
    check_writable(Path(args.out) / "train.json")
    train(config, args.out, resume=args.resume, progress=not args.quiet and sys.stderr.isatty())


def cmd_fetch_mnist(args) -> None:
    from .data.mnist import FILENAME, fetch_mnist, load_mnist
    target = Path(args.dest) / FILENAME
    if target.is_file():
        load_mnist("test", target)                       # verifies shapes and label counts
        print(f"MNIST already set up: {target}")
    else:
        print(f"MNIST set up and verified: {fetch_mnist(args.dest)}")


def cmd_experiment(args) -> None:
    from .experiments import EXPERIMENTS, run_experiment
    if args.list or not args.name:
        width = max(map(len, EXPERIMENTS))
        for name, (_, line) in EXPERIMENTS.items():
            print(f"{name.ljust(width)}  {line}")
        if not args.list:
            raise ShiftlabError("give an experiment name (listed above)")
        return
    if args.name not in EXPERIMENTS:
        raise ShiftlabError(f"unknown experiment {args.name!r}; see `shiftlab experiment --list`")
    result = run_experiment(args.name, args.out, seed=args.seed, quick=args.quick)
    print(f"\n{result.title}\n\n{result.table()}\n")
    for claim, holds in result.claims.items():
        print(f"  [{'holds' if holds else 'FAILS'}] {claim}")
    print(f"\nwrote {Path(args.out) / f'experiment-{result.name}.json'}"
          + "".join(f", {Path(args.out) / f}" for f in result.figures))


def cmd_demo(args) -> None:
    from .demo import run_demo
    run_demo(Path(args.out))


COMMANDS = {"audit": cmd_audit, "train": cmd_train, "models": cmd_models, "layers": cmd_layers,
            "fetch-mnist": cmd_fetch_mnist, "experiment": cmd_experiment, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except ShiftlabError as err:
        print(f"shiftlab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
