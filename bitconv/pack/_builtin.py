"""Imports every built-in layout module so each registers itself; add a layout here."""

from . import tq  # noqa: F401
from . import hf2bit  # noqa: F401

try:  # bitnet.cpp layouts
    from . import i2s, tl1, tl2  # noqa: F401
except ImportError:  # pragma: no cover - only while those modules are being written
    pass
