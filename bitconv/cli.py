"""The `bitconv` command: a thin typer + rich layer over the library.

Parses options, calls `convert()` / `verify()` / `inspect_path()`, renders results. Typed
errors become one line and an exit code: 0 success, 1 conversion or verification failed,
2 bad input or usage. `--debug` shows the traceback.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.markup import escape
from rich.table import Table

from . import __version__
from .errors import BitconvError, UsageError
from .output import Output

def _flags_without_type(params: list) -> list:
    """typer 0.29+ shows `<bool>` after every flag, which reads as if `--force` took a value
    (`--force true` then fails): a flag takes no value, so it shows no type."""
    for param in params:
        if getattr(param, "is_flag", False) and hasattr(param, "display_type_rich"):
            param.display_type_rich = lambda ctx=None: None
    return params


class _Command(typer.core.TyperCommand):
    """A typer command whose help reads as click's always did, whatever typer version renders it.

    typer 0.27+ writes required arguments as `{source}` in the usage line and 0.29+ puts
    `<bool>` after every flag. Here usage shows arguments as SOURCE / [SOURCE] and flags show
    no type. typer before 0.27 renders that way already; this keeps it so under 0.27-0.29
    (pyproject allows <0.30: tests/test_help.py checks the text under whatever is installed).
    """

    def get_params(self, ctx):
        return _flags_without_type(super().get_params(ctx))  # with --help, which click adds here

    def collect_usage_pieces(self, ctx):
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if getattr(param, "param_type_name", "") == "argument":
                name = (param.metavar or param.name or "").upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces


class _Group(typer.core.TyperGroup):
    """The `bitconv` group: its --version / --help flags without `<bool>` (see `_Command`)."""

    def get_params(self, ctx):
        return _flags_without_type(super().get_params(ctx))


app = typer.Typer(
    name="bitconv",
    cls=_Group,
    help="Convert ternary (BitNet b1.58) checkpoints into GGUF / packed safetensors that real engines run, "
    "and verify what the conversion cost.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout (for CI).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]

CONVERT_EXAMPLES = """
Examples:

  bitconv convert builtin:tiny-bitnet tiny.gguf --layout tl2

  bitconv convert 1bitLLM/bitnet_b1_58-large large.gguf --layout tq2_0 --revision main

  bitconv convert ./my-checkpoint out/ --format safetensors

  bitconv convert ./my-checkpoint plan.gguf --layout i2_s --dry-run --json
"""


def _mode(json_: bool, quiet: bool) -> str:
    return "json" if json_ else "quiet" if quiet else "human"


@dataclass
class Outcome:
    """What a writing command leaves on disk: the `expected` paths. An interrupt that lands
    after the run's outcome is settled is not a failure of the run (issue 21: one outcome,
    one exit code): settled when the body set `code` (its exit code, known), or, where
    `final`, once every expected path was renamed into place (a single convert: nothing
    after the rename can change the result; not a release that still verifies or uploads,
    or one with a failed output, whose exit code is not 0)."""

    expected: list[Path] = field(default_factory=list)
    final: bool = True
    code: int | None = None

    def settled(self, written: list[Path]) -> int | None:
        """The run's exit code if the outcome was settled before the interrupt, else None."""
        if self.code is not None:
            return self.code
        done = self.final and bool(self.expected) and {str(p) for p in self.expected} <= {str(p) for p in written}
        return 0 if done else None


