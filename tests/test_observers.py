"""Observers: a new metric is one class. A toy observer added through
``audit(observers=[...])`` sees every probed map of every row, merges over shards with no
merge code of its own (in process and under a real 2-process gloo group) and lands in
``result.extra``; the built-in merge refuses observers that do not match."""
from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import pytest
import torch

from shiftlab import AuditConfig, ShiftlabError, audit
from shiftlab.audit import _audit_shard, _merge_shards
from shiftlab.metrics import Counts, StreamingMetric
from shiftlab.models import create_model
from shiftlab.observers import Observer
from shiftlab.probe import OUTPUT


class MapTally(StreamingMetric):
    """Per grid shift: rows seen and the sum of the output's largest logit."""

    def __init__(self, k: int):
        super().__init__()
        self.add_state("rows", torch.zeros(k, dtype=torch.int64), "sum")
        self.add_state("top", torch.zeros(k, dtype=torch.float64), "sum")
        self.add_state("peak", torch.full((k,), -float("inf"), dtype=torch.float64), "max")


class Toy(Observer):
    """Counts the probed maps it is handed, per layer, and tallies the output per shift."""

    maps = True

    def setup(self, plan):
        super().setup(plan)
        self.tally = MapTally(len(plan.grid))
        self.per_layer = {layer.name: Counts("maps") for layer in plan.layers}
        self.images = Counts("n")

    def on_map(self, name, out, chunk):
        self.per_layer[name].add(maps=sum(b - a for a, b, _, _ in chunk.runs))
        if name == OUTPUT:
            for a, b, k, _ in chunk.runs:
                top = out[a:b].max(-1).values.double()
                self.tally.rows[k] += b - a
                self.tally.top[k] += top.sum()
                self.tally.peak[k] = torch.maximum(self.tally.peak[k], top.max())

    def batch(self, batch):
        self.images.add(n=batch.n)

    def contribute(self, parts):
        parts.setdefault("extra", {})["toy"] = {
            "rows": self.tally.rows.tolist(), "top": self.tally.top.tolist(),
            "peak": self.tally.peak.tolist(), "images": self.images["n"],
            "maps": {name: c["maps"] for name, c in self.per_layer.items()}}


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.rand(17, 1, 16, 16, generator=g), torch.randint(0, 10, (17,), generator=g)


def _check_toy(toy: dict, single: dict, n: int) -> None:
    k = len(single["shifts"])
    zero = single["shifts"].index([0.0, 0.0])
    assert toy["images"] == n
    assert toy["rows"] == [0 if i == zero else n for i in range(k)]   # every non-zero shift, once
    assert set(toy["maps"].values()) == {n * (k - 1)}                   # every probed map too


def test_a_toy_observer_sees_every_row_and_lands_in_the_result():
    x, y = _data()
    torch.manual_seed(0)
    r = audit(create_model("conv-maxpool"), (x, y), batch_size=5, pairs=2, shifts="-2:2",
              observers=[Toy])
    _check_toy(r.extra["toy"], r.to_dict(), 17)
    assert audit(create_model("conv-maxpool"), (x, y), shifts="-1:1", pairs=0).extra is None


@pytest.mark.parametrize("world", [2, 3])
def test_a_toy_observer_merges_over_shards_with_no_merge_code(world):
    x, y = _data()
    torch.manual_seed(0)
    model = create_model("conv-maxpool")
    config = AuditConfig(batch_size=4, pairs=2, shifts="-2:2").check()
    single = audit(model, (x, y), config, observers=[Toy]).to_dict()
    shards = [pickle.loads(pickle.dumps(_audit_shard(model, (x, y), config, r, world, [Toy])[0]))
              for r in range(world)]
    merged = _merge_shards(shards)
    merged.model = model
    got = merged.result(torch.float32, torch.device("cpu"), world).to_dict()
    assert got["extra"]["toy"]["rows"] == single["extra"]["toy"]["rows"]
    for key in ("top", "peak"):
        assert got["extra"]["toy"][key] == pytest.approx(single["extra"]["toy"][key], rel=1e-12)
    assert got["extra"]["toy"]["maps"] == single["extra"]["toy"]["maps"]


def test_observers_that_do_not_match_refuse_to_merge():
    class Other(Toy):
        pass
    x, y = _data()
    config = AuditConfig(pairs=0, shifts="-1:1").check()
    model = create_model("conv-maxpool")
    a = _audit_shard(model, (x[:4], y[:4]), config, 0, 1, [Toy])[0]
    b = _audit_shard(model, (x[4:], y[4:]), config, 0, 1, [Other])[0]
    with pytest.raises(ShiftlabError, match="cannot merge Other into Toy"):
        a.merge(b)


# ----------------------------------------------------------------------------- real processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist
    dist.init_process_group("gloo", rank=rank, world_size=world)
    x, y = _data()
    torch.manual_seed(0)
    result = audit(create_model("conv-maxpool"), (x, y), batch_size=4, pairs=2,
                   shifts="-2:2", observers=[Toy]).to_dict()
    dist.destroy_process_group()
    Path(folder, f"rank{rank}.pkl").write_bytes(pickle.dumps(result))


@pytest.mark.slow
def test_a_toy_observer_merges_under_a_real_two_process_group(tmp_path):
    x, y = _data()
    torch.manual_seed(0)
    single = audit(create_model("conv-maxpool"), (x, y), batch_size=4, pairs=2, shifts="-2:2",
                   observers=[Toy]).to_dict()
    torch.multiprocessing.start_processes(_worker, args=(2, _free_port(), str(tmp_path)),
                                          nprocs=2, start_method="spawn")
    for rank in range(2):
        got = pickle.loads((tmp_path / f"rank{rank}.pkl").read_bytes())
        assert got["provenance"]["processes"] == 2 and got["provenance"]["n_images"] == 17
        toy = got["extra"]["toy"]
        _check_toy(toy, single, 17)
        assert toy["top"] == pytest.approx(single["extra"]["toy"]["top"], rel=1e-12)
        assert toy["peak"] == pytest.approx(single["extra"]["toy"]["peak"], rel=1e-12)
        assert got["invariance"]["consistency"] == single["invariance"]["consistency"]
