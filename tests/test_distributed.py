"""Audits across processes on torch.distributed (gloo, CPU): exact shards, merged states,
and a failing rank that stops every rank.

In-process: the shards cover every sample once with the indices one process gives them,
and K shards merged in rank order equal one process (integer counts exactly, float sums to
1e-12 relative). Real processes: ``torchrun --standalone --nproc-per-node 2 -m shiftlab
audit`` against one process, the Python API in a process group, and ranks that fail (a
bad label seen by one rank, a hard crash, a missing GPU): every rank exits non-zero with
one line, no JSON is written, and nothing hangs (each run has a timeout).
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from shiftlab import AuditConfig, ShiftlabError, audit
from shiftlab.audit import _audit_shard, _merge_shards, shard_batches
from shiftlab.cli import main
from shiftlab.distributed import PeerFailed, block, current, loader_shard
from shiftlab.models import create_model

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
WEIGHTS = ROOT / "weights" / "lenet-wolf" / "model.safetensors"
TIMEOUT = 240                     # seconds for a whole multi-process run (2 shared CI cores)


# ----------------------------------------------------------------------------- helpers
def assert_same_result(single: dict, other: dict, rel: float = 1e-12) -> None:
    """Equal JSON results: integers, strings and structure exactly, floats to ``rel``;
    the run time and the process count may differ."""
    def walk(a, b, where):
        if isinstance(a, dict):
            assert a.keys() == b.keys(), where
            for k in a:
                if (where, k) not in ((".", "seconds"), (".provenance", "processes")):
                    walk(a[k], b[k], f"{where}.{k}".replace("..", "."))
        elif isinstance(a, list):
            assert isinstance(b, list) and len(a) == len(b), where
            for i, (u, v) in enumerate(zip(a, b)):
                walk(u, v, f"{where}[{i}]")
        elif isinstance(a, float) and isinstance(b, float):
            assert abs(a - b) <= rel * max(abs(a), abs(b)), (where, a, b)
        else:
            assert type(a) is type(b) and a == b, (where, a, b)
    walk(single, other, ".")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    """This environment without any torchrun variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1",
            "SHIFTLAB_DIST_TIMEOUT": "60", **extra}