def _run(out: Output, debug: bool, fn: Callable[[], int], outcome: Outcome | None = None) -> None:
    """Run a command body, mapping typed errors to one line and an exit code.

    `outcome` is given for commands that write: an interrupt's message then says exactly
    what is on disk (`writers.atomic.written`), and a run whose result was settled before
    the signal landed keeps its exit code (`Outcome.settled`). Commands that write nothing
    (verify, check, ...) say only that they were interrupted.
    """
    from .writers.atomic import cleanup_on_signals, hold_signals, reset_written, written

    from .one_time import subscribe

    reset_written()
    try:
        # SIGTERM/SIGHUP clean up as Ctrl-C does; a one-time step over a second (a first
        # run's kernel compile) is said in one line instead of silence
        with cleanup_on_signals(), subscribe(out.note):
            code = fn()
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP as `Interrupted`
        with hold_signals(reraise=False):  # a second signal must not cut this report short
            code = _interrupted(out, exc, outcome, written())
        raise typer.Exit(code) from None
    except Exception as exc:  # a typed error: its line and exit code; anything else is a bug: say so, exit 1
        known = isinstance(exc, BitconvError)
        with hold_signals(reraise=False) if known else nullcontext():
            if debug:
                traceback.print_exc()
            message = str(exc) if known else \
                f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)"
            on_disk = written()
            out.error(_with_written(message, exc, on_disk), written=[str(p) for p in on_disk])
        raise typer.Exit(exc.exit_code if known else 1) from None
    raise typer.Exit(code)


def _with_written(message: str, exc: BaseException, on_disk: list[Path]) -> str:
    """An error after some files were renamed into place says which (still one line)."""
    from .errors import UploadError

    if not on_disk or isinstance(exc, UploadError):  # an upload error already says the release is on disk
        return message
    return f"{message}; written before it: {', '.join(str(p) for p in on_disk)}"


def _interrupted(out: Output, exc: KeyboardInterrupt, outcome: Outcome | None, on_disk: list[Path]) -> int:
    """The one true line about an interrupted command, and its exit code."""
    from .writers.atomic import Interrupted

    name, code = (str(exc), exc.exit_code) if isinstance(exc, Interrupted) else ("SIGINT", 130)
    what = "interrupted" if name == "SIGINT" else f"terminated by {name}"
    if outcome is None:
        out.error(what)
        return code
    listed = ", ".join(str(p) for p in on_disk)  # raw: out.error/out.warn escape what they print
    settled = outcome.settled(on_disk) if on_disk else None
    if settled is not None:
        out.warn(f"{name} arrived after the run was complete; it is ignored")
        if not out.emitted:  # the body's own result did not get out before the signal
            out.result({"ok": settled == 0, "written": [str(p) for p in on_disk], "late_signal": name})
        out.info(f"[green]wrote[/green] {', '.join(escape(str(p)) for p in on_disk)}")
        return settled
    if not on_disk:
        out.error(f"{what}; no output was left behind (temporary files removed; nothing existing was changed)")
    else:
        missing = [p for p in outcome.expected if str(p) not in {str(q) for q in on_disk}]
        out.error(f"{what} part way: written before it: {listed}"
                  + (f"; not written: {', '.join(str(p) for p in missing)}" if missing else "")
                  + " (re-run with --force to replace them)", written=[str(p) for p in on_disk])
    return code


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)[bB]?\s*", text)
    if not m:
        raise UsageError(f"not a size: {text!r} (use e.g. 5GB, 500MB, 2GiB)")
    base = 1024 if m.group(3) else 1000
    mult = {"": 1, "k": base, "m": base**2, "g": base**3, "t": base**4}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


