"""Bad inputs of ``shiftlab report``, grouped by class (issue 10, part 2).

Every refused input gives one line on stderr (``shiftlab report: error: ...``), exit status
2 and no HTML file; inputs the report can still show (a read-only folder, unlabelled
audits) work; files that point outside the results folder or are too large to embed are
left out with a note, never embedded.
"""
from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from shiftlab import audit
from shiftlab.cli import main
from shiftlab.experiments.base import ExperimentResult
from shiftlab.models import create_model
from shiftlab.report import MAX_EMBED_BYTES
from shiftlab.result import AuditResult
from shiftlab.typed_json import MAX_JSON_BYTES

DEEP = 200_000


@pytest.fixture(scope="module")
def audit_dict() -> dict:
    """A real audit (9 shifts) as the JSON object the report reads."""
    torch.manual_seed(0)
    result = audit(create_model("conv-maxpool"), (torch.rand(4, 1, 12, 12), torch.arange(4)),
                   shifts="-1:1", name="x", pairs=2)
    return json.loads(json.dumps(result.to_dict()))


def report(folder: Path, capsys) -> tuple[int, str, Path]:
    """Run ``shiftlab report folder -o folder/../r.html``; return (status, stderr, html)."""
    html = folder.parent / "r.html"
    status = main(["report", str(folder), "-o", str(html)])
    return status, capsys.readouterr().err, html


def refused(folder: Path, capsys, *fragments: str) -> str:
    status, err, html = report(folder, capsys)
    assert status == 2, err
    assert err.startswith("shiftlab report: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err
    assert not html.exists()                                   # nothing half-written
    return err


def shown(folder: Path, capsys) -> str:
    status, err, html = report(folder, capsys)
    assert status == 0, err
    return html.read_text()


def results_folder(tmp_path: Path) -> Path:
    """A results folder holding one valid experiment (so it is never empty)."""
    folder = tmp_path / "results"
    folder.mkdir()
    ExperimentResult(name="base", title="Base", summary="s", columns=["x"], rows=[[1]]).save(folder)
    return folder


def embedded(page: str) -> list[bytes]:
    return [base64.b64decode(src) for src in re.findall(r'src="data:image/[a-z]+;base64,([^"]+)"', page)]


# ----------------------------------------------------------------------------- folders
class TestFoldersAsInputs:
    @pytest.mark.parametrize("name, what", [
        ("audit-x.json", "an audit result"), ("models/x/train.json", "a training record"),
        ("explorer-x.json", "an explorer file"), ("experiment-x.json", "an experiment result"),
        ("animation-x.gif", "an animation")])
    def test_a_folder_where_a_file_belongs(self, tmp_path, capsys, name, what):
        folder = results_folder(tmp_path)
        (folder / name).mkdir(parents=True)
        refused(folder, capsys, f"{name} is a folder, not {what}; remove or rename it")

    def test_the_results_folder_is_a_file(self, tmp_path, capsys):
        (tmp_path / "results").write_text("a file")
        refused(tmp_path / "results", capsys, "does not exist")


# ----------------------------------------------------------------------------- wrong types
def _set(data: dict, path: str, value) -> dict:
    """``data`` with the value at ``a.b[2].c`` replaced (``DELETE`` removes it)."""
    keys = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]
    target = data
    for key in keys[:-1]:
        target = target[key]
    if value is DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return data


DELETE = object()


