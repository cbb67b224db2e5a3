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