@dataclass(frozen=True)
class ConvertArgs:
    """Every option that shapes what a conversion reads and writes, parsed once.

    Single converts, several-output releases and their dry runs all receive `kwargs()`
    whole, so an option added here reaches every mode (issue 22: two of three hand-copied
    option lists dropped --emit-kernel-config, silently)."""

    group_size: str = "tensor"
    embedding_type: str = "auto"
    output_type: str = "auto"
    i2s_variant: str = "x86-act"
    kernel_config: Optional[Path] = None
    emit_kernel_config: Optional[Path] = None
    allow_engine_mismatch: bool = False
    ternarize: bool = False
    max_shard_size: int = 5 * 1000**3
    name: Optional[str] = None
    source_i2s_variant: Optional[str] = None
    revision: Optional[str] = None
    token: Optional[str] = None

    def kwargs(self) -> dict:
        """Keyword arguments for `bitconv.convert.convert` and `bitconv.release.release` alike."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@app.command(epilog=CONVERT_EXAMPLES, cls=_Command)
def convert(
    source: Annotated[str, typer.Argument(help="Hub repo id (org/name), local folder, .gguf file, or builtin:NAME.")],
    output: Annotated[str, typer.Argument(help="Output .gguf file (a folder/ with a trailing slash: written into it), or folder for --format safetensors / mlx / compressed-tensors.")],
    layout: Annotated[Optional[str], typer.Option(help="Ternary layout: q2_0, tq2_0, tq1_0 (llama.cpp); i2_s, tl1, tl2 (bitnet.cpp). Default: the layout of the engine that runs the model (relu² BitNet: i2_s for bitnet.cpp; SiLU BitNet, Llama, Qwen3: tq2_0 for llama.cpp), named in a note.", show_default=False)] = None,
    format: Annotated[str, typer.Option("--format", help="gguf, safetensors (Hugging Face packed bitnet), mlx (mlx-lm) or compressed-tensors (vLLM pack-quantized int2).")] = "gguf",
    group_size: Annotated[str, typer.Option(help="Scale group: tensor, row, or N values along K.")] = "tensor",
    embedding_type: Annotated[str, typer.Option(help="token_embd type: auto (q2_0 when ternary in the source and --layout q2_0, else f16), f16, bf16, f32 or q2_0.")] = "auto",
    output_type: Annotated[str, typer.Option(help="output (lm_head) type: auto, f16, bf16, f32 or q2_0 (as --embedding-type).")] = "auto",
    i2s_variant: Annotated[str, typer.Option(help="I2_S code order: x86-act (default builds), x86-1x4, arm.")] = "x86-act",
    kernel_config: Annotated[Optional[Path], typer.Option(help="Force the TL tile parameters of an existing bitnet.cpp build (its include/kernel_config.ini); also reads a TL GGUF source another tool wrote.")] = None,
    source_i2s_variant: Annotated[Optional[str], typer.Option(help="I2_S code order of a GGUF source another tool wrote: x86-act (default) or arm (ARM builds since 2025).")] = None,
    emit_kernel_config: Annotated[Optional[Path], typer.Option(help="Write the TL tile parameters used, as a bitnet.cpp kernel_config.ini (one TL layout per run; with the output, never without it).")] = None,
    allow_engine_mismatch: Annotated[bool, typer.Option(help="Write even when the target engine would compute a different function (warns).")] = False,
    ternarize: Annotated[bool, typer.Option("--ternarize", help="Ternarize a float model that is not ternary (post-training absmean, lossy) instead of refusing it; verify --reference fp reports the cost.")] = False,
    max_shard_size: Annotated[str, typer.Option(help="safetensors: largest shard, e.g. 5GB.")] = "5GB",
    name: Annotated[Optional[str], typer.Option(help="Model name stored in the output (general.name).")] = None,
    revision: Annotated[Optional[str], typer.Option(help="Hub revision: branch, tag or commit.")] = None,
    token: Annotated[Optional[str], typer.Option(help="Hub token (default: HF_TOKEN or `hf auth login`).", envvar="HF_TOKEN")] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing output (side files only when bitconv wrote them).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (tensors, types, size, every path the run writes); write nothing.")] = False,
    keep_going: Annotated[bool, typer.Option(help="Several outputs: write the ones that work even if one fails (exit code still non-zero).")] = False,
    manifest: Annotated[Optional[bool], typer.Option("--manifest/--no-manifest", help="Write bitconv-manifest.json (default: on for several outputs).")] = None,
    model_card: Annotated[bool, typer.Option(help="Write a Hugging Face model card README.md beside the outputs.")] = False,
    verify_: Annotated[bool, typer.Option("--verify", help="Run bitconv verify on each output; a failed gate exits 1 (files kept).")] = False,
    upload_repo: Annotated[Optional[str], typer.Option(help="Upload the output folder to this Hub repo after every output passed.")] = None,
    private: Annotated[bool, typer.Option(help="Create the --upload-repo as private.")] = False,
    timestamp: Annotated[bool, typer.Option(help="Put a creation time in the manifest (off: deterministic).")] = False,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Convert a ternary checkpoint into a GGUF file or a model folder (packed safetensors, MLX, compressed-tensors).

    Several layouts (--layout tl2,i2_s,tq2_0) or formats (--format gguf,safetensors) write
    every output into the folder OUTPUT from one read of the source, with a manifest.
    """
    out = Output(_mode(json_, quiet))
    formats = [x.strip() for x in format.split(",") if x.strip()]
    refusal = (f"--layout {layout} applies to GGUF output, but --format {format} has one packing of its own"
               if layout is not None and formats and "gguf" not in [f.lower() for f in formats] else None)
    layouts = [x.strip() for x in (layout or "auto").split(",") if x.strip()]
    layout = layout or "auto"
    several = len(layouts) > 1 or len(formats) > 1
    release_mode = several or bool(manifest) or model_card or verify_ or upload_repo is not None

    def body() -> int:
        if refusal:  # first, as before any other option is read
            raise UsageError(refusal, hint="drop --layout, or add gguf to --format")
        args = ConvertArgs(group_size=group_size, embedding_type=embedding_type, output_type=output_type,
                           i2s_variant=i2s_variant, kernel_config=kernel_config,
                           emit_kernel_config=emit_kernel_config, allow_engine_mismatch=allow_engine_mismatch,
                           ternarize=ternarize, max_shard_size=parse_size(max_shard_size), name=name,
                           source_i2s_variant=source_i2s_variant, revision=revision, token=token)
        if release_mode:
            return _release_body(out, source, output, layouts, formats, args, outcome, keep_going=keep_going,
                                 manifest=manifest, model_card=model_card, verify=verify_, upload_repo=upload_repo,
                                 private=private, timestamp=timestamp, force=force, dry_run=dry_run)
        return _convert_body(out, source, output, layout, format, args, outcome, force=force, dry_run=dry_run)

    outcome = None if dry_run else Outcome()
    _run(out, debug, body, outcome)


