"""Half-pixel shifts side by side: one circular net, its BlurPool, APS and alias-free forms.

What is measured, on real MNIST test digits, for ``conv-maxpool`` (circular 3x3 convs,
ReLU, two 2x2 max-pools: total stride 4, global average pooling, linear head), seeded and
untrained, converted by :func:`shiftlab.convert.convert` from the *same* weights:

* ``layer err``: the largest relative error of the shift law over every probed layer,
  ``‖φ(T_δ x) − T'_{δ/s} φ(x)‖ / ‖T'_{δ/s} φ(x)‖``, under the fractional protocol
  (band-limited circular shifts; ``T'`` Fourier-shifts a stride-``s`` map by ``δ/s``), at the
  half-pixel shifts below (:func:`shiftlab.audit`);
* ``logit err``: the same for the logits (invariance: ``T'`` is the identity);
* ``integer``: the largest logit error at whole-pixel circular shifts (1, 2, 3 px);
* ``time``: forward time per batch relative to the plain net (interleaved, median of the
  repeats; a ratio measured in one run, not an absolute speed).

    python benchmarks/alias_free_table.py --images 256
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from shiftlab import audit
from shiftlab.convert import convert
from shiftlab.data import load_data
from shiftlab.models import create_model

HALF = [(0.5, 0.0), (0.0, 0.5), (0.5, 0.5), (-0.5, 1.5), (1.5, -2.5)]
WHOLE = [(1.0, 0.0), (0.0, 2.0), (3.0, -1.0)]


def variants() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    base = create_model("conv-maxpool").eval()
    return {
        "plain (max-pool)": base,
        "BlurPool 3 (circular)": convert(base, "blurpool", padding="circular")[0],
        "BlurPool 5 (circular)": convert(base, "blurpool", padding="circular", filter_size=5)[0],
        "APS": convert(base, "aps")[0],
        "alias-free, ReLU kept": convert(base, "alias-free", activation="keep")[0],
        "alias-free, polynomial": convert(base, "alias-free")[0],
    }


def errors(net, x, shifts):
    result = audit(net.eval(), x, protocol="fractional", shifts=shifts, pairs=0)
    layer = max(e for r in result.layers if r.comparison == "equivariance" for e in r.error if e is not None)
    logits = max(e for r in result.layers if r.name == "output" for e in r.error if e is not None)
    return layer, logits


def timings(nets: dict, x, repeats: int) -> dict[str, float]:
    seconds = {name: [] for name in nets}
    with torch.no_grad():
        for net in nets.values():
            net(x)                                              # warm-up
        for _ in range(repeats):                                # interleaved: shared noise
            for name, net in nets.items():
                t0 = time.perf_counter()
                net(x)
                seconds[name].append(time.perf_counter() - t0)
    base = statistics.median(next(iter(seconds.values())))
    return {name: statistics.median(s) / base for name, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    x = load_data("mnist", split="test", seed=0)[0][:args.images].float()
    nets = variants()
    ratio = timings(nets, x, args.repeats)
    print(f"conv-maxpool on {len(x)} MNIST test digits, float32, untrained (seed 0); "
          f"half-pixel shifts {HALF}")
    print("| model | layer err (½ px) | logit err (½ px) | logit err (1-3 px) | time |")
    print("|---|---|---|---|---|")
    for name, net in nets.items():
        layer, logits = errors(net, x, HALF)
        _, whole = errors(net, x, WHOLE)
        print(f"| {name} | {layer:.1e} | {logits:.1e} | {whole:.1e} | {ratio[name]:.2f}x |")


if __name__ == "__main__":
    main()