def _ranks(argv: list[str], world: int, cwd: Path) -> list[subprocess.CompletedProcess]:
    """``python -m shiftlab ARGV`` as ranks 0 … world-1 of one run, with the environment
    torchrun gives its workers (one node); each must finish within the timeout."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "shiftlab", *argv], cwd=cwd, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=_env(WORLD_SIZE=str(world), RANK=str(r), LOCAL_RANK=str(r),
                                       LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                                       MASTER_PORT=str(port)))
             for r in range(world)]
    done = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return done


def _torchrun(argv: list[str], nproc: int, cwd: Path) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    return subprocess.run([torchrun, "--standalone", f"--nproc-per-node={nproc}", "-m", "shiftlab",
                           *argv], cwd=cwd, env=_env(), text=True, capture_output=True,
                          timeout=TIMEOUT)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """The first 20 real MNIST test digits and their labels, as an .npz file."""
    from shiftlab.data import load_data
    x, y = load_data("mnist", split="test")
    path = tmp_path_factory.mktemp("digits") / "digits.npz"
    np.savez(path, x=x[:20].numpy(), y=y[:20].numpy())
    return path


def _audit_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["audit", "--model", "lenet-wolf", "--weights", str(WEIGHTS), "--data", str(data),
            "--batch-size", "6", "--shifts=-2:2", "--pairs", "2", "--quiet", "--out", str(out),
            *extra]


# ----------------------------------------------------------------------------- shards
@pytest.mark.parametrize("units", range(0, 9))
@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_blocks_cover_every_unit_once_rank_zero_first(units, size):
    runs = [block(units, r, size) for r in range(size)]
    assert [u for run in runs for u in run] == list(range(units))
    lengths = [len(run) for run in runs]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


class _Indexed(Dataset):
    """Sample i is an image filled with i, label i % 10; records what was read."""

    def __init__(self, n: int):
        self.n, self.read = n, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.read.append(i)
        return torch.full((1, 3, 3), float(i)), i % 10


def _data(kind: str, n: int = 23):
    x = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 1, 3, 3).contiguous()
    y = torch.arange(n) % 10
    if kind == "tensor":
        return (x, y)
    if kind == "loader":
        return DataLoader(_Indexed(n), batch_size=4)
    sizes = [5, 1, 7, 4, 6]                                # any iterable: uneven batches
    bounds = np.cumsum([0] + sizes)
    return [(x[a:b], y[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


@pytest.mark.parametrize("kind", ["tensor", "loader", "iterable"])
@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_shards_hold_every_sample_once_with_its_global_index(kind, world):
    seen = []
    for rank in range(world):
        for start, x, y in shard_batches(_data(kind), 3, rank, world):
            ids = x[:, 0, 0, 0].long().tolist()
            assert ids == list(range(start, start + len(x)))    # the index one process gives
            assert y.tolist() == [i % 10 for i in ids]
            seen += ids
    assert sorted(seen) == list(range(23))                        # no padding, no duplicates


def test_a_loader_shard_reads_only_its_own_samples():
    data = _Indexed(23)
    loader, first, per = loader_shard(DataLoader(data, batch_size=4), 1, 2)
    got = [i for _, x, _ in shard_batches(loader, 4) for i in x[:, 0, 0, 0].long().tolist()]
    assert (first, per) == (12, 4) and got == list(range(12, 23))
    assert sorted(data.read) == list(range(12, 23))


def _collate_doubled(items):
    x, y = torch.utils.data.default_collate(items)
    return 2 * x, y


def test_a_loader_shard_keeps_the_loader_s_workers_and_collation():
    loader = DataLoader(_Indexed(11), batch_size=3, num_workers=2, collate_fn=_collate_doubled)
    sub, first, per = loader_shard(loader, 1, 2)
    assert (sub.num_workers, sub.collate_fn, first, per) == (2, _collate_doubled, 6, 3)
    got = [x[:, 0, 0, 0].tolist() for x, _ in sub]
    assert got == [[12.0, 14.0, 16.0], [18.0, 20.0]]            # samples 6..10, doubled


def test_a_shuffling_loader_is_refused_across_processes_only():
    loader = DataLoader(TensorDataset(torch.rand(8, 1, 4, 4)), batch_size=2, shuffle=True)
    assert loader_shard(loader, 0, 1) is None                   # one process: read as it comes
    with pytest.raises(ShiftlabError, match="shuffle=False"):
        loader_shard(loader, 0, 2)


# ----------------------------------------------------------------------------- merge
CASES = {
    "lenet-circular": ("lenet-wolf", dict(protocol="circular", shifts="x=-2:2", pairs=3), (1, 28, 28)),
    "maxpool-canvas": ("conv-maxpool", dict(protocol="canvas", shifts="x=-3:3", pairs=2), (1, 16, 16)),
    "conv1d-crop": ("conv1d-maxpool", dict(protocol="crop", crop=(24,), shifts="-2:2", pairs=2), (1, 30)),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("world", [2, 3, 6])
def test_shards_merged_in_rank_order_equal_one_process(case, world):
    """6 processes for 4 batches: two ranks get none."""
    name, options, shape = CASES[case]
    torch.manual_seed(0)
    model = create_model(name)
    x, y = torch.rand(22, *shape), torch.randint(0, 10, (22,))
    config = AuditConfig(batch_size=6, **options)
    single = audit(model, (x, y), config).to_dict()
    shards = []
    for rank in range(world):
        engine, dtype, device = _audit_shard(model, (x, y), config, rank, world)
        shards.append(pickle.loads(pickle.dumps(engine)))        # as the exchange sends them
    merged = _merge_shards(shards)
    merged.model = model
    assert merged.counts["images"] == 22 and merged.counts["forwards"] == single["forwards"]
    result = merged.result(dtype, device, world)
    assert_same_result(single, result.to_dict())
    assert result.invariance.pairs == 22 * options["pairs"]


def test_shards_of_different_shapes_do_not_merge():
    model = create_model("conv-circular")
    config = AuditConfig(pairs=0, shifts="-1:1")
    a, *_ = _audit_shard(model, torch.rand(2, 1, 8, 8), config, 0, 1)
    b, *_ = _audit_shard(model, torch.rand(2, 1, 9, 9), config, 0, 1)
    with pytest.raises(ShiftlabError, match="all inputs must have one shape"):
        _merge_shards([a, b])


# ----------------------------------------------------------------------------- real processes
@pytest.mark.slow
def test_torchrun_two_processes_write_the_result_of_one(digits, tmp_path, capsys):
    assert main(_audit_args(digits, tmp_path / "one.json")) == 0
    capsys.readouterr()
    run = _torchrun(_audit_args(digits, tmp_path / "two.json"), 2, tmp_path)
    assert run.returncode == 0, run.stderr
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["provenance"]["processes"] == 2 and one["provenance"]["processes"] == 1
    assert_same_result(one, two)
    assert two["provenance"]["n_images"] == 20 and two["invariance"]["pairs"] == 40
    assert run.stdout.count("wrote ") == 1                        # rank 0 alone prints
    assert "error" not in run.stderr and "Traceback" not in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.json", "two.json"]  # no temp files


@pytest.mark.slow
def test_torchrun_streams_an_image_folder_in_exact_shards(tmp_path, capsys):
    """Each rank decodes only its own batches of a folder of real photos (with a corrupt file
    skipped); the JSON, skipped files included, equals one process's."""
    from PIL import Image
    from sklearn.datasets import load_sample_images
    photos = load_sample_images().images
    for k in range(11):
        folder = tmp_path / "photos" / ("china" if k % 2 else "flower")
        folder.mkdir(parents=True, exist_ok=True)
        top, left = 20 * k, 30 * k
        Image.fromarray(photos[k % 2][top:top + 40 + k, left:left + 36]).save(folder / f"{k:02d}.png")
    (tmp_path / "photos" / "china" / "99-bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    argv = ["audit", "--model", "lenet-wolf-gap", "--data", f"folder:{tmp_path / 'photos'}",
            "--resize", "28", "--center-crop", "28", "--skip-bad", "--batch-size", "4",
            "--shifts=-1:1", "--pairs", "2", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "one.json")]) == 0
    capsys.readouterr()
    run = _torchrun([*argv, "--out", str(tmp_path / "two.json")], 2, tmp_path)
    assert run.returncode == 0, run.stderr
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["provenance"]["data"].pop("processes") == 2
    assert_same_result(one, two)
    assert two["provenance"]["n_images"] == 11 and two["provenance"]["input_shape"] == [3, 28, 28]
    assert [s["file"].rsplit("/", 1)[-1] for s in two["provenance"]["data"]["skipped"]] == ["99-bad.png"]