class TestWronglyTypedAudit:
    @pytest.mark.parametrize("path, value, message", [
        ("provenance.n_images", "fifty", "provenance.n_images must be an integer, got 'fifty'"),
        ("provenance.tolerance", "1e-5", "provenance.tolerance must be a finite number, got '1e-5'"),
        ("provenance.tolerance", -1.0, "provenance.tolerance must be >= 0"),
        ("provenance.input_shape", [1, "12", 12], "provenance.input_shape[1] must be an integer"),
        ("provenance", None, "provenance must be an object, got null"),
        ("provenance.model", DELETE, "provenance.model is missing"),
        ("layers", None, "layers must be a list of objects, got null"),
        ("layers", {"conv": {}}, "layers must be a list of objects, got an object"),
        ("layers[0]", None, "layers[0] must be an object, got null"),
        ("layers[0].error", [0.1], "layers[0].error has 1 values, expected one per shift (9)"),
        ("layers[0].error[1]", "big", "layers[0].error[1] must be a finite number or null, got 'big'"),
        ("layers[0].error[1]", -0.5, "layers[0].error[1] = -0.5 must be >= 0"),
        ("layers[0].alignment", [], "layers[0].alignment has 0 values, expected one per shift (9)"),
        ("layers[0].shape", "16x12x12", "layers[0].shape must be a list of integers, got '16x12x12'"),
        ("layers[0].stride", 1.5, "layers[0].stride must be an integer or null, got 1.5"),
        ("layers[0].stride", True, "layers[0].stride must be an integer or null, got true"),
        ("layers[0].comparison", "sometimes", "layers[0].comparison must be one of"),
        ("layers[0].note", 5, "layers[0].note must be a string or null, got 5"),
        ("layers[0].colour", "red", "layers[0].colour is not a field of LayerResult"),
        ("invariance.accuracy", [1.0], "invariance.accuracy has 1 values, expected one per shift (9)"),
        ("invariance.accuracy[0]", 1.5, "invariance.accuracy[0] = 1.5 must be in [0, 1]"),
        ("invariance.consistency", "high", "invariance.consistency must be a finite number or null"),
        ("invariance.consistency", 1.5, "invariance.consistency = 1.5 must be in [0, 1]"),
        ("invariance.flip_rate", True, "invariance.flip_rate must be a finite number or null, got true"),
        ("invariance.sensitivity_radial", [0.1], "sensitivity_radius and sensitivity_radial must have the same length"),
        ("invariance", [], "invariance must be an object, got a list of 0"),
        ("shifts", [[0, 0], [1]], "shifts must be a non-empty list of shifts with 1 to 3 axes"),
        ("shifts", "-1:1", "shifts must be a list of lists of numbers, got '-1:1'"),
        ("shifts", [], "shifts must be a non-empty list"),
        ("grid_shape", [2, 2], "grid_shape [2, 2] does not hold the 9 shifts"),
        ("seconds", "fast", "seconds must be a finite number, got 'fast'"),
        ("colour", "red", "colour is not a field of AuditResult"),
    ])
    def test_field_named_in_one_line(self, tmp_path, capsys, audit_dict, path, value, message):
        folder = results_folder(tmp_path)
        data = _set(json.loads(json.dumps(audit_dict)), path, value)
        (folder / "audit-x.json").write_text(json.dumps(data))
        refused(folder, capsys, "audit-x.json: audit result is malformed: ", message, "re-run the audit")

    @pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e999"])
    def test_non_finite_numbers(self, tmp_path, capsys, audit_dict, text):
        folder = results_folder(tmp_path)
        data = json.loads(json.dumps(audit_dict))
        data["invariance"]["mean_abs_change"] = "PLACEHOLDER"
        (folder / "audit-x.json").write_text(json.dumps(data).replace('"PLACEHOLDER"', text))
        refused(folder, capsys, "invariance.mean_abs_change must be a finite number or null")

    def test_the_valid_original_is_shown(self, tmp_path, capsys, audit_dict):
        folder = results_folder(tmp_path)
        (folder / "audit-x.json").write_text(json.dumps(audit_dict))
        assert AuditResult.from_dict(audit_dict).to_dict() == audit_dict
        assert "features.0" in shown(folder, capsys)


class TestWronglyTypedOtherInputs:
    @pytest.mark.parametrize("record, message", [
        ('{"test_accuracy": "high"}', 'test_accuracy must be a number in [0, 1] or null, got "high"'),
        ('{"test_accuracy": 98.7}', "test_accuracy must be a number in [0, 1] or null, got 98.7"),
        ('{"test_accuracy": 0.9, "test_images": -5}', "test_images must be a non-negative integer, got -5"),
        ('[0.98]', "is not a training record (expected a JSON object)"),
        ('{"test_accuracy": 0.9', "is not valid JSON"),
    ])
    def test_training_record(self, tmp_path, capsys, record, message):
        folder = results_folder(tmp_path)
        (folder / "models" / "x").mkdir(parents=True)
        (folder / "models" / "x" / "train.json").write_text(record)
        refused(folder, capsys, "train.json", message)

    @pytest.mark.parametrize("name, text, message", [
        ("experiment-x.json", '{"name": "x", "title": 5}', "experiment-x.json is not"),
        ("explorer-x.json", '{"schema": "shiftlab.explorer/1", "canvas": "big"}', "explorer-x.json is incomplete"),
        ("audit-x.json", b"\xff\xfe not utf-8", "audit-x.json is not valid JSON"),
    ])
    def test_experiment_explorer_and_undecodable_files(self, tmp_path, capsys, name, text, message):
        folder = results_folder(tmp_path)
        path = folder / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        refused(folder, capsys, message)


