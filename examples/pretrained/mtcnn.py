"""facenet-pytorch's pretrained MTCNN face detector (P-, R- and O-Net), as a user would
audit it: ``shiftlab audit --model examples/pretrained/mtcnn.py:pnet --data images:...``

MTCNN (Zhang et al., IEEE SPL 2016) is a cascade of three small CNNs; facenet-pytorch (Tim
Esler) ships their weights inside its wheel. Its package imports torchvision for the
detection utilities, so only ``facenet_pytorch/models/mtcnn.py`` is loaded here, with the two
names it imports from there (unused by the networks) left empty. Install with
``pip install --no-deps facenet-pytorch``.

Each net returns ``(box regression, face probabilities)`` (O-Net adds landmarks); the
factories here return the face probabilities, what the detector thresholds: P-Net's is a
dense ``2×H'×W'`` map (fully convolutional, any input of 12 px or more), R-Net's and
O-Net's a ``2``-vector for a 24×24 or 48×48 crop.
"""
import importlib.util
import sys
import types
from pathlib import Path

import torch
from torch import nn


def _package_dir() -> Path:
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("facenet-pytorch is not installed: "
                                  "pip install --no-deps facenet-pytorch")
    return Path(next(iter(spec.submodule_search_locations)))


def _mtcnn_module():
    """``facenet_pytorch/models/mtcnn.py`` loaded alone under a private package name, so
    its one relative import (``.utils.detect_face``, used only by the MTCNN wrapper) gets an
    empty stand-in and the real ``facenet_pytorch`` stays untouched."""
    name = "shiftlab_facenet.mtcnn"
    if name in sys.modules:
        return sys.modules[name]
    path = _package_dir() / "models" / "mtcnn.py"
    for pkg in ("shiftlab_facenet", "shiftlab_facenet.utils"):
        sys.modules.setdefault(pkg, types.ModuleType(pkg)).__path__ = []
    detect = types.ModuleType("shiftlab_facenet.utils.detect_face")
    detect.detect_face = detect.extract_face = None
    sys.modules["shiftlab_facenet.utils.detect_face"] = detect
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


class FaceProbability(nn.Module):
    """RGB images in [0, 1] in, the wrapped net's face probabilities out (element 1 of its
    tuple), after MTCNN's own input scaling ``(255·x − 127.5) / 128``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x * 255 - 127.5) * 0.0078125)[1]


def _pretrained(cls_name: str) -> nn.Module:
    net = getattr(_mtcnn_module(), cls_name)(pretrained=False)
    weights = _package_dir() / "data" / f"{cls_name[:4].lower()}.pt"
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return FaceProbability(net).eval()


def pnet() -> nn.Module:
    """P-Net: fully convolutional proposal net, face-probability map at stride 2."""
    return _pretrained("PNet")


def rnet() -> nn.Module:
    """R-Net: refines 24×24 crops."""
    return _pretrained("RNet")


def onet() -> nn.Module:
    """O-Net: 48×48 crops; boxes, probabilities and five landmarks."""
    return _pretrained("ONet")