def _convert_body(out: Output, source: str, output: str, layout: str, format: str, args: ConvertArgs,
                  outcome: Outcome | None, *, force: bool, dry_run: bool) -> int:
    """One output file (or safetensors folder)."""
    from .convert import convert as run_convert

    progress_cm = _progress(out)
    with progress_cm as bar:
        task = {}

        def on_plan(plan) -> None:
            for n in plan.notes:
                out.info(f"[cyan]note:[/cyan] {n}")
            for w in plan.warnings:
                out.warn(w)
            task["warned"] = len(plan.warnings)
            if outcome is not None:
                outcome.expected = [plan.output] + ([args.emit_kernel_config] if args.emit_kernel_config else [])
            if bar is not None and not dry_run:
                task["id"] = bar.add_task("converting", total=sum(t.source.source_nbytes for t in plan.tensors))

        def on_tensor(tp) -> None:
            if bar is not None:
                bar.update(task["id"], advance=tp.source.source_nbytes, description=tp.name)

        result = run_convert(source, output, layout=layout, format=format, force=force, dry_run=dry_run,
                             progress=on_tensor, on_plan=on_plan, **args.kwargs())
    if outcome is not None:
        outcome.code = 0
    for w in result.plan.warnings[task.get("warned", 0):]:  # found while writing (e.g. the tokenizer's)
        out.warn(w)
    data = result.to_dict()
    data["ok"] = True
    data["paths"] = [str(result.plan.output)] + ([str(args.emit_kernel_config)] if args.emit_kernel_config else [])
    out.result(data)
    if out.human:
        _render_convert(out, result, dry_run)
    return 0