# ----------------------------------------------------------------------------- nesting
class TestDeeplyNestedJson:
    @pytest.mark.parametrize("name, what", [
        ("audit-x.json", "audit result"), ("models/x/train.json", "training record"),
        ("explorer-x.json", "explorer file"), ("experiment-x.json", "experiment result")])
    def test_nested_200000_deep(self, tmp_path, capsys, name, what):
        folder = results_folder(tmp_path)
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("[" * DEEP + "]" * DEEP)
        refused(folder, capsys, f"{name} is JSON nested too deeply to read; re-create the {what}")

    def test_nested_inside_a_valid_audit(self, tmp_path, capsys, audit_dict):
        folder = results_folder(tmp_path)
        text = json.dumps(audit_dict).replace('"seconds": ', '"seconds": ' + "[" * DEEP + "]" * DEEP + ", \"x\": ", 1)
        (folder / "audit-x.json").write_text(text)
        refused(folder, capsys, "audit-x.json is JSON nested too deeply")


# ----------------------------------------------------------------------------- unlabelled
class TestUnlabelledAudits:
    def test_audit_of_default_style_unlabelled_data_then_report(self, tmp_path, capsys):
        """``shiftlab audit --model conv-maxpool --out R/audit-x.json && shiftlab report R``:
        audit's default data (synthetic:256) is unlabelled; 16 such images take the same path."""
        folder = tmp_path / "R"
        assert main(["audit", "--model", "conv-maxpool", "--data", "synthetic:16", "--quiet",
                     "--out", str(folder / "audit-x.json")]) == 0
        capsys.readouterr()
        page = shown(folder, capsys)
        assert "Accuracies are blank" in page
        assert "True-class probability and accuracy against the shift: not drawn" in page
        assert len(embedded(page)) == 3                   # headline bars, layer heatmap, sensitivity

    def test_labelled_and_unlabelled_side_by_side(self, tmp_path, capsys, audit_dict):
        folder = tmp_path / "R"
        folder.mkdir()
        (folder / "audit-labelled.json").write_text(json.dumps(audit_dict))
        unlabelled = audit(create_model("conv-circular"), torch.rand(4, 1, 12, 12), shifts="-1:1",
                           name="blind", pairs=2)
        unlabelled.to_json(folder / "audit-blind.json")
        page = shown(folder, capsys)
        assert "<td>blind</td>" in page and "<td>x</td>" in page


# ----------------------------------------------------------------------------- read-only
def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


class TestReadOnlyFolder:
    def test_report_writes_nothing_into_the_results_folder(self, tmp_path, capsys, audit_dict):
        folder = results_folder(tmp_path)
        (folder / "audit-x.json").write_text(json.dumps(audit_dict))
        before = _snapshot(folder)
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
        for path in modes:
            path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            page = shown(folder, capsys)                       # works: figures are embedded
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        assert _snapshot(folder) == before
        assert len(embedded(page)) >= 4

    def test_unwritable_output_is_one_line(self, tmp_path, capsys):
        folder = results_folder(tmp_path)
        (tmp_path / "blocker").write_text("a file")
        status = main(["report", str(folder), "-o", str(tmp_path / "blocker" / "r.html")])
        err = capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1 and "is a file" in err


