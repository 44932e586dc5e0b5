"""MLX and compressed-tensors folders as sources (issue 20, item 4).

A folder that `--format mlx` or `--format compressed-tensors` wrote, or that the stock tools
(`mlx_lm.convert -q --q-bits 2`, llm-compressor int2) wrote, is a Hugging Face-named folder
whose quantized linears are stored in the engine's layout instead of as floats:

* MLX (`config.json` has `"quantization": {"bits": 2, "group_size": G}`): `X.weight`
  (uint32 words), `X.scales`, `X.biases`; any module with `.scales` (embeddings too). 4 and
  8-bit folders (`mlx_lm.convert -q`'s default is 4) are read as what mlx-lm computes.
* compressed-tensors (`quantization_config.quant_method: compressed-tensors`, format
  `pack-quantized`, int2): `X.weight_packed`, `X.weight_scale`, `X.weight_shape`.

Each such tensor is checked once when the folder is opened (its scales, biases and a scan of
its codes, no values kept): when every group is exactly ternary (MLX: codes 0..2 and bias =
−scale; compressed-tensors: int2 values −1..1), it is handed on as ternary with its own codes
and scales (the coarsest group that holds them: tensor, row, or G) and never re-quantized.
Otherwise, a stock lossy file, it is handed on as the float32 weights the engine computes from
it (`dequantize`), marked `computed` so `inspect` says the folder is not exactly ternary.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CorruptFileError, InputError
from ..model import SourceTensor
from ..pack.ct_int2 import CTInt2, OFFSET as CT_OFFSET
from ..pack.mlx_affine import GROUP_SIZES, MLXAffine2, OFFSET as MLX_OFFSET, dequantize_affine
from ..pack.words2 import coarsest, count_bad, n_words
from .safetensors_files import ShardSet

MLX, CT = "mlx", "compressed-tensors"
_SIDE = {MLX: (".scales", ".biases"), CT: (".weight_scale", ".weight_shape")}


def engine_format(config: dict[str, Any], qconfig: dict[str, Any], where: str) -> str | None:
    """MLX, CT or None (any other folder), refusing engine folders bitconv cannot read."""
    if qconfig.get("quant_method") == "compressed-tensors":
        fmt = qconfig.get("format")
        groups = qconfig.get("config_groups") or {}
        bits = {((g or {}).get("weights") or {}).get("num_bits") for g in groups.values()} if isinstance(groups, dict) else set()
        if fmt != "pack-quantized" or bits != {2}:
            raise InputError(f"{where}: compressed-tensors format {fmt!r} with {sorted(map(str, bits)) or 'no'}-bit "
                             "weights is not a ternary format; bitconv reads pack-quantized int2 folders")
        return CT
    q = config.get("quantization")
    if isinstance(q, dict) and "bits" in q:
        # 2-bit: possibly exactly ternary; 4 / 8-bit (mlx_lm.convert -q): read as what mlx-lm computes
        if q.get("bits") not in (2, 4, 8) or q.get("mode", "affine") != "affine" \
                or q.get("group_size") not in GROUP_SIZES:
            raise InputError(f"{where}: MLX quantization {q} is not 2, 4 or 8-bit affine with groups of 32/64/128; "
                             "bitconv reads those (2-bit ones exactly when they are ternary)")
        return MLX
    return None


def is_side_tensor(fmt: str | None, name: str) -> bool:
    return fmt is not None and name.endswith(_SIDE[fmt])


def weight_name(fmt: str | None, name: str) -> str:
    """The Hugging Face weight name a stored tensor stands for (`X.weight_packed` -> `X.weight`)."""
    return name[: -len("_packed")] if fmt == CT and name.endswith(".weight_packed") else name


def is_quantized(fmt: str | None, shards: ShardSet, name: str) -> bool:
    if fmt == CT:
        return name.endswith(".weight_packed")
    if fmt == MLX:
        return name.endswith(".weight") and name[: -len(".weight")] + ".scales" in shards
    return False


def quantized_tensor(fmt: str, shards: ShardSet, hf_name: str, name: str, role: str,
                     config: dict[str, Any]) -> SourceTensor:
    """The SourceTensor of one stored quantized tensor: ternary when exact, else computed floats."""
    base = hf_name[: -len(".weight_packed")] if fmt == CT else hf_name[: -len(".weight")]
    where = shards.path_of(hf_name)
    for side in _SIDE[fmt]:
        if base + side not in shards:
            raise CorruptFileError(f"{where}: {hf_name} has no {base + side}",
                                   hint=f"a {fmt} quantized tensor needs {' and '.join(base + x for x in _SIDE[fmt])}")
    words = shards.raw(hf_name)
    if words.ndim != 2 or words.dtype.itemsize != 4:
        raise CorruptFileError(f"{where}: {hf_name} is {words.dtype} of shape {list(words.shape)}, "
                               "not 32-bit words [M, W]")
    if fmt == MLX:
        g, bits = int(config["quantization"]["group_size"]), int(config["quantization"]["bits"])
        scales, biases = shards.get(base + ".scales"), shards.get(base + ".biases")
        if scales.ndim != 2 or scales.shape != biases.shape or scales.shape[0] != words.shape[0]:
            raise CorruptFileError(f"{where}: {base}.scales {list(scales.shape)} / .biases {list(biases.shape)} do "
                                   f"not fit {hf_name} {list(words.shape)}")
        m, k = int(words.shape[0]), int(scales.shape[1]) * g
        lay = MLXAffine2(g)
        exact = bits == 2 and words.shape[1] * 16 == k and lay.exact(count_bad(words, k, MLX_OFFSET), scales, biases)

        def read():
            w, sc, bi = shards.raw(hf_name), shards.get(base + ".scales"), shards.get(base + ".biases")
            return lay.read(w, sc, bi, k, hf_name) if bits == 2 else dequantize_affine(w, sc, bi, bits, g, hf_name)
        layout_name = "mlx_affine2"
    else:
        shape = tuple(int(x) for x in shards.get(base + ".weight_shape").reshape(-1))
        if len(shape) != 2:
            raise InputError(f"{shards.path_of(hf_name)}: {base}.weight_shape {list(shape)} is not [M, K]")
        m, k = shape
        scales = shards.get(base + ".weight_scale")
        if m != words.shape[0] or words.shape[1] != n_words(k) or scales.size == 0 or m <= 0 or scales.size % m \
                or k % (scales.size // m):
            raise CorruptFileError(f"{where}: {hf_name} {list(words.shape)} / weight_scale {list(scales.shape)} do not "
                                   f"fit weight_shape {list(shape)}")
        scales = scales.reshape(m, -1)
        g = k // scales.shape[-1]
        exact = CTInt2.exact(count_bad(words, k, CT_OFFSET), scales)

        def read():
            s = shards.get(base + ".weight_scale")
            return CTInt2().read(shards.raw(hf_name), s.reshape(m, -1), (m, k), hf_name)
        layout_name = "ct_int2"
    if exact:
        group = coarsest(np.zeros((m, 0), np.int8), scales, g).group  # the scales decide the group

        def load_ternary():
            out = read()  # exact: the Ternary with the coarsest group (pack/words2.coarsest)
            if not hasattr(out, "values"):
                raise InputError(f"{shards.path_of(hf_name)}: {hf_name} changed since the folder was opened")
            return out

        return SourceTensor(name=name, shape=(m, k), role=role, dtype=layout_name, source_name=hf_name,
                            _load_ternary=load_ternary, source_nbytes=int(words.nbytes), group=group)

    def load_floats():
        return np.asarray(read(), dtype=np.float32)

    return SourceTensor(name=name, shape=(m, k), role=role, dtype="f32", source_name=hf_name, _load=load_floats,
                        source_nbytes=int(words.nbytes), computed_from=fmt)
