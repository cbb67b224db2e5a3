"""Training: it learns, it resumes bitwise, it refuses damaged or foreign checkpoints."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from shiftlab import ShiftlabError
from shiftlab.data import load_data
from shiftlab.train import CHECKPOINT, RECORD, WEIGHTS, TrainConfig, train


@pytest.fixture(scope="module")
def small_mnist():
    x, y = load_data("mnist:train")
    xt, yt = load_data("mnist:test")
    return (x[:3000], y[:3000]), (xt[:1000], yt[:1000])


def test_short_training_beats_chance_by_far(tmp_path, small_mnist):
    cfg = TrainConfig(model="lenet-wolf", epochs=2, batch_size=64, seed=1)
    record = train(cfg, tmp_path, progress=False, data=small_mnist, log=lambda *_: None)
    assert record.test_accuracy > 0.80                      # chance is 0.10
    saved = json.loads((tmp_path / RECORD).read_text())
    assert saved["test_accuracy"] == record.test_accuracy and len(saved["epochs"]) == 2
    assert saved["config"]["model"] == "lenet-wolf"
    assert set(load_file(str(tmp_path / WEIGHTS))) == {
        k for k in __import__("shiftlab").models.create_model("lenet-wolf").state_dict()}


def test_resumed_training_equals_uninterrupted(tmp_path, small_mnist):
    data = ((small_mnist[0][0][:600], small_mnist[0][1][:600]), small_mnist[1])
    quiet = dict(progress=False, data=data, log=lambda *_: None)
    cfg = dict(model="lenet-wolf", batch_size=50, seed=3, augment="shift:2")
    train(TrainConfig(epochs=3, **cfg), tmp_path / "straight", **quiet)

    class Stop(Exception):
        pass

    def stop_after_first_epoch(message):
        if message.startswith("epoch 1/3"):                 # logged after the checkpoint
            raise Stop
    with pytest.raises(Stop):
        train(TrainConfig(epochs=3, **cfg), tmp_path / "split", progress=False, data=data,
              log=stop_after_first_epoch)
    record = train(TrainConfig(epochs=3, **cfg), tmp_path / "split", resume=True, **quiet)
    assert record.resumed_from_epoch == 1 and len(record.epochs) == 3
    a = load_file(str(tmp_path / "straight" / WEIGHTS))
    b = load_file(str(tmp_path / "split" / WEIGHTS))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_kill_9_then_resume_equals_uninterrupted(tmp_path):
    """A real interruption: the CLI is killed with SIGKILL after its first checkpoint."""
    args = [sys.executable, "-m", "shiftlab", "train", "--model", "lenet-wolf", "--data",
            "digits", "--canvas", "28", "--epochs", "4", "--seed", "5", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    subprocess.run(args + ["--out", str(tmp_path / "straight")], check=True, env=env,
                   capture_output=True)
    proc = subprocess.Popen(args + ["--out", str(tmp_path / "killed")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / CHECKPOINT
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (tmp_path / "killed" / WEIGHTS).exists()
    done = subprocess.run(args + ["--out", str(tmp_path / "killed"), "--resume"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout
    a = load_file(str(tmp_path / "straight" / WEIGHTS))
    b = load_file(str(tmp_path / "killed" / WEIGHTS))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_damaged_or_foreign_checkpoints_are_refused(tmp_path, small_mnist):
    quiet = dict(progress=False, data=small_mnist, log=lambda *_: None)
    (tmp_path / CHECKPOINT).write_bytes(b"\x00garbage")
    with pytest.raises(ShiftlabError, match="not a readable checkpoint"):
        train(TrainConfig(epochs=1, limit=64), tmp_path, resume=True, **quiet)
    (tmp_path / CHECKPOINT).unlink()
    train(TrainConfig(epochs=1, limit=64), tmp_path, **quiet)
    with pytest.raises(ShiftlabError, match="other settings"):
        train(TrainConfig(epochs=2, limit=64, lr=0.01), tmp_path, resume=True, **quiet)


@pytest.mark.parametrize("kwargs,match", [
    (dict(augment="rotate:3"), "unknown augmentation"),
    (dict(epochs=0), "epochs"),
    (dict(lr=-1.0), "lr"),
])
def test_bad_training_settings(tmp_path, small_mnist, kwargs, match):
    with pytest.raises(ShiftlabError, match=match):
        train(TrainConfig(**kwargs), tmp_path, progress=False, data=small_mnist)


def test_init_loads_matching_tensors_and_reinitialises_the_rest(tmp_path, small_mnist):
    """Fine-tuning on a 38x38 canvas from a 28x28 run: the convs carry over, the head
    (sized from the input) starts fresh."""
    data = ((small_mnist[0][0][:200], small_mnist[0][1][:200]), small_mnist[1])
    quiet = dict(progress=False, log=lambda *_: None)
    train(TrainConfig(model="lenet-wolf", epochs=1, seed=0), tmp_path / "base", data=data, **quiet)
    base = load_file(str(tmp_path / "base" / WEIGHTS))
    messages = []
    cfg = TrainConfig(model="lenet-wolf", epochs=1, seed=0, canvas=38, limit=1,
                      lr=1e-12, schedule="constant", init=str(tmp_path / "base" / WEIGHTS))
    train(cfg, tmp_path / "tuned", data=data, progress=False, log=messages.append)
    tuned = load_file(str(tmp_path / "tuned" / WEIGHTS))
    convs = [k for k in base if k.startswith("features.")]
    assert convs and all(torch.allclose(base[k], tuned[k], atol=1e-9) for k in convs)
    assert tuned["head.weight"].shape != base["head.weight"].shape
    assert any("1 newly initialised (head.weight)" in m for m in messages), messages


def test_init_from_an_unrelated_checkpoint_is_refused(tmp_path, small_mnist):
    torch.save({"other.weight": torch.zeros(3)}, tmp_path / "w.pt")
    cfg = TrainConfig(model="lenet-wolf", epochs=1, init=str(tmp_path / "w.pt"))
    with pytest.raises(ShiftlabError, match="no tensor in .* matches the model"):
        train(cfg, tmp_path / "out", data=small_mnist, progress=False, log=lambda *_: None)
