"""The HTML report: valid, self-contained, one section per thing found, polite when things are missing."""
from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image

from shiftlab import audit
from shiftlab.errors import ShiftlabError
from shiftlab.experiments.base import ExperimentResult
from shiftlab.io import write_text_atomic
from shiftlab.models import create_model
from shiftlab.report import build_report, find_results
from shiftlab.viz import new_figure, save_figure
from shiftlab.viz.animate import animate
from shiftlab.viz.explorer import explorer_frames, save_explorer

CANVAS = 28


def tiny_digit() -> torch.Tensor:
    """A 24x24 digit: sklearn's 8x8 '3', each pixel repeated 3x3 (no download needed)."""
    from shiftlab.data import load_data
    x, y = load_data("digits", split="test", seed=0)
    k = int((y == 3).nonzero()[0, 0])
    return x[k].repeat_interleave(3, -2).repeat_interleave(3, -1)


def make_results(folder: Path) -> Path:
    """A small results folder with every part the report reads (untrained models, seconds)."""
    torch.manual_seed(0)
    images = torch.rand(8, 1, 16, 16) * (torch.rand(8, 1, 16, 16) > 0.7)
    labels = torch.arange(8) % 10
    for name in ("conv-circular", "conv-maxpool"):
        model = create_model(name)
        audit(model, (images, labels), shifts="-2:2", name=name, pairs=2).to_json(folder / f"audit-{name}.json")
    models = folder / "models" / "conv-maxpool"
    write_text_atomic(models / "train.json", '{"config": {}, "test_accuracy": 0.987}\n')
    lenet = create_model("lenet-wolf", input_size=CANVAS).eval()
    digit = tiny_digit()
    animate(lenet, digit, folder / "animation-lenet-wolf.gif", canvas=CANVAS, label=3, title="lenet-wolf")
    save_explorer(explorer_frames(lenet, digit, canvas=CANVAS, radius=2, label=3, title="lenet-wolf"),
                  folder, "lenet-wolf")
    fig, ax = new_figure()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, folder, "exp-line")
    ExperimentResult(name="toy", title="A toy experiment", summary="It shows a line <b>going down</b>.",
                     columns=["a", "b"], rows=[[1, 0.5]], claims={"the line goes down": True},
                     figures=["exp-line.png", "gone.png"]).save(folder)
    return folder


_BUILT: dict[str, Path] = {}          # one build per session, shared with tests/test_browser.py


@pytest.fixture(scope="session")
def results(tmp_path_factory) -> Path:
    if "results" not in _BUILT:
        _BUILT["results"] = make_results(tmp_path_factory.mktemp("results"))
    return _BUILT["results"]


@pytest.fixture(scope="session")
def report_file(results) -> Path:
    if "report" not in _BUILT:
        _BUILT["report"] = build_report(results, results / "report.html")
    return _BUILT["report"]


@pytest.fixture(scope="session")
def report(report_file) -> str:
    return report_file.read_text()


class _Collector(HTMLParser):
    """Collects tags, image sources and links; checks that every opened tag is closed."""

    VOID = {"meta", "img", "input", "br", "link", "hr"}

    def __init__(self):
        super().__init__()
        self.stack, self.images, self.links, self.errors, self.ids = [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("href", "src"):
            if attrs.get(key):
                self.links.append(attrs[key])
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


@pytest.mark.slow                      # builds the shared results folder once
def test_report_is_valid_self_contained_html(report):
    parser = _Collector()
    parser.feed(report)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    assert len(parser.ids) == len(set(parser.ids))
    # animation, 2 layer figures, model bars, stability, heatmap, sensitivity, explorer
    # (input + 3 maps), one experiment figure
    assert len(parser.images) >= 11
    for src in parser.images:
        head, _, payload = src.partition(",")
        assert head in ("data:image/png;base64", "data:image/gif;base64"), head[:40]
        Image.open(io.BytesIO(base64.b64decode(payload, validate=True))).load()
    assert not re.search(r"https?://", report)
    assert all(link.startswith(("data:", "#")) for link in parser.links)


@pytest.mark.slow                      # builds the shared results folder once
def test_report_has_a_section_per_thing_found(report):
    for heading in ("Overview", "Per-layer equivariance", "Stability of the prediction",
                    "Feature maps of a sliding digit", "Shift explorer", "A toy experiment"):
        assert heading in report
    assert "98.7 %" in report                                  # conv-maxpool's test accuracy
    assert "conv-circular" in report and "conv-maxpool" in report
    assert "✓ holds" in report and "the line goes down" in report
    assert "gone.png is listed but missing" in report
    assert "&lt;b&gt;going down&lt;/b&gt;" in report           # summaries are escaped


def test_report_explains_what_is_missing(tmp_path):
    ExperimentResult(name="only", title="Only an experiment", summary="s", columns=["x"],
                     rows=[[1]]).save(tmp_path)
    text = build_report(tmp_path, tmp_path / "r.html").read_text()
    assert "Only an experiment" in text
    assert "No audit results were found" in text
    assert "No animation was found" in text and "No explorer data was found" in text


def test_report_bad_input(tmp_path):
    with pytest.raises(ShiftlabError, match="does not exist"):
        build_report(tmp_path / "nope", tmp_path / "r.html")
    with pytest.raises(ShiftlabError, match="found nothing to report"):
        build_report(tmp_path, tmp_path / "r.html")
    (tmp_path / "audit-broken.json").write_text("{not json")
    with pytest.raises(ShiftlabError, match="not valid JSON"):
        build_report(tmp_path, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()                 # nothing half-written


@pytest.mark.slow                      # builds the shared results folder once
def test_find_results_reads_the_layout(results):
    found = find_results(results)
    assert set(found.audits) == {"conv-circular", "conv-maxpool"}
    assert found.test_accuracy == {"conv-maxpool": 0.987}
    assert list(found.animations) == ["lenet-wolf"] and list(found.explorers) == ["lenet-wolf"]
    assert [e.name for e in found.experiments] == ["toy"]


def test_report_cli(tmp_path):
    from shiftlab.cli import main
    ExperimentResult(name="cli", title="From the CLI", summary="s", columns=["x"], rows=[[1]]).save(tmp_path)
    out = tmp_path / "cli.html"
    assert main(["report", str(tmp_path), "-o", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>") and "From the CLI" in out.read_text()
    assert main(["report", str(tmp_path / "missing"), "-o", str(out)]) == 2