def test_one_process_group_of_one_gives_the_plain_result(digits, tmp_path, monkeypatch, capsys):
    """WORLD_SIZE=1 as torchrun --nproc-per-node 1 sets it: a real gloo group of one."""
    assert main(_audit_args(digits, tmp_path / "plain.json")) == 0
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    assert main(_audit_args(digits, tmp_path / "group.json")) == 0
    assert current() is None                                      # the group is left again
    capsys.readouterr()
    assert_same_result(json.loads((tmp_path / "plain.json").read_text()),
                       json.loads((tmp_path / "group.json").read_text()))


@pytest.mark.slow
def test_a_label_only_rank_1_sees_stops_both_ranks_with_one_line_each(digits, tmp_path, capsys):
    data = dict(np.load(digits))
    data["y"] = data["y"].copy()
    data["y"][-1] = 42                                            # in rank 1's batches only
    bad = tmp_path / "bad.npz"
    np.savez(bad, **data)
    out = tmp_path / "new" / "r.json"
    assert main(_audit_args(bad, out)) == 2                       # one process says it so
    alone = capsys.readouterr().err.strip()
    assert alone.startswith("shiftlab audit: error: labels must be class indices in [0, 9]")
    rank0, rank1 = _ranks(_audit_args(bad, out), 2, tmp_path)
    assert (rank0.returncode, rank1.returncode) == (2, 2), (rank0.stderr, rank1.stderr)
    assert rank1.stderr.splitlines() == [alone]
    assert rank0.stderr.splitlines() == [
        "shiftlab audit: error: rank 1 of 2 failed: " + alone.split(": error: ", 1)[1]
        + "; nothing was written"]
    assert rank0.stdout == rank1.stdout == ""
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_a_rank_that_crashes_stops_torchrun_without_a_result_or_a_hang(digits, tmp_path):
    model = tmp_path / "crashy.py"
    model.write_text(
        "import os\nimport torch\n\n\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1, padding_mode='circular'),\n"
        "                              torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),\n"
        "                              torch.nn.Flatten(), torch.nn.Linear(4, 10))\n"
        "    def crash_on_bright(module, args):\n"
        "        if float(args[0].amax()) > 5:\n"
        "            os._exit(3)                     # a hard crash: no exception, no goodbye\n"
        "    net.register_forward_pre_hook(crash_on_bright)\n"
        "    return net\n")
    data = dict(np.load(digits))
    data["x"] = data["x"].copy()
    data["x"][-1] = 9.0                                           # rank 1's last image
    crash = tmp_path / "crash.npz"
    np.savez(crash, **data)
    argv = _audit_args(crash, tmp_path / "r.json")
    argv[argv.index("lenet-wolf")] = f"{model}:build"
    del argv[argv.index("--weights"):argv.index("--weights") + 2]
    run = _torchrun(argv, 2, tmp_path)
    assert run.returncode != 0
    assert not (tmp_path / "r.json").exists()
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    ours = [line for line in run.stderr.splitlines() if line.startswith("shiftlab audit:")]
    assert len(ours) <= 1 and all("lost contact" in line for line in ours), run.stderr
    assert 'shiftlab/' not in run.stderr                          # no traceback of ours


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps", "gpu"])
def test_a_device_a_rank_lacks_fails_before_any_rendezvous(device, digits, tmp_path, monkeypatch, capsys):
    """Rank 1 of 2 whose peer never comes: it must fail on the device at once, not wait."""
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has a GPU")
    for name, value in dict(WORLD_SIZE="2", RANK="1", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(_free_port()), SHIFTLAB_DIST_TIMEOUT="5").items():
        monkeypatch.setenv(name, value)
    assert main(_audit_args(digits, tmp_path / "new" / "r.json", "--device", device)) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("shiftlab audit: error: "), lines
    assert ("unknown device" if device == "gpu" else "is not available") in lines[0]
    assert current() is None and not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- Python API