def _release_body(out: Output, source: str, output: str, layouts: list[str], formats: list[str], args: ConvertArgs,
                  outcome: Outcome | None, *, keep_going: bool, manifest: Optional[bool], model_card: bool,
                  verify: bool, upload_repo: Optional[str], private: bool, timestamp: bool, force: bool,
                  dry_run: bool) -> int:
    """Several outputs (or one with a manifest, model card, verify or upload) from one read."""
    from .release import release

    out_path = Path(output)
    single = (len(layouts) == 1 and len(formats) == 1 and out_path.suffix == ".gguf"
              and not output.endswith(("/", os.sep)))  # a trailing slash is the release's folder
    outdir = out_path.parent if single else out_path

    def on_plan(planned) -> None:
        if outcome is not None:
            outcome.expected = planned.paths()
            outcome.final = not (verify or upload_repo) and all(t.ok for t in planned.targets)

    with _progress(out) as bar:
        task = bar.add_task("converting", total=None) if bar is not None and not dry_run else None
        result = release(
            source, outdir, layouts=layouts if "gguf" in formats else [], formats=formats,
            keep_going=keep_going, write_manifest=manifest is not False, model_card=model_card,
            verify=verify, upload_repo=upload_repo, private=private, timestamp=timestamp,
            force=force, dry_run=dry_run, command=sys.argv[1:], on_plan=on_plan,
            paths={layouts[0]: out_path} if single else None,
            # bytes of source tensors done, as a single convert counts (the bar's columns are bytes)
            progress=(lambda tp: bar.update(task, advance=tp.source.source_nbytes, description=tp.name))
            if task is not None else None,
            **args.kwargs(),
        )
    if outcome is not None:
        outcome.code = result.exit_code
    out.result(result.to_dict())
    if out.human:
        if dry_run:
            for t in result.targets:
                if t.plan is not None:
                    from .convert import ConversionResult

                    _render_convert(out, ConversionResult(plan=t.plan, written=False), True)
            _render_release_plan(out, result)
        else:
            _render_release(out, result)
    elif out.mode == "quiet":  # "errors only": a failed output (kept going past) is an error
        for t in result.targets:
            if not t.ok:
                out.error(f"{t.path.name}: {t.error}")
            elif t.verify is not None and not t.verify.get("passed"):
                out.error(f"{t.path.name}: verify failed: {'; '.join(map(str, t.verify.get('failures') or []))}")
    return result.exit_code


def _progress(out: Output):
    """convert's progress bar on stderr in a terminal; rates from work done (bitconv/progress.py)."""
    from contextlib import nullcontext

    if not out.show_progress:
        return nullcontext(None)
    from .progress import bytes_progress

    return bytes_progress(out.err)


def _render_codegen(out: Output, plan, dry_run: bool = False) -> None:
    """With --emit-kernel-config: how to build bitnet.cpp kernels for this file (also in the ini)."""
    codegen = plan.layout_metadata.get("codegen")
    if codegen:
        done = "would be written" if dry_run else "written"
        out.info(f"kernel config for bitnet.cpp {done} to {escape(str(plan.options.emit_kernel_config))}")
        if codegen["model_shape_entry"]:
            out.info(f"add to ModelShapeDict in {codegen['script']}:  {escape(codegen['model_shape_entry'])}",
                     soft_wrap=True)
        then = "then " if codegen["model_shape_entry"] else ""
        out.info(f"{then}build kernels with:  {escape(codegen['command'])}", soft_wrap=True)


def _render_convert(out: Output, result, dry_run: bool) -> None:
    plan = result.plan
    src = plan.spec.source
    out.info(f"[bold]{plan.spec.family}[/bold] from {src.location}"
             + (f" @ {src.commit[:12]}" if src.commit else "")
             + (f" -> {plan.format} arch [bold]{plan.arch}[/bold] for {plan.engine}" if plan.arch else f" -> {plan.format}"))
    _render_codegen(out, plan, dry_run)
    if dry_run:
        t = Table(title=f"plan: {plan.output} (nothing written)")
        for col in ("tensor", "shape", "source", "type", "bytes"):
            t.add_column(col, justify="right" if col == "bytes" else "left")
        for tp in plan.tensors:
            t.add_row(tp.name, "x".join(map(str, tp.shape)), _source_cell(tp), tp.out_type, f"{tp.nbytes:,}")
        out.table(t)
        kinds = plan.source_kinds()["counts"]
        out.info("source tensors: " + ", ".join(f"{n} {k}" for k, n in kinds.items()))
        out.info(f"tensor data: {_human_bytes(plan.total_bytes)} in {len(plan.tensors)} tensors")
        return
    stats = result.stats
    t = Table(title="ternarization (linears)")
    for col in ("tensor", "scale", "zeros", "rel. error"):
        t.add_column(col, justify="left" if col == "tensor" else "right")
    shown = stats if len(stats) <= 40 else sorted(stats, key=lambda s: -(s.rel_error or 0))[:10]
    for s in shown:
        scale = f"{s.scale_mean:.4g}" if s.scale_min == s.scale_max else f"{s.scale_min:.3g}..{s.scale_max:.3g}"
        t.add_row(s.name, scale, f"{s.zero_fraction:.1%}",
                  "kept (already ternary)" if s.rel_error is None else f"{s.rel_error:.2%}")
    if len(stats) > 40:
        t.caption = f"the 10 largest errors of {len(stats)} linears"
    out.table(t)
    summ = result.summary()
    if summ["mean_rel_error"] is not None:
        out.info(f"mean relative error {summ['mean_rel_error']:.2%}, max {summ['max_rel_error']:.2%}, "
                 f"zeros {summ['mean_zero_fraction']:.1%}")
    out.info(f"[green]wrote[/green] {plan.output} ({_human_bytes(result.output_bytes)}) in {result.seconds:.1f} s")


