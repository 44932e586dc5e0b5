"""Imports every built-in layout module so each registers itself; add a layout here."""

from . import ct_int2, hf2bit, i2s, mlx_affine, q2_0, tl1, tl2, tq  # noqa: F401
