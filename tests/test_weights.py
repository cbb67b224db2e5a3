"""The shipped weights (weights/NAME/): each loads into its zoo model, its record says how it was
trained and how accurate it is on all 10,000 MNIST test digits, and re-measuring agrees."""
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shiftlab.cli import build_parser
from shiftlab.data import load_data, place_on_canvas
from shiftlab.errors import ShiftlabError
from shiftlab.weights import (PRETRAINED, RECORD_FILE, ROOT, WEIGHTS_FILE, in_order,
                                        load_pretrained, main, pretrained_folder, provenance, retrain,
                                        sha256, stamp, tensors_sha256, versions)
from shiftlab.train import accuracy

NAMES = list(PRETRAINED)


def _record(name: str) -> dict:
    return json.loads((ROOT / name / RECORD_FILE).read_text())


@pytest.mark.parametrize("name", NAMES)
def test_shipped_weights_load_and_their_record_says_how_and_how_well(name):
    entry = PRETRAINED[name]
    model = load_pretrained(name)                          # strict: every tensor by name and shape
    assert not model.training
    record = _record(name)
    config = record["config"]
    assert {k: config[k] for k in entry.config()} == entry.config()
    assert config["init"] == (f"weights/{entry.init}/{WEIGHTS_FILE}" if entry.init else None)
    assert record["test_images"] == 10_000 and record["test_accuracy"] >= entry.min_accuracy
    assert [e["epoch"] for e in record["epochs"]] == list(range(1, entry.epochs + 1))
    assert all(e["loss"] > 0 and 0 < e["train_accuracy"] <= 1 for e in record["epochs"])
    shipped = record["provenance"]
    assert shipped["sha256"] == sha256(ROOT / name / WEIGHTS_FILE)
    assert shipped["tensors_sha256"] == tensors_sha256(ROOT / name / WEIGHTS_FILE)
    assert shipped["command"] == "shiftlab " + shlex.join(entry.train_args())
    assert {"torch", "shiftlab", "python", "cpu_capability", "torch_threads"} <= set(shipped["versions"])
    x = torch.zeros(1, 1, entry.input_size, entry.input_size)
    assert model(x).shape == (1, 10)


@pytest.mark.parametrize("name", NAMES)
def test_the_recorded_command_is_a_valid_train_command_with_the_same_settings(name):
    entry = PRETRAINED[name]
    args = build_parser().parse_args(entry.train_args())
    assert (args.command, args.model, args.data, args.epochs, args.lr, args.batch_size, args.augment,
            args.canvas, args.seed, args.limit) == \
        ("train", entry.model, "mnist", entry.epochs, entry.lr, entry.batch_size, entry.augment,
         entry.canvas, entry.seed, entry.limit)
    assert args.out == f"weights/{name}" and entry.limit is None      # shipped: all 50,000 digits


def test_the_folder_ships_only_weights_and_records_and_stays_small():
    files = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if p.is_file())
    expected = sorted([".gitignore", "README.md"] + [f"{n}/{f}" for n in NAMES for f in (WEIGHTS_FILE, RECORD_FILE)])
    tracked = subprocess.run(["git", "ls-files", "weights"], cwd=ROOT.parent, capture_output=True, text=True)
    if tracked.returncode == 0 and tracked.stdout.strip():        # in a git checkout: what is committed
        assert sorted(Path(p).relative_to("weights").as_posix() for p in tracked.stdout.split()) == expected
    assert set(expected) <= set(files)
    assert not any(f.endswith(".pt") for f in files)              # never a pickled checkpoint
    assert sum((ROOT / f).stat().st_size for f in expected) < 8e6


@pytest.mark.parametrize("name", ["lenet-wolf-maxpool-aps", "rotation-p4-cnn"])
def test_remeasured_accuracy_on_2000_test_digits_agrees_with_the_record(name):
    entry = PRETRAINED[name]
    x, y = load_data("mnist", split="test")
    x, y = x[:2000], y[:2000]
    if entry.canvas:
        x = place_on_canvas(x, (entry.canvas, entry.canvas))
    measured = accuracy(load_pretrained(name), x, y)
    recorded = _record(name)["test_accuracy"]
    assert measured >= entry.min_accuracy - 0.005
    assert abs(measured - recorded) < 0.01          # a 2,000-digit sample of the 10,000 (sd ~0.2 points)


def test_entries_come_after_the_weights_they_start_from():
    order = in_order(NAMES)
    assert sorted(order) == sorted(NAMES)
    for name, entry in PRETRAINED.items():
        if entry.init:
            assert entry.init in PRETRAINED and order.index(entry.init) < order.index(name)
    assert in_order(["lenet-wolf-maxpool-blur", "lenet-wolf-maxpool"]) == \
        ["lenet-wolf-maxpool", "lenet-wolf-maxpool-blur"]
    assert in_order(["lenet-wolf-shift3"]) == ["lenet-wolf-shift3"]     # its baseline is shipped


def test_provenance_describes_the_file_used():
    info = provenance("lenet-wolf")
    assert info["weights"] == "weights/lenet-wolf" and info["model"] == "lenet-wolf"
    assert info["sha256"] == sha256(ROOT / "lenet-wolf" / WEIGHTS_FILE)
    assert info["test_images"] == 10_000 and info["config"]["epochs"] == PRETRAINED["lenet-wolf"].epochs


