"""The demo's pieces on a tiny subset of real MNIST: train, reuse, audit, animate, report."""
import json
import os
import time

import pytest

from shiftlab.demo import DemoRun, DemoSettings, run_demo
from shiftlab.result import AuditResult

RUNS = (DemoRun("base", "lenet-wolf", animate_as="lenet-wolf-sliding"),
        DemoRun("tuned", "lenet-wolf", augment="shift:2", init="base"))
TINY = DemoSettings(train_limit=256, test_images=100, audit_images=4, audit_shifts="-1:1",
                    runs=RUNS, experiments=())


@pytest.mark.slow
def test_demo_pieces_end_to_end_and_reuse(tmp_path, capsys):
    report = run_demo(tmp_path, settings=TINY)
    out = capsys.readouterr().out
    assert report == tmp_path / "report.html" and report.stat().st_size > 10_000
    for name in ("base", "tuned"):
        record = json.loads((tmp_path / "models" / name / "train.json").read_text())
        assert record["test_images"] == 100 and record["config"]["limit"] == 256
        for protocol in ("circular", "canvas"):
            result = AuditResult.from_json(tmp_path / f"audit-{name}-{protocol}.json")
            assert result.provenance.n_images == 4 and result.provenance.model == name
    assert (tmp_path / "animation-base.gif").stat().st_size > 0
    assert not (tmp_path / "animation-tuned.gif").exists()           # no animate_as
    assert "[train 1/2] training base" in out and "[done]" in out

    run_demo(tmp_path, settings=TINY)                                 # everything reused
    assert capsys.readouterr().out.count("reusing trained") == 2

    base = tmp_path / "models" / "base" / "model.safetensors"         # a retrained baseline
    later = time.time() + 5                                           # makes its dependant stale
    os.utime(base, (later, later))
    run_demo(tmp_path, settings=TINY)
    out = capsys.readouterr().out
    assert "reusing trained base" in out and "training tuned" in out


# ----------------------------------------------------------------------------- shipped weights
def test_the_demo_runs_every_image_experiment_and_its_models_are_the_shipped_ones():
    from shiftlab.demo import RUNS
    from shiftlab.experiments import EXPERIMENTS
    from shiftlab.weights import PRETRAINED
    # all eight seed experiments; the speech one makes its data and trains: run on its own
    assert DemoSettings().experiments == tuple(n for n in EXPERIMENTS if n != "time-vs-frequency")
    assert len(DemoSettings().experiments) == 8 and "time-vs-frequency" in EXPERIMENTS
    assert DemoSettings().shipped and DemoSettings().test_images is None     # all 10,000 when training
    for run in RUNS:                          # --retrain trains them exactly as they were shipped
        p = PRETRAINED[run.name]
        assert (run.model, run.epochs, run.lr, run.augment, run.init, run.limit) == \
            (p.model, p.epochs, p.lr, p.augment, p.init, None)


def test_the_demo_copies_the_shipped_weights_and_trains_nothing(tmp_path, capsys):
    from shiftlab.demo import RUNS, train_runs
    from shiftlab.weights import ROOT
    settings = DemoSettings(runs=RUNS[:2], experiments=())
    records = train_runs(tmp_path, settings)
    out = capsys.readouterr().out
    assert out.count("using shipped") == 2 and "training" not in out
    for run in RUNS[:2]:
        for file in ("model.safetensors", "train.json"):
            assert (tmp_path / "models" / run.name / file).read_bytes() == (ROOT / run.name / file).read_bytes()
        assert records[run.name]["test_images"] == 10_000
    damaged = tmp_path / "models" / RUNS[0].name / "model.safetensors"
    damaged.write_bytes(b"not weights")
    train_runs(tmp_path, settings)                               # the shipped file is copied again
    assert damaged.read_bytes() == (ROOT / RUNS[0].name / "model.safetensors").read_bytes()
