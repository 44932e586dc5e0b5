"""bitconv: turn ternary (BitNet b1.58) checkpoints into files real inference engines run."""

__version__ = "0.1.0"

__all__ = ["__version__"]
