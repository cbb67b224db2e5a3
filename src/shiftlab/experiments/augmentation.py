"""Experiment ``augmentation``: invariance learned from shifted data does not reach beyond it.

Azulay & Weiss (2019): a CNN whose head is not globally pooled learns invariance only to
the shifts it was shown. We place digits on a larger canvas and train ``lenet-wolf`` (valid
convs, max-pool, a linear head sized from the canvas) twice with ``shiftlab.train``: with
every digit centred, and with random canvas shifts in ``[−R, R]²`` (``augment="shift:R"``),
the trained region. ``shiftlab.audit`` (canvas protocol) then measures accuracy at each
horizontal offset and consistency for shift pairs inside the trained region versus over
the whole canvas.

By default the two nets are the shipped weights ``augmentation-centred`` and
``augmentation-shifted`` (real MNIST on a 40×40 canvas, all 50,000 training digits);
``retrain=True`` trains them again the same way; ``quick`` trains on sklearn's 8×8 digits.
"""
from __future__ import annotations

from pathlib import Path

from .base import ExperimentResult, save_data, work_folder
from .trained import describe

__all__ = ["region_means", "compute", "draw", "claims", "summarise", "run"]


def region_means(offsets: list[int], values: list[float], radius: int) -> tuple[float, float]:
    """Mean of ``values`` at offsets with ``|offset| ≤ radius`` (inside) and beyond (outside)."""
    inside = [v for o, v in zip(offsets, values) if abs(o) <= radius]
    outside = [v for o, v in zip(offsets, values) if abs(o) > radius]
    return sum(inside) / len(inside), (sum(outside) / len(outside) if outside else float("nan"))


def compute(*, seed: int = 0, quick: bool = False, retrain: bool = False, log=print,
            out: Path | None = None) -> dict:
    """lenet-wolf trained with and without shifts in the central region; tested across the
    canvas. ``out``: where quick runs train and ``retrain`` trains again (a temporary
    folder when None)."""
    from ..audit import audit
    from ..data import load_data, place_on_canvas
    from ..loading import load_trained
    from ..train import TrainConfig, train
    from .trained import experiment_model

    if quick:   # sklearn's 8x8 digits, trained here: seconds
        data, canvas, region, n_test = "digits", 20, 2, 200
        training = {"epochs": 6, "batch_size": 32}
        train_xy = load_data(data, split="train", seed=seed)
    else:       # real MNIST on a 40x40 canvas: the shipped weights (or trained again the same way)
        data, canvas, region, n_test = "mnist", 40, 2, 200
    x_test, y_test = load_data(data, split="test", seed=seed)
    x_test, y_test = x_test[:n_test], y_test[:n_test]
    reach = (canvas - x_test.shape[-1]) // 2            # farthest offset that keeps the digit whole
    x_canvas = place_on_canvas(x_test, (canvas, canvas))

    variants = {"centred only": None, f"shifted within ±{region}": f"shift:{region}"}
    curves, numbers, weights = {}, {}, {}
    with work_folder(out) as folder:
        for name, augment in variants.items():
            kind = "centred" if augment is None else "shifted"
            if quick:
                config = TrainConfig(model="lenet-wolf", data=data, epochs=training["epochs"],
                                     batch_size=training["batch_size"], canvas=canvas, augment=augment,
                                     seed=seed)
                runs = folder / "augmentation-runs" / kind
                log(f"training lenet-wolf ({name}) on {data}, canvas {canvas}x{canvas} ...")
                record = train(config, runs, data=(train_xy, (x_test, y_test)), progress=False,
                               log=lambda s: None)
                model, test_accuracy = load_trained("lenet-wolf", runs, canvas), record.test_accuracy
                weights[name] = {"source": "trained here (quick)", "config": record.config,
                                 "test_accuracy": test_accuracy, "test_images": record.test_images}
            else:
                model, weights[name] = experiment_model(f"augmentation-{kind}", folder, retrain=retrain,
                                                        log=log)
                test_accuracy = weights[name]["test_accuracy"]
            line = audit(model, (x_canvas, y_test), protocol="canvas", shifts=f"x=-{reach}:{reach}",
                         pairs=0, layers=[], seed=seed, name=name)
            inside = audit(model, (x_canvas, y_test), protocol="canvas", shifts="0:0", pairs=5,
                           pair_range=region, layers=[], seed=seed, name=name)
            everywhere = audit(model, (x_canvas, y_test), protocol="canvas", shifts="0:0", pairs=5,
                               pair_range=reach, layers=[], seed=seed, name=name)
            offsets = [int(dx) for _, dx in line.shifts]
            accuracy = list(line.invariance.accuracy)
            acc_in, acc_out = region_means(offsets, accuracy, region)
            curves[name] = {"offset": offsets, "accuracy": accuracy}
            numbers[name] = {"test_accuracy_centred": test_accuracy, "accuracy_inside": acc_in,
                             "accuracy_outside": acc_out, "consistency_inside": inside.invariance.consistency,
                             "consistency_everywhere": everywhere.invariance.consistency}
            log(f"  accuracy inside ±{region}: {acc_in:.1%}, outside: {acc_out:.1%}; consistency inside "
                f"{inside.invariance.consistency:.1%}, over ±{reach}: {everywhere.invariance.consistency:.1%}")
    settings = {"seed": seed, "quick": quick, "data": data, "canvas": canvas, "region": region,
                "reach": reach, "test_images": n_test, "model": "lenet-wolf", "protocol": "canvas",
                "consistency_pairs": 5, "weights": weights}
    return {"settings": settings, "variants": numbers, "curves": curves}


