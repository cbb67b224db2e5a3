"""Real inputs for the pretrained models of this folder, written as array files that
``shiftlab audit --data`` reads:

* ``crepe-frames.npy`` — ``N×1×1024`` float32 frames of real speech for CREPE: shiftlab's
  spoken digits (espeak-ng, 8 kHz) resampled to CREPE's 16 kHz, the loudest 1,024 samples
  of each clip, each frame normalised to zero mean and unit deviation as torchcrepe does;
* ``faces-64.npy``, ``faces-24.npy``, ``faces-48.npy`` — ``N×3×S×S`` uint8 crops of
  scikit-image's ``astronaut`` photo (a face; public domain, NASA) at several scales and
  offsets, for MTCNN: 64 px of face and context for P-Net, 24 px and 48 px face boxes for
  R-Net and O-Net.

``python examples/pretrained/data.py --dest out/pretrained`` (after ``make``).
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from shiftlab.data.audio import resample
from shiftlab.data.speech import spoken_digits

CREPE_RATE, FRAME = 16000, 1024
FACE = (20, 170, 180, 330)          # top, left, bottom, right of the astronaut's face (512 px)


def crepe_frames(n: int = 64, step: int = 20) -> np.ndarray:
    """The loudest 1,024-sample frame at 16 kHz of ``n`` spoken digits (every ``step``-th
    clip: all ten words, several voices)."""
    clips = spoken_digits(log=lambda *_: None)
    wave = clips.waveforms[::step][:n].to(torch.float64)
    wave = resample(wave, clips.rate, CREPE_RATE)
    energy = torch.nn.functional.avg_pool1d(wave[:, None] ** 2, FRAME, 64)[:, 0]
    start = energy.argmax(dim=1) * 64
    frames = torch.stack([w[s:s + FRAME] for w, s in zip(wave, start.tolist())])
    frames = frames - frames.mean(dim=1, keepdim=True)
    frames = frames / frames.std(dim=1, keepdim=True).clamp_min(1e-10)
    return frames[:, None].float().numpy()


def faces(n: int = 32, size: int = 64, seed: int = 0, enlarge=(1.0, 2.0), move=0.25) -> np.ndarray:
    """``n`` crops of ``size``×``size`` px around the astronaut's face: the face box,
    enlarged by a random factor in ``enlarge`` and moved by up to ``move`` of its side."""
    from PIL import Image
    from skimage.data import astronaut
    image = Image.fromarray(astronaut())
    rng = np.random.default_rng(seed)
    top, left, bottom, right = FACE
    side, cy, cx = bottom - top, (top + bottom) / 2, (left + right) / 2
    crops = []
    for _ in range(n):
        s = side * rng.uniform(*enlarge)
        y, x = cy + rng.uniform(-move, move) * side, cx + rng.uniform(-move, move) * side
        y, x = np.clip([y, x], s / 2, image.height - s / 2)      # the box stays inside
        box = (x - s / 2, y - s / 2, x + s / 2, y + s / 2)
        crops.append(np.asarray(image.resize((size, size), Image.BICUBIC, box=box)))
    return np.stack(crops).transpose(0, 3, 1, 2).copy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", default="out/pretrained")
    args = parser.parse_args()
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    np.save(dest / "crepe-frames.npy", crepe_frames())
    np.save(dest / "faces-64.npy", faces(size=64))                # P-Net: face and context
    for size in (24, 48):                                           # R-, O-Net: a face box
        np.save(dest / f"faces-{size}.npy", faces(size=size, enlarge=(1.0, 1.15), move=0.08))
    print(f"wrote {dest}/crepe-frames.npy and faces-{{64,24,48}}.npy")


if __name__ == "__main__":
    main()
