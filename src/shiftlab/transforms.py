"""Moved to :mod:`shiftlab.actions` (kept so old imports keep working)."""
from .actions import *  # noqa: F401,F403
from .actions import __all__  # noqa: F401
