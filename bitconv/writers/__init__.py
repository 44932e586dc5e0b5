"""Writers: GGUF (through the `gguf` package) and packed safetensors folders."""

from .base import Writer, get_writer, writer_formats

__all__ = ["Writer", "get_writer", "writer_formats"]