# ----------------------------------------------------------------------------- outside
class TestFilesPointingOutside:
    def _outside(self, tmp_path: Path) -> Path:
        outside = tmp_path / "elsewhere"
        outside.mkdir()
        return outside

    def test_animation_symlink(self, tmp_path, capsys):
        folder, outside = results_folder(tmp_path), self._outside(tmp_path)
        secret = outside / "secret.gif"
        Image.new("P", (3, 3), 7).save(secret)
        (folder / "animation-x.gif").symlink_to(secret)
        Image.new("P", (2, 2), 1).save(folder / "animation-ok.gif")
        page = shown(folder, capsys)
        assert secret.read_bytes() not in embedded(page)
        assert (folder / "animation-ok.gif").read_bytes() in embedded(page)
        assert "animation-x.gif is not shown: it points outside the results folder" in page

    def test_explorer_audit_and_record_symlinks(self, tmp_path, capsys, audit_dict):
        folder, outside = results_folder(tmp_path), self._outside(tmp_path)
        (outside / "audit.json").write_text(json.dumps(audit_dict))
        (folder / "audit-x.json").symlink_to(outside / "audit.json")
        (outside / "explorer.json").write_text('{"schema": "shiftlab.explorer/1"}')
        (folder / "explorer-x.json").symlink_to(outside / "explorer.json")
        (outside / "run").mkdir()
        (outside / "run" / "train.json").write_text('{"test_accuracy": 0.5}')
        (folder / "models").mkdir()
        (folder / "models" / "run").symlink_to(outside / "run", target_is_directory=True)
        page = shown(folder, capsys)
        for name in ("audit-x.json", "explorer-x.json", "models/run/train.json"):
            assert f"{name} is not shown: it points outside the results folder" in page
        assert "50.0 %" not in page and "No audit results were found" in page

    def test_experiment_figure_symlink_and_escapes(self, tmp_path, capsys):
        folder, outside = results_folder(tmp_path), self._outside(tmp_path)
        Image.new("RGB", (2, 2), (255, 0, 0)).save(outside / "secret.png")
        (folder / "link.png").symlink_to(outside / "secret.png")
        ExperimentResult(name="e", title="E", summary="s", columns=["x"], rows=[[1]],
                         figures=["link.png", "../elsewhere/secret.png", str(outside / "secret.png")]).save(folder)
        page = shown(folder, capsys)
        assert (outside / "secret.png").read_bytes() not in embedded(page)
        assert page.count("is not shown: it points outside the results folder") == 3


# ----------------------------------------------------------------------------- huge / fake
def _sparse(path: Path, head: bytes, size: int) -> Path:
    """A file of ``size`` bytes that starts with ``head`` (sparse: no disk used)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(size)
    return path


class TestHugeAndMislabelledFiles:
    def test_huge_animation_is_left_out(self, tmp_path, capsys):
        folder = results_folder(tmp_path)
        _sparse(folder / "animation-big.gif", b"GIF89a", MAX_EMBED_BYTES + 1)
        page = shown(folder, capsys)
        assert "animation-big.gif is not shown: it is 20 MB, more than the report embeds (20 MB)" in page
        assert len(page) < 100_000

    def test_huge_explorer_is_left_out_unread(self, tmp_path, capsys):
        folder = results_folder(tmp_path)
        _sparse(folder / "explorer-big.json", b"{", MAX_EMBED_BYTES + 1)
        page = shown(folder, capsys)
        assert "explorer-big.json is not shown: it is 20 MB" in page

    def test_huge_experiment_figure_is_left_out(self, tmp_path, capsys):
        folder = results_folder(tmp_path)
        _sparse(folder / "big.png", b"\x89PNG\r\n\x1a\n", MAX_EMBED_BYTES + 1)
        ExperimentResult(name="e", title="E", summary="s", columns=["x"], rows=[[1]], figures=["big.png"]).save(folder)
        assert "Figure big.png is not shown: it is 20 MB" in shown(folder, capsys)

    @pytest.mark.parametrize("name", ["audit-big.json", "experiment-big.json", "models/x/train.json"])
    def test_huge_json_is_refused_unread(self, tmp_path, capsys, name):
        folder = results_folder(tmp_path)
        _sparse(folder / name, b"{", MAX_JSON_BYTES + 1)
        refused(folder, capsys, f"{name} is 100 MB, more than")

    def test_file_not_of_its_type_is_left_out(self, tmp_path, capsys):
        folder = results_folder(tmp_path)
        (folder / "animation-fake.gif").write_text("<script>alert(1)</script>")
        (folder / "fake.png").write_bytes(b"GIF89a not a png")
        ExperimentResult(name="e", title="E", summary="s", columns=["x"], rows=[[1]],
                         figures=["fake.png", "notes.svg"]).save(folder)
        (folder / "notes.svg").write_text("<svg/>")
        page = shown(folder, capsys)
        assert "animation-fake.gif is not shown: it is not a GIF file" in page
        assert "Figure fake.png is not shown: it is not a PNG file." in page
        assert "Figure notes.svg is not shown: .svg is not an image type the report embeds" in page
        assert "alert(1)" not in page and embedded(page) == []

    def test_pipe_is_not_read(self, tmp_path, capsys):
        folder = results_folder(tmp_path)
        os.mkfifo(folder / "audit-pipe.json")               # reading it would wait forever
        refused(folder, capsys, "audit-pipe.json is not a regular file")

    @pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
    def test_device_is_not_read(self, tmp_path, capsys):
        folder = results_folder(tmp_path)
        (folder / "audit-dev.json").symlink_to("/dev/zero")
        page = shown(folder, capsys)                        # outside the folder: left out
        assert "audit-dev.json is not shown: it points outside" in page
