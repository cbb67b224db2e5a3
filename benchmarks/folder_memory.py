"""Peak memory of ``shiftlab audit`` on an image folder of 2,000 images against 200.

What is measured: the maximum resident set size (``ru_maxrss`` from ``os.wait4``) of a
fresh ``python -m shiftlab audit`` process streaming ``folder:DIR`` (resize, center crop,
a small RGB model, the default layers), for a folder of ``--small`` and one of ``--large``
images. The folders are cut from real photos (scikit-learn's china.jpg and flower.jpg,
and scikit-image's astronaut, coffee, chelsea, rocket, camera … when it is installed):
random windows of random sizes, randomly rescaled, saved as JPEG (and every fifth as
PNG), so sizes, formats and grey/colour modes mix as in a real folder. Runs alternate
between the two folders (``--repeats`` each) so they share the machine's noise; the
largest peak of each is reported, with their ratio. Target: ratio <= 1.15 (memory stays
flat as the data grows: a few batches are held, never the folder).

With ``--workers N`` the peak is that of the largest process (the main one or a worker),
as ``wait4`` reports it. ``--in-memory`` measures, as a control, the same audit of the same
preprocessed images loaded whole first (``load_image_folder``), whose peak does grow.

    python benchmarks/folder_memory.py                  # 200 vs 2,000 images, 0 workers
    python benchmarks/folder_memory.py --in-memory      # the control
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"

MODEL = """from shiftlab.models import create_model


def build():
    return create_model("conv-maxpool", in_channels=3)
"""


def real_photos() -> list[np.ndarray]:
    """The photos shipped with scikit-learn (always) and scikit-image (when installed)."""
    from sklearn.datasets import load_sample_images
    photos = list(load_sample_images().images)
    try:
        import skimage.data as data
        for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry"):
            photos.append(getattr(data, name)())
    except ImportError:
        pass
    return photos


def build_folder(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` images in ``root/<class>/``: seeded random windows of the photos (sides 48 to
    400 px), rescaled by 0.5 to 1.5, as JPEG (every fifth as PNG)."""
    from PIL import Image
    photos, rng = real_photos(), np.random.default_rng(seed)
    for k in range(n):
        photo = photos[k % len(photos)]
        h, w = (int(rng.integers(48, min(400, side) + 1)) for side in photo.shape[:2])
        y, x = int(rng.integers(0, photo.shape[0] - h + 1)), int(rng.integers(0, photo.shape[1] - w + 1))
        image = Image.fromarray(photo[y:y + h, x:x + w])
        scale = rng.uniform(0.5, 1.5)
        image = image.resize((max(8, round(w * scale)), max(8, round(h * scale))), Image.Resampling.BILINEAR)
        folder = root / f"class{k % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        if k % 5 == 4:
            image.save(folder / f"{k:05d}.png")
        else:
            image.save(folder / f"{k:05d}.jpg", quality=90)
    return root


IN_MEMORY = """import sys
import torch
from shiftlab import audit
from shiftlab.data import Preprocess, load_image_folder
sys.path.insert(0, sys.argv[1])
from model import build
size, batch = int(sys.argv[3]), int(sys.argv[4])
x, y, _ = load_image_folder(sys.argv[2], Preprocess(resize=size, center_crop=(size, size)))
audit(build(), (x, y), shifts="0:1", pairs=1, batch_size=batch)
"""


def peak_rss_mb(folder: Path, tmp: Path, args) -> float:
    """Peak resident memory (MB) of one ``shiftlab audit`` run over ``folder``."""
    command = [sys.executable, "-m", "shiftlab", "audit", "--model", f"{tmp / 'model.py'}:build",
               "--data", f"folder:{folder}", "--resize", str(args.size), "--center-crop",
               f"{args.size}x{args.size}", "--shifts=0:1", "--pairs", "1", "--batch-size",
               str(args.batch_size), "--workers", str(args.workers), "--quiet",
               "--out", str(tmp / "audit.json")]
    if args.in_memory:
        command = [sys.executable, "-c", IN_MEMORY, str(tmp), str(folder), str(args.size),
                   str(args.batch_size)]
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"shiftlab audit failed ({process.returncode}): {stderr.decode()[-2000:]}")
    return usage.ru_maxrss / 1024                      # kB on Linux


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=200)
    p.add_argument("--large", type=int, default=2000)
    p.add_argument("--size", type=int, default=64, help="--resize and --center-crop side")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--in-memory", action="store_true",
                   help="the control: load the preprocessed folder whole, then audit it")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        (tmp / "model.py").write_text(MODEL)
        folders = {n: build_folder(tmp / f"photos-{n}", n) for n in (args.small, args.large)}
        peaks: dict[int, list[float]] = {n: [] for n in folders}
        for _ in range(args.repeats):
            for n, folder in folders.items():                       # interleaved
                peaks[n].append(peak_rss_mb(folder, tmp, args))
                print(f"  {n:>6,} images: peak RSS {peaks[n][-1]:7.1f} MB", flush=True)
    small, large = max(peaks[args.small]), max(peaks[args.large])
    ratio = large / small
    how = "loaded whole (the control)" if args.in_memory else f"folder stream, --workers {args.workers}"
    print(f"peak RSS of shiftlab audit ({how}, --resize {args.size} --center-crop "
          f"{args.size}x{args.size}, --batch-size {args.batch_size}):")
    print(f"  {args.small:,} images: {small:.1f} MB")
    print(f"  {args.large:,} images: {large:.1f} MB")
    print(f"  ratio {ratio:.3f} (target <= 1.15: {'met' if ratio <= 1.15 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
