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
    """A results folder with every part the report reads, the way the demo lays it out:
    untrained models audited on 8 real MNIST digits under two protocols, a training record,
    an animation, an explorer, two real experiments (quick) and a toy one (seconds)."""
    from shiftlab.data import load_data
    from shiftlab.experiments import run_experiment
    x, y = load_data("mnist", split="test", seed=0)
    images, labels = x[:8], y[:8]
    for name, protocols in (("lenet-wolf", ("circular", "canvas")), ("conv-maxpool", ("circular",))):
        model = create_model(name)
        for protocol in protocols:
            audit(model, (images, labels), protocol=protocol, shifts="-2:2", name=name, pairs=2,
                  half_pixel=protocol == "circular").to_json(folder / f"audit-{name}-{protocol}.json")
    models = folder / "models" / "lenet-wolf"
    write_text_atomic(models / "train.json", '{"config": {}, "test_accuracy": 0.987, "test_images": 10000}\n')
    lenet = create_model("lenet-wolf", input_size=CANVAS).eval()
    digit = tiny_digit()
    animate(lenet, digit, folder / "animation-lenet-wolf.gif", canvas=CANVAS, label=3, title="lenet-wolf")
    save_explorer(explorer_frames(lenet, digit, canvas=CANVAS, radius=2, label=3, title="lenet-wolf"),
                  folder, "lenet-wolf")
    for name in ("bag-of-features", "template-matching"):
        run_experiment(name, folder, quick=True, log=lambda *_: None)
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
    # model bars, 2 layer heatmaps, stability, accuracy map, sensitivity, animation,
    # explorer (input + 3 maps), 3 experiment figures
    assert len(parser.images) == 14
    for src in parser.images:
        head, _, payload = src.partition(",")
        assert head in ("data:image/png;base64", "data:image/gif;base64"), head[:40]
        Image.open(io.BytesIO(base64.b64decode(payload, validate=True))).load()
    assert not re.search(r"https?://", report)
    assert all(link.startswith(("data:", "#")) for link in parser.links)


@pytest.mark.slow                      # builds the shared results folder once
def test_report_has_a_section_per_thing_found(report):
    for heading in ("Overview", "Per-layer equivariance", "Stability of the prediction",
                    "Feature maps of a sliding digit", "Shift explorer", "A toy experiment",
                    "Bag of features", "Template matching"):
        assert heading in report
    assert "98.7 %" in report and "10,000 test images" in report       # lenet-wolf's record
    assert "lenet-wolf" in report and "conv-maxpool" in report
    assert "1 of 1 claims hold" in report and "the line goes down" in report
    assert "Figure gone.png is not shown: it is missing." in report
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
    assert set(found.audits) == {"lenet-wolf-circular", "lenet-wolf-canvas", "conv-maxpool-circular"}
    assert found.test_accuracy == {"lenet-wolf": 0.987} and found.test_images == {"lenet-wolf": 10000}
    assert list(found.animations) == ["lenet-wolf"] and list(found.explorers) == ["lenet-wolf"]
    assert [e.name for e in found.experiments] == ["bag-of-features", "template-matching", "toy"]
    assert found.left_out == []