def _api_worker(rank: int, world: int, port: int, folder: str) -> None:
    """One rank: the audits of :func:`test_the_python_api_shards_and_merges_in_a_group`."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist
    dist.init_process_group("gloo", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(17, 1, 16, 16, generator=g), torch.randint(0, 10, (17,), generator=g)
    outcome = {}
    torch.manual_seed(0)
    model = create_model("conv-maxpool")
    outcome["result"] = audit(model, (x, y), batch_size=4, pairs=2, shifts="-2:2").to_dict()
    loader = DataLoader(TensorDataset(x, y), batch_size=3)
    outcome["loader"] = audit(model, loader, batch_size=4, pairs=2, shifts="-2:2").to_dict()
    torch.manual_seed(rank)                                      # a different model per rank
    try:
        audit(create_model("conv-maxpool"), (x, y), pairs=0, shifts="-1:1")
    except ShiftlabError as err:
        outcome["models"] = (type(err).__name__, str(err), getattr(err, "quiet", False))
    bad = y.clone()
    bad[-1] = 99                                                  # the last rank's batch
    try:
        audit(model, (x, bad), batch_size=4, pairs=0, shifts="-1:1")
    except ShiftlabError as err:
        outcome["label"] = (type(err).__name__, str(err), getattr(err, "quiet", False))
    outcome["again"] = audit(model, x[:5], pairs=0, shifts="-1:1").provenance.n_images
    if rank == 0:                                                 # alone, the others elsewhere
        outcome["alone"] = audit(model, (x, y), batch_size=4, pairs=2, shifts="-2:2",
                                 shard=False).to_dict()
    dist.destroy_process_group()
    Path(folder, f"rank{rank}.pkl").write_bytes(pickle.dumps(outcome))


@pytest.mark.slow
def test_the_python_api_shards_and_merges_in_a_group(tmp_path):
    world = 2
    torch.manual_seed(0)
    model = create_model("conv-maxpool")
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(17, 1, 16, 16, generator=g), torch.randint(0, 10, (17,), generator=g)
    single = audit(model, (x, y), batch_size=4, pairs=2, shifts="-2:2").to_dict()
    loader = DataLoader(TensorDataset(x, y), batch_size=3)     # other batches: its own baseline
    single_loader = audit(model, loader, batch_size=4, pairs=2, shifts="-2:2").to_dict()
    port = _free_port()
    torch.multiprocessing.start_processes(_api_worker, args=(world, port, str(tmp_path)),
                                          nprocs=world, start_method="spawn")
    got = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(world)]
    for rank, outcome in enumerate(got):
        assert outcome["result"]["provenance"]["processes"] == world
        assert_same_result(single, outcome["result"])            # every rank: the merged result
        assert_same_result(single_loader, outcome["loader"])     # a DataLoader, sharded by Subset
        kind, message, quiet = outcome["models"]
        assert "different models" in message and quiet == (rank != 0)
        kind, message, quiet = outcome["label"]
        if rank == world - 1:                                     # its own error, as one process
            assert kind == "ShiftlabError" and message.startswith("labels must be class indices")
        else:
            assert kind == PeerFailed.__name__ and quiet == (rank != 0)
            assert message.startswith(f"rank {world - 1} of {world} failed: labels must be")
        assert outcome["again"] == 5                              # the group still works
    assert_same_result(single, got[0]["alone"])                  # shard=False: all data, alone
    assert got[0]["alone"]["provenance"]["processes"] == 1
