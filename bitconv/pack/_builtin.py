"""Imports every built-in layout module so each registers itself; add a layout here."""

from . import hf2bit, i2s, q2_0, tl1, tl2, tq  # noqa: F401