def test_report_cli(tmp_path):
    from shiftlab.cli import main
    ExperimentResult(name="cli", title="From the CLI", summary="s", columns=["x"], rows=[[1]]).save(tmp_path)
    out = tmp_path / "cli.html"
    assert main(["report", str(tmp_path), "-o", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>") and "From the CLI" in out.read_text()
    assert main(["report", str(tmp_path / "missing"), "-o", str(out)]) == 2



# ----------------------------------------------------------------------------- review fixes
def _explorer_file(folder: Path, **changes) -> Path:
    """A minimal valid explorer file (1 shift, 1 layer, 2 classes) with ``changes`` applied:
    ``frame_KEY`` changes the frame's KEY, ``KEY=DELETE`` removes a top-level key."""
    import json
    png = "data:image/png;base64,iVBORw0KGgo="
    data = {"schema": "shiftlab.explorer/1", "title": "t", "model": "m", "canvas": 4, "label": 1,
            "classes": ["0", "1"], "dys": [0], "dxs": [0],
            "layers": [{"name": "conv", "kind": "Conv2d", "stride": 1, "shape": [2, 4, 4]}],
            "frames": [{"dy": 0, "dx": 0, "input": png, "maps": [png], "probs": [0.25, 0.75]}]}
    for key, value in changes.items():
        target, key = (data["frames"][0], key[6:]) if key.startswith("frame_") else (data, key)
        if value is DELETE:
            del target[key]
        else:
            target[key] = value
    path = folder / "explorer-x.json"
    path.write_text(json.dumps(data))
    return path


DELETE = object()


@pytest.mark.parametrize("change", [
    {"canvas": DELETE}, {"layers": DELETE}, {"classes": DELETE}, {"label": 2}, {"dxs": ["0"]},
    {"layers": [{"name": "conv"}]}, {"frame_input": DELETE}, {"frame_maps": []},
    {"frame_probs": [1.0]}])
def test_load_explorer_checks_every_key_the_report_uses(tmp_path, change):
    from shiftlab.viz.explorer import load_explorer
    assert load_explorer(_explorer_file(tmp_path))["label"] == 1
    assert load_explorer(_explorer_file(tmp_path, label=None))["label"] is None
    path = _explorer_file(tmp_path, **change)
    with pytest.raises(ShiftlabError, match=r"explorer-x\.json is incomplete"):
        load_explorer(path)
    with pytest.raises(ShiftlabError, match="incomplete"):          # not a jinja traceback
        build_report(tmp_path, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_explorer_images_must_be_embedded_pngs(tmp_path):
    from shiftlab.viz.explorer import load_explorer
    for change in ({"frame_input": "http://example.com/x.png"},
                   {"frame_maps": ["https://example.com/y.png"]},
                   {"frame_input": "data:image/svg+xml;base64,AAAA"}):
        with pytest.raises(ShiftlabError, match="embedded PNG"):
            load_explorer(_explorer_file(tmp_path, **change))


def test_explorer_json_cannot_break_out_of_its_script_block(tmp_path):
    import json
    from shiftlab.report import _explorer_json
    nasty = {"title": "<!--<script>alert(1)</script>", "x": "</SCRIPT>"}
    text = _explorer_json(nasty)
    assert "<" not in text and json.loads(text) == nasty
    _explorer_file(tmp_path, title="<!--<script>", model="</script><b>")
    page = build_report(tmp_path, tmp_path / "r.html").read_text()
    block = page.split('<script type="application/json">', 1)[1].split("</script>", 1)[0]
    assert "<" not in block and json.loads(block)["model"] == "</script><b>"


def test_render_errors_become_one_line_errors(tmp_path, monkeypatch):
    import shiftlab.report as report_module
    ExperimentResult(name="e", title="T", summary="s", columns=["x"], rows=[[1]]).save(tmp_path)
    monkeypatch.setattr(report_module, "TEMPLATE", "{{ no_such_value }}")
    with pytest.raises(ShiftlabError, match="cannot render the report"):
        build_report(tmp_path, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("field, value, problem", [
    ("claims", ["a claim"], "claims must map"), ("claims", {"c": "yes"}, "claims must map"),
    ("rows", 5, "rows must be a list of lists"), ("rows", [1, 2], "rows must be a list of lists"),
    ("columns", ["x", 1], "columns must be a list of strings"),
    ("figures", "a.png", "figures must be a list"), ("title", None, "title must be a string")])
def test_experiment_load_checks_types(tmp_path, field, value, problem):
    import json
    path = ExperimentResult(name="typed", title="T", summary="s", columns=["x"], rows=[[1]]).save(tmp_path)
    data = json.loads(path.read_text())
    data[field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(ShiftlabError, match=rf"experiment-typed\.json is not a valid experiment result: {problem}"):
        ExperimentResult.load(path)
    path.write_text('{"name": "typed"}')
    with pytest.raises(ShiftlabError, match=r"experiment-typed\.json is not an experiment result"):
        ExperimentResult.load(path)


def test_malformed_audit_error_names_the_file(tmp_path):
    from shiftlab.result import SCHEMA
    (tmp_path / "audit-odd.json").write_text(f'{{"schema": "{SCHEMA}", "layers": 5}}')
    with pytest.raises(ShiftlabError, match=r"audit-odd\.json: audit result is malformed: provenance is missing"):
        build_report(tmp_path, tmp_path / "r.html")
    (tmp_path / "audit-odd.json").write_text('["a list"]')
    with pytest.raises(ShiftlabError, match=r"audit-odd\.json: not a shiftlab audit result"):
        build_report(tmp_path, tmp_path / "r.html")


def test_experiment_figures_must_stay_inside_the_results_folder(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    outside = tmp_path / "secret.png"
    Image.new("RGB", (2, 2), (255, 0, 0)).save(outside)
    Image.new("RGB", (2, 2), (0, 0, 255)).save(results / "inside.png")
    (results / "link.png").symlink_to(outside)
    ExperimentResult(name="paths", title="Paths", summary="s", columns=["x"], rows=[[1]],
                     figures=["inside.png", str(outside), "../secret.png", "link.png"]).save(results)
    text = build_report(results, results / "r.html").read_text()
    embedded = [base64.b64decode(src.split(",", 1)[1])
                for src in re.findall(r'src="(data:image/png;base64,[^"]+)"', text)]
    assert embedded == [(results / "inside.png").read_bytes()]
    for name in (str(outside), "../secret.png", "link.png"):
        assert f"Figure {name} is not shown: it points outside the results folder." in text


def test_report_cli_checks_the_output_before_drawing(tmp_path):
    from shiftlab.cli import main
    (tmp_path / "not-a-dir").write_text("a file")
    images = torch.rand(4, 1, 12, 12)
    audit(create_model("conv-circular"), (images, torch.arange(4)), shifts="-1:1", name="c",
          pairs=2).to_json(tmp_path / "audit-c.json")
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "not-a-dir" / "r.html")]) == 2
    assert not (tmp_path / "figures").exists()                # nothing drawn before the error


def test_fmt_formats_numbers_one_way():
    from shiftlab.fmt import cell, number, pct, text_table
    assert pct(0.98765) == "98.8 %" and pct(0) == "0.0 %" and pct(None) == "–"
    assert number(1 / 3) == "0.3333" and number(123456.0) == "1.235e+05" and number(None) == "–"
    assert [cell(v) for v in (True, False, None, 7, 0.5, "a")] == ["yes", "no", "–", "7", "0.5", "a"]
    assert text_table([["alpha", 1.0], ["b", 22]], ["name", "n"]).splitlines() == [
        "name   n", "-----  --", "alpha  1", "b      22"]
    result = ExperimentResult(name="t", title="T", summary="s", columns=["name", "n"],
                              rows=[["alpha", 1.0], ["b", 22]])
    assert result.table() == text_table(result.rows, result.columns)


# ----------------------------------------------------------------------------- issue 10: a report a person reads
def _block(page: str, start: str, end: str = "</section>") -> str:
    """The part of ``page`` from ``start`` to the next ``end``."""
    head = page.index(start)
    return page[head:page.index(end, head + len(start))]


@pytest.mark.slow                      # uses the shared results folder
def test_overview_has_one_headline_row_per_model_and_protocol(results, report):
    """One headline table per protocol (each fits a laptop's width), one row per model."""
    import json
    from shiftlab.fmt import pct, points
    tables = re.findall(r'<table class="headline">(.*?)</table>', report, re.S)
    assert len(tables) == 2
    for protocol, table in zip(("canvas", "circular"), tables):      # protocols in name order
        row = _block(table, "<tr><td>lenet-wolf</td>", "</tr>")
        cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)
        inv = json.loads((results / f"audit-lenet-wolf-{protocol}.json").read_text())["invariance"]
        half = protocol == "circular"             # audited with half-pixel shifts (make_results)
        gap = f"{100 * inv['gap_integer']:.1f} / {points(inv['gap_half_pixel'])}" if half \
            else points(inv["gap_integer"])
        assert cells == ["lenet-wolf", "98.7 %", pct(inv["clean_accuracy"]),
                         pct(inv["worst_case_accuracy"]), gap, pct(inv["consistency"]),
                         *([pct(inv["half_pixel_consistency"])] if half else []),
                         pct(inv["flip_rate"]), f"{inv['mean_abs_change']:.3f}"]
        if half:
            assert re.fullmatch(r"\d+\.\d / \d+\.\d pt", cells[4])      # integer / half-pixel
            assert "gap, points<small>integer / ½ px</small>" in table and "½-px consistency" in table
        else:
            assert cells[4].endswith(" pt") and " / " not in cells[4]  # canvas: integer gap only
            assert "canvas shifts<small>shifts -2:2, 8 images</small>" in table
            assert "gap, points<small>integer shifts</small>" in table and "½-px" not in table
        assert table.count("<tr><td>lenet-wolf</td>") == 1 and table.count("<tr><td>conv-maxpool</td>") == 1
        assert "10,000 test images" in table


@pytest.mark.slow                      # uses the shared results folder
def test_every_experiment_appears_with_its_figures(report):
    for name, figures in (("bag-of-features", 1), ("template-matching", 1), ("toy", 1)):
        card = _block(report, f'id="experiment-{name}"', '<div class="experiment"' if name != "toy" else "</section>")
        assert card.count("<img ") == figures, name
        assert "claims hold" in card


def test_layers_that_do_not_fit_the_protocol_are_said_in_words(tmp_path):
    """A layer 'not comparable' under a protocol, and per-shift errors that are None: the
    report says so next to that model's heatmap, draws the heatmap and the table."""
    import json
    images = torch.rand(4, 1, 12, 12)
    for name in ("wrapped", "plain"):
        audit(create_model("conv-maxpool"), (images, torch.arange(4)), shifts="-1:1", name=name,
              pairs=2).to_json(tmp_path / f"audit-{name}.json")
    path = tmp_path / "audit-wrapped.json"
    data = json.loads(path.read_text())
    zero = data["shifts"].index([0.0, 0.0])
    whole, part = data["layers"][3], data["layers"][4]
    whole.update(comparison="not comparable", error_exact=None, error_other=None,
                 note="not comparable: every position's receptive field wrapped",
                 error=[0.0 if k == zero else None for k in range(9)])
    part["error"][0] = None                                      # one shift had nothing to compare
    path.write_text(json.dumps(data))
    page = build_report(tmp_path, tmp_path / "r.html").read_text()
    block = _block(page, "<h3>wrapped ")                         # models in name order: the last
    assert (f"<b>{whole['name']}</b> (circular shifts): not comparable: every position&#39;s "
            "receptive field wrapped") in block
    assert f"<b>{part['name']}</b> (circular shifts): 1 of 9 shifts left nothing to compare (hatched cells)" in block
    assert f"<td>{whole['name']}</td><td>{whole['kind']}</td>" in block and "<td>not comparable</td>" in block
    assert block.count("<img ") == 1
    plain = _block(page, "<h3>plain ", "<h3>wrapped ")
    assert "<ul class=\"notes\">" not in plain and "not comparable" not in plain