def draw(data: dict, out: str | Path) -> list[Path]:
    """Accuracy against the digit's horizontal offset, with the trained region shaded."""
    from ..viz import new_figure, save_figure
    s = data["settings"]
    region = s["region"]
    fig, ax = new_figure(1, 1, size=(6.0, 3.6))
    for name, c in data["curves"].items():
        ax.plot(c["offset"], c["accuracy"], "o-", ms=3, label=name)
    ax.axvspan(-region - 0.5, region + 0.5, color="tab:green", alpha=0.12, label="trained region")
    ax.set_xlabel("horizontal offset of the digit from the centre (px)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"lenet-wolf on a {s['canvas']}x{s['canvas']} canvas ({s['data']})", fontsize=10)
    ax.legend(fontsize=8)
    return [p for p in save_figure(fig, Path(out), "augmentation") if p.suffix == ".png"]


def claims(data: dict) -> dict[str, bool]:
    """The experiment's claims, checked on :func:`compute`'s data."""
    shifted = data["variants"][f"shifted within ±{data['settings']['region']}"]
    centred = data["variants"]["centred only"]
    return {
        "with shift augmentation, accuracy inside the trained region beats accuracy outside it by "
        "more than 20 points": shifted["accuracy_inside"] - shifted["accuracy_outside"] > 0.2,
        "with shift augmentation, consistency inside the trained region beats consistency over the "
        "whole canvas": shifted["consistency_inside"] > shifted["consistency_everywhere"],
        "augmentation helps inside the trained region": shifted["accuracy_inside"] > centred["accuracy_inside"],
    }


def summarise(data: dict, figures: list[Path]) -> ExperimentResult:
    """The claims, the table and the summary of :func:`compute`'s data."""
    s = data["settings"]
    canvas, region, reach, weights = s["canvas"], s["region"], s["reach"], s["weights"]
    rows = [[name, v["test_accuracy_centred"], v["accuracy_inside"], v["accuracy_outside"],
             v["consistency_inside"], v["consistency_everywhere"]] for name, v in data["variants"].items()]
    return ExperimentResult(
        name="augmentation",
        title="Invariance learned from data does not extend beyond it",
        summary=(f"lenet-wolf is trained on digits on a {canvas}x{canvas} canvas, once always centred and "
                 f"once moved at random by up to {region} px (the trained region), then tested with the digit "
                 f"at every horizontal offset up to {reach} px. Augmentation makes the net robust inside the "
                 "region it was shown, but accuracy and consistency fall off outside it: the network learned "
                 "invariance to the shifts in its data, not translation invariance. "
                 + ("(Both nets trained here briefly.)" if s["quick"] else
                    "Weights: " + "; ".join(describe(w) for w in weights.values()) + ".")),
        columns=["training", "test acc (centred)", f"acc |dx|≤{region}", f"acc |dx|>{region}",
                 f"consistency ±{region}", f"consistency ±{reach}"],
        rows=rows, claims=claims(data), figures=[p.name for p in figures],
        numbers={"variants": data["variants"], "curves": data["curves"]},
        settings=s)


def run(out: Path, *, seed: int = 0, quick: bool = False, retrain: bool = False,
        log=print) -> ExperimentResult:
    """Compute (training in ``out`` when quick or ``retrain``), save the data, draw, and
    state the claims."""
    data = compute(seed=seed, quick=quick, retrain=retrain, log=log, out=Path(out))
    save_data(data, out, "augmentation")
    return summarise(data, draw(data, out))