def _source_cell(tp) -> str:
    """What the plan decided the source tensor is: kind (and its own scale group)."""
    kind = tp.source_kind or ""
    if kind in ("exact_ternary", "packed_ternary"):
        kind += f" ({tp.source.group or 'tensor'})"
    elif kind == "float":  # not a linear: say which float tensor it is (norm, embedding, output layer)
        kind = "float " + {"output": "output layer"}.get(tp.role, tp.role)
    return kind


def _render_release_plan(out: Output, result) -> None:
    """A release's dry run: exactly the paths the run would write, in the order it writes them."""
    for t in result.targets:
        if not t.ok:
            out.warn(f"{t.label}: {t.error or ''}")
    out.info("the run would write (nothing written now):")
    for p in result.paths():
        out.info(f"  {escape(str(p))}", soft_wrap=True)


def _render_release(out: Output, result) -> None:
    t = Table(title=f"release in {result.outdir}")
    for col in ("output", "status", "bytes", "sha256", "verify"):
        t.add_column(col)
    for a in result.targets:
        v = a.verify
        t.add_row(str(a.path.name), "[green]ok[/green]" if a.ok else f"[red]failed[/red]: {a.error}",
                  f"{a.size:,}" if a.size else "", (a.sha256 or "")[:16],
                  "" if v is None else ("passed" if v.get("passed") else "[red]FAILED[/red]"))
    out.table(t)
    if result.manifest_path:
        out.info(f"manifest: {result.manifest_path}")
    if result.card_path:
        out.info(f"model card: {result.card_path}")
    if result.kernel_config_path:
        out.info(f"kernel config for bitnet.cpp: {result.kernel_config_path}")
    if result.uploaded:
        out.info(f"uploaded: {result.uploaded}")


