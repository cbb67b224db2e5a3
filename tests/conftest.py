import sys

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _forget_user_modules():
    """``load_model`` registers ``path.py`` files as ``shiftlab_user_*`` modules; drop them."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("shiftlab_user_"):
            del sys.modules[name]