def test_missing_or_unknown_weights_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(ShiftlabError, match="make weights"):
        pretrained_folder("lenet-wolf", root=tmp_path)
    with pytest.raises(ShiftlabError, match="no shipped weights named 'nope'"):
        pretrained_folder("nope")
    with pytest.raises(ShiftlabError, match="no shipped weights named nope"):
        retrain(["nope"], root=tmp_path)
    assert main(["nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("shiftlab weights: error:")


def test_stamp_drops_the_checkpoint_and_records_the_provenance(tmp_path):
    folder = tmp_path / "lenet-wolf"
    folder.mkdir()
    from safetensors.torch import save_file
    save_file({"w": torch.ones(2)}, str(folder / WEIGHTS_FILE))
    (folder / RECORD_FILE).write_text(json.dumps({"config": {}, "test_accuracy": 0.5}))
    (folder / "checkpoint.pt").write_bytes(b"pickled")
    stamp("lenet-wolf", tmp_path, "shiftlab train ...")
    record = json.loads((folder / RECORD_FILE).read_text())
    assert not (folder / "checkpoint.pt").exists() and record["test_accuracy"] == 0.5
    assert record["provenance"]["command"] == "shiftlab train ..."
    assert record["provenance"]["sha256"] == sha256(folder / WEIGHTS_FILE)
    assert record["provenance"]["tensors_sha256"] == tensors_sha256(folder / WEIGHTS_FILE)
    assert record["provenance"]["versions"]["torch"] == torch.__version__


def test_make_weights_runs_the_pretrained_module():
    makefile = (ROOT.parent / "Makefile").read_text()
    assert "-m shiftlab.weights" in makefile.split("\nweights:")[1].split("\n\n")[0]
    done = subprocess.run([sys.executable, "-m", "shiftlab.weights", "no-such-weights"],
                          capture_output=True, text=True, cwd=ROOT.parent)
    assert done.returncode == 2 and "no shipped weights named no-such-weights" in done.stderr


def test_the_weights_readme_is_the_catalogue_with_the_recorded_accuracies():
    from shiftlab.weights import readme
    text = (ROOT / "README.md").read_text()
    assert text == readme()
    for name in NAMES:
        assert f"| `{name}` |" in text and f"{_record(name)['test_accuracy']:.2%}" in text


def test_tensors_sha256_ignores_the_header_order_but_not_a_changed_value(tmp_path):
    from safetensors.torch import save_file
    a, b = torch.arange(6.0).reshape(2, 3), torch.ones(4, dtype=torch.float64)
    save_file({"a": a, "b": b}, str(tmp_path / "1.safetensors"), metadata={"x": "1", "y": "2"})
    save_file({"b": b, "a": a}, str(tmp_path / "2.safetensors"), metadata={"y": "2", "x": "1"})
    changed = a.clone()
    changed[1, 2] = torch.nextafter(changed[1, 2], torch.tensor(100.0))
    save_file({"a": changed, "b": b}, str(tmp_path / "3.safetensors"))
    h = [tensors_sha256(tmp_path / f"{i}.safetensors") for i in (1, 2, 3)]
    assert h[0] == h[1] != h[2]


@pytest.mark.slow
def test_make_weights_reproduces_a_shipped_entry(tmp_path):
    """lenet-wolf-maxpool trained again by the same driver: the same tensors, bit for bit, where
    the versions, CPU kernels and thread count match the record's (else the same accuracy)."""
    name = "lenet-wolf-maxpool"
    lines = []
    retrain([name], root=tmp_path / "weights", log=lines.append)
    again = json.loads((tmp_path / "weights" / name / RECORD_FILE).read_text())
    shipped = _record(name)
    assert again["config"] == shipped["config"] and again["provenance"]["command"] == shipped["provenance"]["command"]
    if {k: v for k, v in versions().items() if k != "shiftlab"} == \
            {k: v for k, v in shipped["provenance"]["versions"].items() if k != "shiftlab"}:
        assert again["provenance"]["tensors_sha256"] == shipped["provenance"]["tensors_sha256"]
        assert [e["loss"] for e in again["epochs"]] == [e["loss"] for e in shipped["epochs"]]
    assert abs(again["test_accuracy"] - shipped["test_accuracy"]) < 0.003
    assert not (tmp_path / "weights" / name / "checkpoint.pt").exists()
    assert (tmp_path / "weights" / "README.md").is_file() and len(lines) == 2


def test_the_zoo_imports_neither_the_trainer_nor_the_loader_nor_the_catalogue():
    """Guards the layering: the weights catalogue lives above the zoo (``shiftlab.weights``),
    so no module of ``shiftlab.models`` imports ``train``, ``loading`` or ``weights``, also
    not inside a function (``models/pretrained.py`` did)."""
    import ast

    import shiftlab
    models = Path(shiftlab.__file__).parent / "models"
    above = {"shiftlab.train", "shiftlab.loading", "shiftlab.weights"}
    found = []
    for path in sorted(models.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = ["shiftlab", "shiftlab.models"][node.level == 1]
                target = f"{base}.{node.module}" if node.module else base
                names = [f"{target}.{a.name}" for a in node.names] + [target]
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            else:
                continue
            found += [(path.name, n) for n in names if n in above]
    assert found == []
    assert not (models / "pretrained.py").exists()