@app.command(cls=_Command)
def check(
    manifest: Annotated[Path, typer.Argument(help="A bitconv-manifest.json.")],
    source: Annotated[Optional[Path], typer.Option("--source", help="Where the local source folder (or file) is now; the manifest names it only by name.")] = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Re-hash every artifact and source file a manifest lists; exit 1 naming each mismatch."""
    out = Output(_mode(json_, False))

    def body() -> int:
        from .release import check_manifest

        report = check_manifest(manifest, source=source)
        out.result(report)
        if out.human:
            for p in report["problems"]:
                out.err.print(f"[red]mismatch:[/red] {escape(p)}", soft_wrap=True)
            for n in report["notes"]:
                out.warn(n)
            out.info(f"checked {report['checked']} file(s): " + ("[green]all match[/green]" if report["ok"] else
                                                                  f"[red]{len(report['problems'])} problem(s)[/red]"))
        return 0 if report["ok"] else 1

    _run(out, debug, body)


@app.command(cls=_Command)
def inspect(
    file: Annotated[Path, typer.Argument(help="A .gguf file, or a safetensors file or model folder.")],
    kernel_config: Annotated[Optional[Path], typer.Option(help="Check every TL tensor's tiles against a bitnet.cpp build's include/kernel_config.ini; exit 1 naming each tensor that differs or whose shape the build lacks.")] = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show what is inside a GGUF or safetensors file: arch, hparams, tokenizer, tensors."""
    out = Output(_mode(json_, False))

    def body() -> int:
        from .inspect_file import inspect_path

        info = inspect_path(file)
        check = None
        if kernel_config is not None:
            from .kernel_check import check_kernel_config

            check = check_kernel_config(file, kernel_config)
            info["kernel_check"] = check.to_dict()
        out.result(info)
        if out.human:
            out.info(f"[bold]{info['path']}[/bold]: {info['format']}, arch [bold]{info['arch']}[/bold], "
                     f"{len(info['tensors'])} tensors, {_human_bytes(info['file_bytes'])}")
            if info.get("hparams"):
                out.info("hparams: " + ", ".join(f"{k}={v}" for k, v in info["hparams"].items()))
            out.info(f"tokenizer: {info['tokenizer']}")
            if info.get("bitconv"):
                out.info("bitconv: " + ", ".join(f"{k}={v}" for k, v in info["bitconv"].items()))
            for why in (info.get("type_readings") or {}).values():
                out.info(why)
            for note in info.get("notes") or []:  # exactly ternary or not; a Hadamard rotation
                out.info(note)
            t = Table()
            for col in ("tensor", "shape", "type", "bytes"):
                t.add_column(col, justify="right" if col == "bytes" else "left")
            for ti in info["tensors"]:
                t.add_row(ti["name"], "x".join(map(str, ti["shape"])), ti["type"], f"{ti['bytes']:,}")
            out.table(t)
        if check is not None:
            _render_kernel_check(out, check)
            return check.exit_code
        return 0

    _run(out, debug, body)


def _render_kernel_check(out: Output, check) -> None:
    """One line per TL tensor the build would misread; on stderr too, so --json and -q runs see it."""
    from rich.markup import escape

    for problem in check.problems:
        out.warn(problem.message())
    if check.ok:
        out.info(f"[green]kernel config ok[/green]: {escape(check.summary())}")
    elif out.mode != "json":
        out.err.print(f"[red]kernel config mismatch:[/red] {escape(check.summary())}", soft_wrap=True)


@app.command(cls=_Command)
def doctor(
    file: Annotated[Path, typer.Argument(help="Any .gguf file (bitconv's or another tool's).")],
    engine: Annotated[Optional[str], typer.Option(help="Check for this engine: llama.cpp or bitnet.cpp (default: the one the file's types point to).")] = None,
    kernel_config: Annotated[Optional[Path], typer.Option(help="Check TL tiles against a bitnet.cpp build's include/kernel_config.ini.")] = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Check a GGUF for what makes engines refuse or miscompute it. Exit 0 clean, 1 a problem, 2 unreadable."""
    out = Output(_mode(json_, False))

    def body() -> int:
        from .doctor import doctor as run_doctor, render

        report = run_doctor(file, engine=engine, kernel_config=kernel_config)
        out.result(report.to_dict())
        if out.human:
            render(report, out.console)
        return report.exit_code

    _run(out, debug, body)


@app.command(cls=_Command)
def verify(
    artifact: Annotated[str, typer.Argument(help="A GGUF file (bitconv's or another tool's) or packed safetensors folder.")],
    source: Annotated[str, typer.Option("--source", help="The model it was converted from (as for convert).")],
    text: Annotated[Optional[Path], typer.Option(help="Evaluation text (default: the shipped eval text).")] = None,
    tokens: Annotated[int, typer.Option(help="Number of tokens to evaluate.")] = 2048,
    ctx: Annotated[int, typer.Option(help="Context length of each evaluation window.")] = 512,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    act_quant: Annotated[Optional[bool], typer.Option("--act-quant/--no-act-quant", help="Force 8-bit per-token activation quantization on (or off) for both sides. Default: both sides as the source model runs (BitNet models and ternary GGUFs: on; a plain family: off), so only the conversion is measured.")] = None,
    reference: Annotated[str, typer.Option(help="ternary: source ternarized on the fly; fp: also report the unquantized model.")] = "ternary",
    max_ppl_increase: Annotated[str, typer.Option(help="Fail when artifact perplexity exceeds the source's by more than this (e.g. 1%).")] = "1%",
    min_top1: Annotated[float, typer.Option(help="Fail when top-1 agreement with the source is below this.")] = 0.99,
    max_weight_error: Annotated[float, typer.Option(help="Fail when a tensor's dequantized values differ from the source's by more than this fraction of its largest magnitude (ternary codes must match exactly).")] = 1e-2,
    max_kl: Annotated[Optional[float], typer.Option(help="Fail when mean KL(source || artifact) exceeds this.")] = None,
    dtype: Annotated[str, typer.Option(help="Activation dtype: float32, bfloat16 or float16.")] = "float32",
    score_from: Annotated[int, typer.Option(help="Skip this many positions of each window (llama.cpp scores from ctx/2).")] = 0,
    fast: Annotated[Optional[bool], typer.Option("--fast/--no-fast", help="CPU: exact int8 GEMMs, float32 activations in fused kernels, a bfloat16 head with the top logits in float32 (default with float32); --no-fast: transformers' float32 operation order, same metrics, slower.", show_default=False)] = None,
    revision: Annotated[Optional[str], typer.Option(help="Hub revision of the source.")] = None,
    kernel_config: Annotated[Optional[Path], typer.Option(help="Tiles of TL tensors in a GGUF another tool wrote (a bitnet.cpp kernel_config.ini).")] = None,
    source_i2s_variant: Annotated[Optional[str], typer.Option(help="I2_S code order of a GGUF another tool wrote: x86-act (default) or arm.")] = None,
    act: Annotated[str, typer.Option("--act", help="Activation scheme of the artifact side: a8 (BitNet b1.58's per-token int8, the default), a4.8 (BitNet a4.8: 4-bit inputs to attention and FFN, top-50% + 8-bit o_proj input, 8-bit down_proj input) or none; the source keeps its own. Any scheme but a8 also reports the artifact's sparsity.")] = "a8",
    kv_bits: Annotated[Optional[int], typer.Option("--kv-bits", help="Quantize the artifact side's keys and values after rope to 3, 4 or 8 bits (absmax per token and head).")] = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run the artifact and its source on real text; compare perplexity, KL and top-1. Exit 1 on a failed gate."""
    out = Output(_mode(json_, quiet))

    def body() -> int:
        from .verify import render_report, verify as run_verify

        with _verify_progress(out, tokens) as on_progress:
            report = run_verify(
                artifact, source, text=text, tokens=tokens, ctx=ctx, device=device, act_quant=act_quant,
                reference=reference, max_ppl_increase=_fraction(max_ppl_increase), min_top1=min_top1,
                max_weight_error=max_weight_error, max_kl=max_kl, dtype=dtype, score_from=score_from,
                fast=fast, revision=revision, kernel_config=kernel_config, source_i2s_variant=source_i2s_variant,
                act=act, kv_bits=kv_bits, progress=on_progress,
            )
        data = report.to_dict()
        data["ok"] = bool(report.passed)
        out.result(data)
        if out.human:
            render_report(report, out.console)
        return 0 if report.passed else 1

    _run(out, debug, body)


@contextmanager
def _verify_progress(out: Output, tokens: int):
    """verify's progress on stderr in a terminal (nothing with --json / --quiet): it runs all
    windows through one decoder layer at a time, so the bar moves per layer and its rate is
    tokens through the whole model per second (layers done / layers x tokens, from work done)."""
    if not out.show_progress:
        yield None
        return
    from .progress import count_progress

    with count_progress(out.err, "tokens") as bar:
        task = bar.add_task(f"scoring ≤{tokens} tokens", total=float(tokens))

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage == "layer" and total:
                bar.update(task, completed=tokens * done / total, description=f"≤{tokens} tokens, layer {done}/{total}")
            elif stage == "metrics":
                bar.update(task, description="comparing logits" if done < total else "done")

        yield on_progress


def _fraction(text: str) -> float:
    t = text.strip()
    try:
        return float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise UsageError(f"not a fraction or percentage: {text!r}") from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bitconv {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    pass


def main() -> None:
    app()


if __name__ == "__main__":
    main()
