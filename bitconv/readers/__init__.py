"""Readers: resolve what the user named (Hub id, folder, GGUF file, builtin model) into a
`Checkpoint` of lazily loaded tensors with canonical GGUF names."""

from __future__ import annotations

from pathlib import Path

from ..errors import SourceNotFoundError
from ..model import SourceInfo
from .checkpoint import Checkpoint, GGUFReadOptions
from .hub import looks_like_repo_id

BUILTIN_PREFIX = "builtin:"
DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def builtin_models() -> list[str]:
    return sorted(p.name for p in DATA_DIR.iterdir() if (p / "config.json").exists()) if DATA_DIR.exists() else []


def open_source(source: str | Path, revision: str | None = None, token: str | None = None, *,
                gguf_options: GGUFReadOptions | None = None) -> Checkpoint:
    """Open SOURCE: `builtin:NAME`, a local folder or .gguf file, or a Hub repo id.

    `gguf_options` tell how to read a GGUF another tool wrote (I2_S code order, TL tiles)."""
    text = str(source)
    if text.startswith(BUILTIN_PREFIX):
        name = text[len(BUILTIN_PREFIX):]
        folder = DATA_DIR / name
        if not (folder / "config.json").exists():
            raise SourceNotFoundError(
                f"no builtin model {name!r}", hint=f"builtin models: {', '.join(builtin_models()) or 'none'}"
            )
        from .hf_folder import open_folder

        return open_folder(folder, SourceInfo("builtin", text, folder))
    path = Path(text).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix == ".gguf":
                from .gguf_file import open_gguf

                return open_gguf(path, SourceInfo("gguf", text, path), gguf_options)
            raise SourceNotFoundError(f"{path}: a source is a model folder, a .gguf file or a Hub repo id")
        from .hf_folder import open_folder

        return open_folder(path, SourceInfo("folder", text, path))
    if looks_like_repo_id(text) and not text.startswith((".", "/", "~")):
        from .hf_folder import open_folder
        from .hub import download

        folder, commit = download(text, revision=revision, token=token)
        return open_folder(folder, SourceInfo("hub", text, folder, revision=revision, commit=commit))
    raise SourceNotFoundError(f"{text}: no such file or folder, and not a Hub repo id (org/name)")


__all__ = ["Checkpoint", "GGUFReadOptions", "open_source", "builtin_models"]
