"""Packers: one module per layout, all behind the `Layout` interface in base.py."""

from .base import Layout, get_layout, layout_class, layout_for_ggml_type, layout_names

__all__ = ["Layout", "get_layout", "layout_class", "layout_for_ggml_type", "layout_names"]
