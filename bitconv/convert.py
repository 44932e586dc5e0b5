"""`convert()`: the library entry point. Read -> plan -> ternarize -> pack -> write.

The CLI only parses options and calls this; a script or CI job can call it directly.
Guard clauses run first, the plan is validated for every tensor before a byte is written,
and the output appears under its final name only when complete.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .default_layout import AUTO, choose_gguf_plan
from .embedding_types import TERNARY_TYPES as TERNARY_EMBEDDING_TYPES
from .embedding_types import parse_type as parse_embedding_type
from .errors import UsageError
from .model import LINEAR
from .pack import layout_class, layout_names
from .plan import ConversionPlan, ConversionResult, ConvertOptions, TensorPlan
from .pipeline import OrderedMap, memory_budget, ordered_map
from .quant import TensorStats, check_finite, parse_group_size, serial_torch, tensor_stats, ternarize_with_stats
from .readers import open_source
from .readers.checkpoint import Checkpoint, gguf_read_options
from .exact_ternary import recover
from .source_kind import SourceKind, decide_source_kinds
from .writers import get_writer
from .side_files import KERNEL_CONFIG_STAMP, is_bitconv_kernel_config
from .writers.atomic import check_not_source, check_output, staged
from .writers.base import Encoded, Payload

ProgressFn = Callable[[TensorPlan], None]


def convert(
    source: str | Path,
    output: str | Path,
    *,
    layout: str = "auto",
    format: str = "gguf",
    group_size: str | int = "tensor",
    embedding_type: str = "auto",
    output_type: str = "auto",
    i2s_variant: str = "x86-act",
    kernel_config: str | Path | None = None,
    emit_kernel_config: str | Path | None = None,
    allow_engine_mismatch: bool = False,
    max_shard_size: int = 5 * 1000**3,
    name: str | None = None,
    ternarize: bool = False,
    revision: str | None = None,
    token: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    progress: ProgressFn | None = None,
    on_plan: Callable[[ConversionPlan], None] | None = None,
    source_i2s_variant: str | None = None,
) -> ConversionResult:
    """Convert SOURCE (Hub id, folder, GGUF or `builtin:NAME`) into OUTPUT.

    OUTPUT given as a string ending in "/" names a folder: the GGUF is written into it as
    `<model>-<layout>.gguf` (a release's name). Returns a `ConversionResult` with the plan, per-linear statistics (scale, zero share,
    relative error) and timing. With `dry_run`, nothing is read beyond headers and nothing
    is written. Raises a `BitconvError` subclass on bad input or a failed write.
    A GGUF source another tool wrote is read with `source_i2s_variant` (its I2_S code
    order) and `kernel_config` (the tiles of its TL tensors), which its bytes cannot tell.

    Every source tensor's kind is decided first (`source_kind.decide_source_kinds`): float
    weights of a model that is not a BitNet model must be exact ternary (their own t and
    scales are kept), or the conversion is refused unless `ternarize` asks for
    post-training ternarization on purpose.
    """
    into_folder = str(output).endswith(("/", os.sep))  # `convert src out/`: a folder, never a file named `out`
    output = Path(output)
    options = build_options(
        layout=layout, format=format, group_size=group_size, embedding_type=embedding_type,
        output_type=output_type, i2s_variant=i2s_variant, kernel_config=kernel_config,
        emit_kernel_config=emit_kernel_config, allow_engine_mismatch=allow_engine_mismatch,
        max_shard_size=max_shard_size, name=name, ternarize=ternarize,
    )
    writer = get_writer(options.format)
    auto = options.format == "gguf" and options.layout == AUTO
    if options.format == "gguf" and not auto:
        layout_class(options.layout)  # an unknown --layout is a usage error, before any download
    into_folder = into_folder and options.format == "gguf"
    if into_folder:
        check_folder_target(output)
    elif not dry_run:
        check_output(output, force, local_source_paths(source, options))
    emit = options.emit_kernel_config
    if emit is not None:
        if not auto:  # a default layout is known only once planned (kernel_config_for checks it then)
            check_emit_applies([options.layout] if options.format == "gguf" else [options.format])
        check_emit_path(emit, output, local_source_paths(source, options), force=force, dry_run=dry_run)
    ckpt = open_source(source, revision=revision, token=token,
                       gguf_options=gguf_read_options(source_i2s_variant, kernel_config))
    snapshot = source_snapshot(ckpt, options)  # the files as opened; checked before the output is committed
    if not dry_run:  # a Hub source's files are known only now; still nothing written yet
        check_not_source(output, checkpoint_paths(ckpt, options))
    if emit is not None:
        check_emit_path(emit, output, checkpoint_paths(ckpt, options), force=force, dry_run=dry_run)
    from .rotation import refuse_rotated

    refuse_rotated(ckpt, options.format)  # no target of bitconv keeps a Hadamard rotation (issue 20)
    kind_notes = decide_source_kinds(ckpt, ternarize=options.ternarize)
    if auto:  # the layout of the engine that runs this family, said in a note (default_layout.py)
        plan, why = choose_gguf_plan(ckpt, output, options)
        options = plan.options
        plan.notes = kind_notes + [why] + plan.notes
    else:
        plan = writer.plan(ckpt, output, options)
        plan.notes = kind_notes + plan.notes
    if into_folder:  # named as a release names it, once the model and the planned layout are known
        output = plan.output = _name_in_folder(output, ckpt, plan.options)
        if not dry_run:
            check_output(output, force, checkpoint_paths(ckpt, options))
        if emit is not None:
            check_emit_path(emit, output, checkpoint_paths(ckpt, options), force=force, dry_run=dry_run)
    if on_plan is not None:
        on_plan(plan)
    kernel_ini = kernel_config_for(plan) if emit is not None else None
    if dry_run:  # the plan (and the codegen command) only: not even the kernel config is written
        return ConversionResult(plan=plan, written=False)
    start = time.perf_counter()
    stats: list[TensorStats] = []
    with staged(force) as stage:
        tmp = stage.file(output)
        if kernel_ini is not None:  # committed after the output, and only with it
            stage.text(emit, kernel_ini, ours=is_bitconv_kernel_config, what="kernel config")
        tensors = prepare_tensors(plan, stats, progress, encode=lambda tp, payload: writer.encode(plan, tp, payload),
                                  encode_source=lambda tp: writer.encode_source(plan, tp),
                                  direct_bytes=lambda tp: writer.direct_bytes(plan, tp))
        try:
            writer.write(tmp, plan, tensors)
        finally:
            tensors.close()
        snapshot.verify()  # a source replaced or rewritten meanwhile: exit 1, the temporary removed
    size = sum(p.stat().st_size for p in output.rglob("*")) if output.is_dir() else output.stat().st_size
    return ConversionResult(plan=plan, written=True, stats=stats, seconds=time.perf_counter() - start,
                            output_bytes=size)


def build_options(*, layout: str = "tq2_0", format: str = "gguf", group_size: str | int = "tensor",
                  embedding_type: str = "auto", output_type: str = "auto", i2s_variant: str = "x86-act",
                  kernel_config: str | Path | None = None, emit_kernel_config: str | Path | None = None,
                  allow_engine_mismatch: bool = False, max_shard_size: int = 5 * 1000**3,
                  name: str | None = None, ternarize: bool = False) -> ConvertOptions:
    """Validate and normalize user-facing options (shared by convert and release)."""
    return ConvertOptions(
        layout=layout.lower().replace("-", "_"), format=format.lower(), group_size=parse_group_size(group_size),
        embedding_type=parse_embedding_type(embedding_type, "--embedding-type"),
        output_type=parse_embedding_type(output_type, "--output-type"), i2s_variant=i2s_variant,
        kernel_config=Path(kernel_config) if kernel_config else None,
        emit_kernel_config=Path(emit_kernel_config) if emit_kernel_config else None,
        allow_engine_mismatch=allow_engine_mismatch, max_shard_size=max_shard_size, name=name,
        ternarize=ternarize,
    )


def prepare_tensors(plan: ConversionPlan, stats: list[TensorStats], progress: ProgressFn | None = None,
                    encode: Callable[[TensorPlan, Payload], Encoded] | None = None,
                    workers: int | None = None,
                    encode_source: Callable[[TensorPlan], Encoded | None] | None = None,
                    direct_bytes: Callable[[TensorPlan], int | None] | None = None) -> "PreparedTensors":
    """Each planned tensor ready for a writer, in plan order: linears as Ternary, others as
    float32, or already `encode`d into the writer's bytes. Work starts at once (see
    `PreparedTensors`).

    Source tensors already ternary keep their own values and scales (absmean is not
    idempotent): packed ones as unpacked, exact-ternary floats recovered (and compared with
    the floats they came from); BitNet latent (or --ternarize) float linears are
    absmean-ternarized with the plan's group. Each tensor's
    read, ternarization, statistics and `encode` run as one job on the pipeline's workers
    (`bitconv.pipeline`), a few tensors ahead of the one being written; results and
    statistics arrive in plan order, so the bytes do not depend on the worker count.
    """
    def job(tp: TensorPlan) -> tuple[TensorPlan, Payload | Encoded, TensorStats | None]:
        with serial_torch():  # one intra-op thread per worker: the workers are the parallelism
            if encode_source is not None:
                direct = encode_source(tp)
                if direct is not None:
                    return tp, direct, None
            payload, stat = _prepare_one(tp)
            if encode is not None:
                payload = encode(tp, payload)
        return tp, payload, stat

    def cost(tp: TensorPlan) -> int:  # memory a job allocates: `encode_source`'s, else a float32 copy
        direct = direct_bytes(tp) if (direct_bytes is not None and encode_source is not None) else None
        return _float_bytes(tp) if direct is None else direct

    def held(tp: TensorPlan) -> int:  # what its result keeps while the writer writes it
        return tp.nbytes if encode is not None else _float_bytes(tp)

    return PreparedTensors(ordered_map(job, plan.tensors, workers=workers, max_pending=PIPELINE_AHEAD,
                                       cost=cost, budget=memory_budget(), held=held), stats, progress)


class PreparedTensors(Iterator[tuple[TensorPlan, "Payload | Encoded"]]):
    """The pipeline's results as (tensor plan, payload) in plan order. The workers start
    when this is made, so a writer's header and tokenizer serialization overlap with the
    first tensors; statistics are appended in plan order and `progress` is told about a
    tensor once the writer comes back for the next. `close()` stops the workers (a
    writer that fails half way, or convert's `finally`)."""

    def __init__(self, results: OrderedMap, stats: list[TensorStats], progress: ProgressFn | None) -> None:
        self._results, self._stats, self._progress = results, stats, progress
        self._last: TensorPlan | None = None

    def __iter__(self) -> "PreparedTensors":
        return self

    def __next__(self) -> tuple[TensorPlan, Payload | Encoded]:
        if self._last is not None and self._progress is not None:
            self._progress(self._last)
        self._last = None
        tp, payload, stat = next(self._results)
        if stat is not None:
            self._stats.append(stat)
        self._last = tp
        return tp, payload

    def close(self) -> None:
        self._results.close()


PIPELINE_AHEAD = 4  # tensors submitted ahead of the one being written


def _float_bytes(tp: TensorPlan) -> int:
    return 4 * int(np.prod(tp.shape, dtype=np.int64))


def _prepare_one(tp: TensorPlan) -> tuple[Payload, TensorStats | None]:
    src = tp.source
    if tp.role == LINEAR:
        if src.kind == SourceKind.EXACT:  # recovered from its floats and compared with them
            w = src.load()
            tern = recover(w, src.group, src.detection.exact)
            return tern, tensor_stats(tp.name, tern, w)
        if src.is_ternary:
            tern = src.load_ternary()
            return tern, tensor_stats(tp.name, tern, None)
        raw = src.load_raw()  # bf16 arrives as its bits and is widened inside the first pass
        return ternarize_with_stats(raw, tp.group, tp.name, bf16_bits=raw.dtype == np.uint16)
    if tp.out_type in TERNARY_EMBEDDING_TYPES or (src.is_ternary and tp.out_type in layout_names()):
        return src.load_ternary(), None  # a ternary embedding/output, kept as it is (q2_0, MLX, int2)
    arr = src.load()
    check_finite(arr, tp.name)
    return arr, None


def kernel_config_for(plan: ConversionPlan) -> str:
    """The plan's tile table as bitnet.cpp's kernel_config.ini, headed by the codegen call;
    also records the codegen command in the plan (the CLI prints it, dry run included).

    Sections and lists follow codegen's ModelShapeDict order (FORMATS.md §5): pasted as
    printed, the command builds kernels whose tiles equal the file's for every shape.
    """
    from .pack.tiles import codegen_command, kernel_config_text, tiles_from_metadata

    if plan.options.layout not in TL_LAYOUTS:
        raise UsageError(f"--emit-kernel-config writes the tiles of a TL layout, and this run writes "
                         f"{plan.options.layout}", hint="add --layout tl1 or tl2, or drop --emit-kernel-config")
    cmd = codegen_command(plan.options.layout, tiles_from_metadata(plan.layout_metadata),
                          plan.options.name or plan.spec.name)
    # The matching bitnet.cpp codegen call, as comments configparser (and bitnet.cpp) ignore;
    # the first line also marks the file as bitconv's (`side_files.is_bitconv_kernel_config`).
    header = [f"{KERNEL_CONFIG_STAMP[2:]} for {plan.spec.name}", *cmd.instructions()]
    plan.layout_metadata["codegen_args"] = cmd.args()
    plan.layout_metadata["codegen"] = cmd.to_dict()
    return "".join(f"# {line}\n" for line in header) + kernel_config_text(cmd.table())


TL_LAYOUTS = ("tl1", "tl2")


def check_emit_applies(labels: list[str]) -> str:
    """--emit-kernel-config names one file for one TL layout's tiles: refuse a run that writes
    none (there are no tiles to write) or two (one file cannot hold both). Returns the label."""
    tl = [lab for lab in labels if lab in TL_LAYOUTS]
    if not tl:
        raise UsageError(f"--emit-kernel-config writes the tiles of a TL layout, and this run writes none "
                         f"({', '.join(labels)})", hint="add --layout tl1 or tl2, or drop --emit-kernel-config")
    if len(tl) > 1:
        raise UsageError(f"--emit-kernel-config names one file for one TL layout's tiles; this run writes "
                         f"{' and '.join(tl)}", hint="write one TL layout per run with --emit-kernel-config")
    return tl[0]


def local_source_paths(source: str | Path, options: ConvertOptions | None = None) -> list[Path]:
    """The paths a conversion will read that are known before the source is opened."""
    from .readers import BUILTIN_PREFIX, DATA_DIR

    text = str(source)
    paths = []
    if text.startswith(BUILTIN_PREFIX):
        paths.append(DATA_DIR / text[len(BUILTIN_PREFIX):])
    elif Path(text).expanduser().exists():
        paths.append(Path(text).expanduser())
    if options is not None and options.kernel_config is not None:
        paths.append(options.kernel_config)
    return paths


def source_snapshot(ckpt: Checkpoint, options: ConvertOptions | None = None) -> "SourceSnapshot":
    """The identity of every file the conversion reads (`source_files`): the reader's held
    files as opened, the rest (config, tokenizer, kernel config) as they are now."""
    from .source_files import SourceSnapshot

    paths: list[Path] = list(ckpt.files)
    tok = ckpt.spec.tokenizer_dir
    if tok is not None and Path(tok).is_dir():
        paths += sorted(p for p in Path(tok).iterdir() if p.name.startswith(("tokenizer", "special_tokens",
                                                                             "added_tokens", "vocab", "merges")))
    if options is not None and options.kernel_config is not None:
        paths.append(Path(options.kernel_config))
    return SourceSnapshot.take(paths, ckpt.held)


def checkpoint_paths(ckpt: Checkpoint, options: ConvertOptions | None = None) -> list[Path]:
    """Every path an opened checkpoint reads: its files, its folder, its tokenizer folder."""
    spec = ckpt.spec
    paths = [*ckpt.files, spec.source.path]
    if spec.tokenizer_dir is not None:
        paths.append(Path(spec.tokenizer_dir))
    if options is not None and options.kernel_config is not None:
        paths.append(options.kernel_config)
    return paths


def check_emit_path(path: Path, output: Path, sources: list[Path], force: bool = False,
                    dry_run: bool = False) -> None:
    """--emit-kernel-config: a writable folder, not a source, not the output itself, and (unless
    a dry run) a new file or, with --force, one bitconv wrote (`Stage` checks it again)."""
    from .writers.atomic import _abs, check_side_file

    check_not_source(path, sources, what="--emit-kernel-config file")
    if _abs(path) == _abs(output):
        raise UsageError(f"{path}: --emit-kernel-config names the output itself; choose another file")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{path}: --emit-kernel-config folder {parent} does not exist", hint="create it first")
    if path.is_dir():
        raise UsageError(f"{path}: --emit-kernel-config names a folder; give a file name")
    if not dry_run:
        check_side_file(path, force, is_bitconv_kernel_config, "kernel config")


def model_stem(name: str | None, ckpt: Checkpoint) -> str:
    """The `<model>` of the names outputs get in a folder (`<model>-<layout>.gguf`,
    `<model>-<format>`): --name, else the source's name, `/` made `-`."""
    return (name or ckpt.spec.name).replace("/", "-")


def _name_in_folder(folder: Path, ckpt: Checkpoint, options: ConvertOptions) -> Path:
    """`convert SRC folder/`: the GGUF's path inside FOLDER, `<model>-<layout>.gguf` as a release
    names it (the layout the plan settled on)."""
    return folder / f"{model_stem(options.name, ckpt)}-{options.layout}.gguf"


def check_folder_target(folder: Path) -> None:
    """A GGUF output named with a trailing slash is a folder the file goes into: it must be one."""
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise UsageError(f"{folder}/: a trailing slash names a folder to write the GGUF into, and it {what}",
                         hint="create the folder first, or name the output file (e.g. model.gguf)")
