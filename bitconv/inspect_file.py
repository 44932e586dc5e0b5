"""`inspect`: what is inside a GGUF file or a safetensors file/folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import CorruptFileError, InputError, SourceNotFoundError


def inspect_path(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise SourceNotFoundError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix == ".gguf":
        return _inspect_gguf(path)
    if path.is_dir() or path.suffix == ".safetensors":
        return _inspect_safetensors(path)
    raise InputError(f"{path}: inspect reads .gguf files and safetensors files or folders")


def _inspect_gguf(path: Path) -> dict[str, Any]:
    from .readers.gguf_file import GGUFFile

    f = GGUFFile(path)
    arch = f.get("general.architecture")
    if arch is not None and not isinstance(arch, str):
        raise CorruptFileError(f"{path}: general.architecture must be a string, got {arch!r:.40}")
    hparams = {k[len(arch) + 1:]: v for k, (v, _, _) in f.kv.items() if arch and k.startswith(arch + ".")}
    general = {k: v for k, (v, _, _) in f.kv.items() if k.startswith("general.")}
    bitconv = f.bitconv_metadata()
    tokens = f.get("tokenizer.ggml.tokens")
    return {
        "path": str(path), "format": "gguf", "arch": arch, "general": general, "hparams": hparams,
        "bitconv": bitconv,
        # ids that engines disagree on (39, 42): the reading taken and why
        "type_readings": {str(t): why for t, (_, why) in sorted(f.readings.items())},
        "tokenizer": _tokenizer_summary(f, tokens),
        "tensors": [{"name": t.name, "shape": list(t.shape), "type": t.type_name, "bytes": t.nbytes}
                    for t in f.tensors.values()],
        "file_bytes": path.stat().st_size,
        "notes": _rotation_notes(f.kv, {}),  # rotation_from_gguf takes GGUFFile.kv's (value, type, sub) as is
    }


def _rotation_notes(gguf_kv: dict[str, Any], config: dict[str, Any]) -> list[str]:
    from .rotation import describe, rotation_from_config, rotation_from_gguf

    rot = rotation_from_gguf(gguf_kv) or rotation_from_config(config)
    if rot is None:
        return []
    return [f"weights pre-rotated by a {describe(rot)}: an engine that does not apply it runs and writes "
            "fluent garbage; bitconv refuses to write it into a format that would drop it"]


def _engine_notes(folder: Path, config: dict[str, Any]) -> list[str]:
    """What an MLX / compressed-tensors folder holds: exactly ternary, or what a lossy tool
    computed (named), and any Hadamard rotation it declares."""
    notes = _rotation_notes({}, config)
    from .config_values import get_dict
    from .errors import BitconvError
    from .readers.engine_folders import engine_format

    try:
        fmt = engine_format(config, get_dict(config, "quantization_config", "config.json"), str(folder))
    except BitconvError as exc:
        return notes + [exc.message if hasattr(exc, "message") else str(exc)]
    if fmt is None:
        return notes
    from .model import SourceInfo
    from .readers.hf_folder import open_folder

    try:
        ckpt = open_folder(folder, SourceInfo("folder", str(folder), folder))
    except BitconvError as exc:
        return notes + [f"{fmt} folder; its tensors could not be read as a model: {exc}"]
    computed = [t.source_name for t in ckpt.tensors if t.computed_from]
    ternary = [t for t in ckpt.tensors if t.is_ternary]
    if computed:
        notes.append(f"{fmt} folder NOT exactly ternary: {len(computed)} quantized tensor(s) ({', '.join(computed[:3])}"
                     f"{', ...' if len(computed) > 3 else ''}) hold values no ternary weight has (a stock lossy "
                     "quantizer's output); bitconv reads them as the floats the engine computes")
    else:
        groups = sorted({str(t.group) for t in ternary})
        notes.append(f"{fmt} folder, exactly ternary: {len(ternary)} tensor(s) with their own codes and scales "
                     f"(groups: {', '.join(groups)})")
    return notes


def _inspect_safetensors(path: Path) -> dict[str, Any]:
    from .readers.safetensors_files import _NP_DTYPES, ShardSet

    folder = path if path.is_dir() else path.parent
    shards = ShardSet(folder)
    tensors = []
    for name in sorted(shards.names()):
        shape, dtype = shards.info(name)
        n = 1
        for d in shape:
            n *= d
        dt = _NP_DTYPES.get(dtype.upper())  # a dtype bitconv does not read: 0 bytes
        size = (dt.itemsize if dt is not None else 0) * n
        tensors.append({"name": name, "shape": list(shape), "type": dtype.upper(), "bytes": size})
    config: dict[str, Any] = {}
    if (folder / "config.json").exists():
        from .readers.hf_folder import read_config

        config = read_config(folder)
    tok_size = 0
    if (folder / "tokenizer.json").exists():
        from .writers.tokenizer import tokenizer_json_size

        tok_size = tokenizer_json_size(folder / "tokenizer.json")
    archs = config.get("architectures")
    hp_keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "vocab_size", "max_position_embeddings", "rope_theta", "rms_norm_eps",
               "hidden_act", "tie_word_embeddings")
    notes = _engine_notes(folder, config)
    return {
        "path": str(path), "format": "safetensors", "arch": archs[0] if isinstance(archs, list) and archs else None,
        "notes": notes,
        "hparams": {k: config[k] for k in hp_keys if k in config},
        "quantization_config": config.get("quantization_config"),
        "tokenizer": {"size": tok_size},
        "tensors": tensors,
        "file_bytes": sum(p.stat().st_size for p in shards.files),
    }


def _tokenizer_summary(f, tokens: Any) -> dict[str, Any]:
    """What the file's tokenizer keys hold. `size` counts the tokens only when they are
    strings (an array of u32 was reported as "size 0"); otherwise `problem` says what the
    key holds instead, and None means the file has no tokenizer."""
    out: dict[str, Any] = {"model": f.get("tokenizer.ggml.model"), "pre": f.get("tokenizer.ggml.pre")}
    if tokens is None:
        out["size"] = None
        out["problem"] = "no tokenizer.ggml.tokens: engines cannot load the file as is"
    elif isinstance(tokens, (list, tuple)) and all(isinstance(t, str) for t in tokens):
        out["size"] = len(tokens)
    else:
        vtype = f.kv.get("tokenizer.ggml.tokens", (None, None, None))
        sub = vtype[2] if vtype[1] is not None and int(vtype[1]) == 9 else vtype[1]
        try:
            import gguf

            kind = gguf.GGUFValueType(int(sub)).name.lower()
        except (TypeError, ValueError):
            kind = type(tokens).__name__
        out["size"] = None
        out["problem"] = f"tokenizer.ggml.tokens holds {kind} values, not strings: not a usable vocabulary"
    return out
