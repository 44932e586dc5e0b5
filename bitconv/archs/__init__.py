"""Architecture registry; importing this package registers every built-in family."""

from . import bitnet, llama, qwen3  # noqa: F401
from .base import (
    BITNET_CPP,
    LLAMA_CPP,
    Architecture,
    architecture_for,
    register,
    supported_architectures,
)

__all__ = [
    "Architecture", "architecture_for", "register", "supported_architectures", "BITNET_CPP", "LLAMA_CPP",
]
