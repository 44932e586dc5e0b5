"""Release artifacts for CI: several outputs from one read, a manifest, a model card.

Each source tensor is read and ternarized once and handed to every requested output;
each output's writer runs in its own thread fed through a small queue, so memory stays
near one tensor (times the number of outputs) and the source is read once. An output
whose plan fails (relu² in a TQ layout, an untileable shape) fails alone; with
`keep_going` the others are written and the result still reports the failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

from . import __version__
from .convert import (build_options, check_emit_applies, check_emit_path, checkpoint_paths, kernel_config_for,
                      local_source_paths, model_stem, prepare_tensors, source_snapshot)
from .errors import BitconvError, ConversionError, InputError, OutputExistsError, UploadError, UsageError
from .model import SourceInfo
from .plan import ConversionPlan, ConvertOptions, TensorPlan
from .quant import TensorStats
from .readers import open_source
from .source_kind import decide_source_kinds, kind_summary
from .readers.checkpoint import Checkpoint
from .writers import get_writer
from .side_files import (MANIFEST_SCHEMA_ID, MODEL_CARD_STAMP, is_bitconv_kernel_config, is_bitconv_manifest,
                         is_bitconv_model_card)
from .writers.atomic import _abs, atomic_path, check_not_source, check_output, check_side_file, hold_signals, staged

MANIFEST_NAME = "bitconv-manifest.json"
MANIFEST_SCHEMA = Path(__file__).parent / "schemas" / "manifest.schema.json"
_DONE = object()

ENGINE_RUN = {
    "tq1_0": ("llama.cpp", "llama-cli -m {file} -p 'Hello'"),
    "tq2_0": ("llama.cpp", "llama-cli -m {file} -p 'Hello'"),
    "q2_0": ("llama.cpp (CPU, CUDA, Metal, Vulkan)", "llama-cli -m {file} -p 'Hello' -ngl 99"),
    "i2_s": ("bitnet.cpp", "python run_inference.py -m {file} -p 'Hello'"),
    "tl1": ("bitnet.cpp (ARM, kernels for this model's tiles)", "python run_inference.py -m {file} -p 'Hello'"),
    "tl2": ("bitnet.cpp (x86, kernels for this model's tiles)", "llama-cli -m {file} -p 'Hello' -ub 7"),
    "safetensors": ("transformers", "BitNetForCausalLM.from_pretrained('{file}')"),
    "mlx": ("mlx-lm (Apple silicon)", "mlx_lm.generate --model {file} --prompt 'Hello'"),
    # vLLM cannot run where bitconv's tests run (no GPU): this line is what a user would run, never a
    # result bitconv measured. transformers loads the folder too (AutoModelForCausalLM), as the judge does.
    "compressed-tensors": ("vLLM (not run by bitconv; transformers loads it too)", "vllm serve {file}"),
}
FOLDER_FORMATS = ("safetensors", "mlx", "compressed-tensors")  # artifacts that are folders


@dataclass
class Target:
    label: str  # layout name, or "safetensors"
    path: Path
    options: ConvertOptions
    plan: ConversionPlan | None = None
    error: str | None = None
    exit_code: int = 0
    sha256: str | None = None
    size: int = 0
    files: dict[str, str] | None = None  # a folder artifact: relative path -> sha256, hashed once
    verify: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self, root: Path, public: PublicPaths | None = None) -> dict[str, Any]:
        """`public` given: the form a published manifest holds (no local paths)."""
        d: dict[str, Any] = {"path": _rel(self.path, root), "label": self.label, "format": self.options.format,
                             "ok": self.ok}
        if self.options.format == "gguf":
            d["layout"] = self.options.layout
        if self.error:
            d["error"] = public.text(self.error) if public is not None else self.error
        if self.plan is not None:
            d["tensor_count"] = len(self.plan.tensors)
            d["arch"] = self.plan.arch
            d["engine"] = self.plan.engine
            if "tiles" in self.plan.layout_metadata:
                d["kernel_config"] = self.plan.layout_metadata["tiles"]
        if self.sha256:
            d["sha256"], d["bytes"] = self.sha256, self.size
            if self.files is not None:
                d["files"] = dict(self.files)
        if self.verify is not None:
            d["verify"] = public.scrub(self.verify) if public is not None else self.verify
        return d


@dataclass
class ReleaseResult:
    outdir: Path
    targets: list[Target]
    stats: list[TensorStats] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    manifest_path: Path | None = None
    card_path: Path | None = None
    kernel_config_path: Path | None = None
    uploaded: str | None = None
    seconds: float = 0.0
    dry_run: bool = False

    def paths(self) -> list[Path]:
        """Every path this release writes (a dry run: would write), in the order written."""
        out = [t.path for t in self.targets if t.ok]
        if self.kernel_config_path is not None and self.tl_ok:
            out.append(self.kernel_config_path)
        return out + [p for p in (self.manifest_path, self.card_path) if p is not None]

    @property
    def tl_ok(self) -> bool:
        return any(t.ok and t.options.emit_kernel_config is not None for t in self.targets)

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.targets) and all(
            t.verify is None or t.verify.get("passed", True) for t in self.targets)

    @property
    def exit_code(self) -> int:
        codes = [t.exit_code for t in self.targets if not t.ok]
        if codes:
            return max(codes)
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        d = {"ok": self.ok, "outdir": str(self.outdir), "seconds": round(self.seconds, 3),
             "artifacts": [t.to_dict(self.outdir) for t in self.targets],
             "manifest": str(self.manifest_path) if self.manifest_path else None,
             "model_card": str(self.card_path) if self.card_path else None,
             "kernel_config": str(self.kernel_config_path) if self.kernel_config_path else None,
             "uploaded": self.uploaded, "tensors": [s.to_dict() for s in self.stats],
             "paths": [str(p) for p in self.paths()], "dry_run": self.dry_run}
        if self.dry_run:
            d["plans"] = [t.plan.to_dict() for t in self.targets if t.plan is not None]
        return d


def _rel(p: Path, root: Path) -> str:
    """`p` relative to `root`; a path outside it by its name only (never an absolute path)."""
    try:
        return p.resolve().relative_to(root.resolve()).as_posix() or "."
    except ValueError:
        return p.name


# Options whose value is a name, never a local path; options whose value is a secret.
_LITERAL_OPTIONS = frozenset({"--upload-repo", "--revision", "--name", "--layout", "--format"})
_SECRET_OPTIONS = frozenset({"--token"})


@dataclass(frozen=True)
class PublicPaths:
    """How a manifest that `--upload-repo` may publish names local things.

    The manifest lies in `outdir`: paths inside it are written relative to it, any other
    local path by its folder or file name only (`/home/<user>/models/x` -> `x`); the source
    as `SourceInfo.public_location` (a Hub id or builtin name as given); token values as
    `***`. The same command gives the same manifest from any working directory.
    """

    outdir: Path
    source: SourceInfo
    source_arg: str | None = None  # the SOURCE argument exactly as the user gave it

    def path(self, p: str | Path) -> str:
        return _rel(Path(p).expanduser(), self.outdir)

    def value(self, v: str) -> str:
        """One string: the source argument, a local path, or text that may embed one."""
        if self.source_arg is not None and v == self.source_arg:
            return self.source.public_location
        if _is_local_path(v):
            return self.path(v)
        return self.text(v)

    def text(self, v: str) -> str:
        """Replace local paths known to this release inside free text (e.g. a tokenizer note)."""
        private: dict[str, str] = {}
        if self.source.kind not in ("hub", "builtin"):
            for form in (str(self.source.path), str(Path(self.source.path).resolve()), self.source.location):
                private[form] = self.source.public_location
        for form in (str(self.outdir), str(self.outdir.resolve())):
            private[form.rstrip(os.sep) + os.sep] = ""
        home = os.path.expanduser("~")
        if home not in ("", "/", "~"):
            private[home] = "~"
        for old in sorted(private, key=len, reverse=True):
            if len(old) > 1:
                v = v.replace(old, private[old])
        return v

    def command(self, argv: list[str]) -> list[str]:
        out: list[str] = []
        pending: str | None = None  # the option whose value comes next
        for arg in argv:
            if pending is not None:
                out.append("***" if pending in _SECRET_OPTIONS else arg)
                pending = None
            elif arg in _SECRET_OPTIONS or arg in _LITERAL_OPTIONS:
                out.append(arg)
                pending = arg
            elif arg.startswith("--") and "=" in arg:
                key, val = arg.split("=", 1)
                val = "***" if key in _SECRET_OPTIONS else val if key in _LITERAL_OPTIONS else self.value(val)
                out.append(f"{key}={val}")
            else:
                out.append(self.value(arg))
        return out

    def scrub(self, obj: Any) -> Any:
        """Every string inside a JSON-like value through `value`."""
        if isinstance(obj, str):
            return self.value(obj)
        if isinstance(obj, Path):
            return self.path(obj)
        if isinstance(obj, dict):
            return {k: self.scrub(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.scrub(v) for v in obj]
        return obj


def _is_local_path(v: str) -> bool:
    """Absolute, home-relative, or naming something that exists here (a relative path)."""
    if not v or v.startswith("-") or "\n" in v:
        return False
    if v.startswith(("/", "~")) or (len(v) > 2 and v[1] == ":" and v[2] in "\\/"):
        return True
    try:
        return Path(v).exists()
    except (OSError, ValueError):
        return False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hash_artifact(path: Path) -> tuple[str, int, dict[str, str] | None]:
    """(sha256, bytes, per-file sha256s) of an artifact: a file's own digest (no per-file map);
    for a folder, the digest of its sorted (relative path, file sha256) list and that list."""
    if path.is_file():
        return _sha256(path), path.stat().st_size, None
    h = hashlib.sha256()
    size = 0
    files: dict[str, str] = {}
    for p in sorted(path.rglob("*")):
        if p.is_file():
            rel, digest = _rel(p, path), _sha256(p)
            files[rel] = digest
            h.update(f"{rel}\0{digest}\n".encode())
            size += p.stat().st_size
    return h.hexdigest(), size, files


def release(
    source: str | Path,
    outdir: str | Path,
    *,
    layouts: list[str],
    formats: list[str] = ("gguf",),
    keep_going: bool = False,
    write_manifest: bool = True,
    model_card: bool = False,
    verify: bool = False,
    verify_options: dict[str, Any] | None = None,
    upload_repo: str | None = None,
    private: bool = False,
    timestamp: bool = False,
    revision: str | None = None,
    token: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    command: list[str] | None = None,
    paths: dict[str, Path] | None = None,
    progress: Callable[[TensorPlan], None] | None = None,
    on_plan: Callable[[ReleaseResult], None] | None = None,
    **option_kwargs: Any,
) -> ReleaseResult:
    """Convert SOURCE into every requested layout/format inside OUTDIR from one read.

    Outputs are named `<model>-<layout>.gguf` / `<model>-safetensors` unless `paths` maps a
    label (layout name or "safetensors") to an explicit path. Returns a `ReleaseResult`;
    its `exit_code` is non-zero when any output failed or failed verify. `dry_run` plans
    every output and returns the exact paths the run would write (`ReleaseResult.paths`),
    writing nothing.

    Every file goes through the output guard (`writers.atomic.Stage`): the outputs, then the
    kernel config (`emit_kernel_config`, for the one TL layout), the manifest and the model
    card, each refused up front when it exists (without `force`) or is not bitconv's.
    """
    outdir = Path(outdir)
    formats = [f.lower() for f in formats]
    if "gguf" in formats and not layouts:
        raise UsageError("--format gguf needs at least one --layout")
    if upload_repo and not write_manifest:
        raise UsageError("--upload-repo publishes a release with its manifest; do not disable the manifest")
    _check_not_source(outdir, paths, local_source_paths(source))
    if outdir.exists() and not outdir.is_dir():
        raise OutputExistsError(f"{outdir} exists and is not a folder; several outputs go into a folder")
    start = time.perf_counter()
    from .convert import gguf_read_options

    foreign = gguf_read_options(option_kwargs.pop("source_i2s_variant", None), option_kwargs.get("kernel_config"))
    ckpt = open_source(source, revision=revision, token=token, gguf_options=foreign)
    _check_not_source(outdir, paths, checkpoint_paths(ckpt))
    from .rotation import refuse_rotated

    refuse_rotated(ckpt, ",".join(formats))  # no target keeps a Hadamard rotation (issue 20)
    # what each source tensor is, before any folder is made (a float model is refused here)
    decide_source_kinds(ckpt, ternarize=bool(option_kwargs.get("ternarize")))
    if "gguf" in formats and "auto" in layouts:  # no --layout: the one the model's engine runs
        layouts, paths = _resolve_auto(ckpt, outdir, layouts, paths, option_kwargs)
    release_once = partial(_release, ckpt, source, outdir, layouts, formats, keep_going, write_manifest, model_card,
                           verify, verify_options, upload_repo, private, timestamp, revision, token, force, command,
                           paths, progress, option_kwargs, start, on_plan)
    if dry_run:
        return release_once(dry_run=True)
    created = [p for p in (outdir, *outdir.parents) if not p.exists()]
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{outdir}: cannot create the output folder ({exc.strerror or exc})") from None
    try:
        return release_once()
    except BaseException:
        with hold_signals(reraise=False):  # a second signal must not leave the folders behind
            for p in created:  # folders this call made, while still empty: nothing of the user's
                try:
                    p.rmdir()
                except OSError:
                    break
        raise


def _check_not_source(outdir: Path, paths: dict[str, Path] | None, sources: list[Path]) -> None:
    """A release folder may not be, hold or sit inside a source. A single named output
    (`convert src o.gguf --manifest`: OUTDIR is o.gguf's folder, often the one holding src/)
    writes only its file, the manifest and the model card there, so those are checked
    instead of the whole folder, which may hold the source beside them."""
    if not paths:
        check_not_source(outdir, sources, what="output folder")
        return
    for p in (*paths.values(), outdir / MANIFEST_NAME, outdir / "README.md"):
        check_not_source(Path(p), sources)


def _resolve_auto(ckpt: Checkpoint, outdir: Path, layouts: list[str], paths: dict[str, Path] | None,
                  option_kwargs: dict[str, Any]) -> tuple[list[str], dict[str, Path] | None]:
    """Replace `auto` in LAYOUTS (and as a key of PATHS) by the default layout for CKPT."""
    from .default_layout import AUTO, choose_gguf_plan

    plan, _why = choose_gguf_plan(ckpt, outdir / "default.gguf", build_options(layout=AUTO, **option_kwargs))
    chosen = plan.options.layout
    layouts = list(dict.fromkeys(chosen if x == AUTO else x for x in layouts))
    if paths and AUTO in paths:
        paths = {(chosen if k == AUTO else k): v for k, v in paths.items()}
    return layouts, paths


def _release(ckpt: Checkpoint, source, outdir: Path, layouts, formats, keep_going, write_manifest, model_card,
             verify, verify_options, upload_repo, private, timestamp, revision, token, force, command, paths,
             progress, option_kwargs, start, on_plan=None, dry_run: bool = False) -> ReleaseResult:
    model = model_stem(option_kwargs.get("name"), ckpt)
    emit = option_kwargs.get("emit_kernel_config")
    emit = Path(emit) if emit else None
    labels = [lab for fmt in formats for lab in (layouts if fmt == "gguf" else [fmt])]
    tl_label = check_emit_applies(labels) if emit is not None else None
    targets: list[Target] = []
    for fmt in formats:
        for label in (layouts if fmt == "gguf" else [fmt]):
            opts = build_options(layout=label if fmt == "gguf" else "tq2_0", format=fmt,
                                 **{**option_kwargs, "emit_kernel_config": emit if label == tl_label else None})
            path = (paths or {}).get(label) or outdir / (
                f"{model}-{label}.gguf" if fmt == "gguf" else f"{model}-{fmt}")
            targets.append(Target(label=label, path=path, options=opts))
    first: tuple[Target, BitconvError] | None = None
    kernel_ini: str | None = None
    for t in targets:
        try:
            if not dry_run:
                check_output(t.path, force, checkpoint_paths(ckpt, t.options))
            if t.options.emit_kernel_config is not None:
                check_emit_path(emit, t.path, checkpoint_paths(ckpt, t.options), force=force, dry_run=dry_run)
            t.plan = get_writer(t.options.format).plan(ckpt, t.path, t.options)
            t.plan.notes = list(ckpt.source_kind_notes) + t.plan.notes
            if t.options.emit_kernel_config is not None:
                kernel_ini = kernel_config_for(t.plan)
        except BitconvError as exc:
            t.error, t.exit_code = str(exc), exc.exit_code
            first = first or (t, exc)
    if first is not None and not keep_going:
        bad, exc = first  # raised as its own type (OutputExistsError, LayoutError, ...), named by its label
        raise type(exc)(f"{bad.label}: {bad.error}",
                        hint="fix it, drop that layout, or pass --keep-going to write the others")
    side = _side_files(outdir, write_manifest, model_card, emit)
    for path, ours, what in side:  # before a byte is written: a user's README.md stops the run here
        check_not_source(path, checkpoint_paths(ckpt), what=what)
        if any(_abs(path) == _abs(t.path) for t in targets):
            raise UsageError(f"{path}: the {what} would be written over one of the outputs; choose another path")
        if not dry_run:
            check_side_file(path, force, ours, what)
    result = ReleaseResult(outdir=outdir, targets=targets, dry_run=dry_run,
                           manifest_path=outdir / MANIFEST_NAME if write_manifest else None,
                           card_path=outdir / "README.md" if model_card else None,
                           kernel_config_path=emit if kernel_ini is not None else None)
    if on_plan is not None:
        on_plan(result)  # the CLI learns every path the run writes, to report an interrupt truly
    if dry_run:
        return result
    stats: list[TensorStats] = []
    live = [t for t in targets if t.ok]
    snapshot = source_snapshot(ckpt, targets[0].options if targets else None)
    if live:
        _write_all(ckpt, live, force, stats, progress, snapshot)
    for t in live:
        if t.ok:
            t.sha256, t.size, t.files = _hash_artifact(t.path)
    if verify:
        from .verify import verify as run_verify

        for t in live:
            if t.ok:
                rep = run_verify(t.path, source, revision=revision, **(verify_options or {}))
                t.verify = rep.to_dict()
    result.stats = stats
    if not any(t.ok for t in targets):  # nothing was written: no manifest, card or kernel config of nothing
        result.manifest_path = result.card_path = result.kernel_config_path = None
        result.seconds = time.perf_counter() - start
        return result
    with staged(force) as stage:  # the side files, through the outputs' guard, after them
        if kernel_ini is not None and result.tl_ok:
            stage.text(emit, kernel_ini, ours=is_bitconv_kernel_config, what="kernel config")
        elif kernel_ini is not None:
            result.kernel_config_path = None  # its TL output failed: no tiles to build kernels for
        if write_manifest:
            result.manifest = build_manifest(ckpt, targets, outdir, command, option_kwargs, layouts, formats,
                                             timestamp, source_arg=str(source))
            # the hashes just taken are of the files read only if none changed since they were opened
            snapshot.verify()
            stage.text(result.manifest_path, json.dumps(result.manifest, indent=2, sort_keys=True) + "\n",
                       ours=is_bitconv_manifest, what="manifest")
        if model_card:
            stage.text(result.card_path, render_model_card(ckpt, targets, outdir),
                       ours=is_bitconv_model_card, what="model card")
    result.seconds = time.perf_counter() - start
    if upload_repo:
        if not result.ok:
            raise ConversionError(f"not uploading to {upload_repo}: some artifacts failed or failed verify",
                                  hint="see the manifest; the files are kept for inspection")
        result.uploaded = upload(outdir, upload_repo, private=private, token=token)
    return result


def _side_files(outdir: Path, manifest: bool, card: bool,
                emit: Path | None) -> list[tuple[Path, Callable[[Path], bool], str]]:
    """(path, recognizer of bitconv's own file, what) of each side file this release writes."""
    side = []
    if emit is not None:
        side.append((emit, is_bitconv_kernel_config, "kernel config"))
    if manifest:
        side.append((outdir / MANIFEST_NAME, is_bitconv_manifest, "manifest"))
    if card:
        side.append((outdir / "README.md", is_bitconv_model_card, "model card"))
    return side


def _write_all(ckpt: Checkpoint, targets: list[Target], force: bool, stats: list[TensorStats],
               progress: Callable[[TensorPlan], None] | None, snapshot: Any = None) -> None:
    """Read each source tensor once and feed it to every target's writer thread."""
    queues = {id(t): queue.Queue(maxsize=2) for t in targets}
    by_source = [{tp.source.name: tp for tp in t.plan.tensors} for t in targets]

    def run(t: Target, q: queue.Queue) -> None:
        def items() -> Iterator:
            while True:
                item = q.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item

        try:
            with atomic_path(t.path, force=force) as tmp:
                get_writer(t.options.format).write(tmp, t.plan, items())
                if snapshot is not None:
                    snapshot.verify()  # a source replaced or rewritten meanwhile: this output is not committed
        except BitconvError as exc:
            t.error, t.exit_code = str(exc), exc.exit_code
        except BaseException as exc:  # noqa: BLE001 - reported per target, never swallowed silently
            t.error, t.exit_code = f"{type(exc).__name__}: {exc}", 1

    threads = [threading.Thread(target=run, args=(t, queues[id(t)]), daemon=True) for t in targets]
    for th in threads:
        th.start()

    def send(i: int, item: Any) -> None:
        q = queues[id(targets[i])]
        while threads[i].is_alive():
            try:
                q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    # One union plan in source order; payloads are computed once per (tensor, group).
    order = _union(ckpt, targets)
    union_plan = ConversionPlan(spec=ckpt.spec, output=targets[0].path, format="multi",
                                options=targets[0].options, tensors=order)
    prepared = prepare_tensors(union_plan, stats, progress)
    try:
        for tp, payload in prepared:
            for i, m in enumerate(by_source):
                own = m.get(tp.source.name)
                if own is not None:
                    send(i, (own, _payload_for(own, payload)))
        prepared.close()
        for i in range(len(targets)):
            send(i, _DONE)
        for th in threads:
            th.join()
    except BaseException as exc:
        # A signal (or error) in the main thread: every writer thread removes its temporary
        # output before the process may exit (they are daemons), and a second Ctrl-C or
        # SIGTERM meanwhile is held, never allowed to cut that cleanup short (issue 25).
        with hold_signals(reraise=False):
            prepared.close()
            for i in range(len(targets)):
                send(i, exc)
            for th in threads:
                th.join()
        raise


def _union(ckpt: Checkpoint, targets: list[Target]) -> list[TensorPlan]:
    """Every tensor any target needs, once, in the checkpoint's canonical order. A ternary
    embedding/output that one target keeps ternary (q2_0, MLX) and another writes as floats is
    read as ternary once; `_payload_for` dequantizes it for the float targets."""
    seen: dict[str, TensorPlan] = {}
    for t in targets:
        for tp in t.plan.tensors:
            if tp.source.name not in seen or _wants_ternary(tp):
                if not _wants_ternary(seen.get(tp.source.name)):
                    seen[tp.source.name] = tp
    return [seen[s.name] for s in ckpt.tensors if s.name in seen]


def _wants_ternary(tp: TensorPlan | None) -> bool:
    """A non-linear tensor planned in a ternary layout (its payload is the source's Ternary)."""
    from .model import LINEAR
    from .pack import layout_names

    return tp is not None and tp.role != LINEAR and tp.source.is_ternary and tp.out_type in layout_names()


def _payload_for(own: TensorPlan, payload: Any) -> Any:
    """The payload as this target's plan takes it: floats for a table it writes as floats."""
    from .model import LINEAR
    from .quant import Ternary

    if isinstance(payload, Ternary) and own.role != LINEAR and not _wants_ternary(own):
        return payload.dequantize()
    return payload


def build_manifest(ckpt: Checkpoint, targets: list[Target], outdir: Path, command: list[str] | None,
                   options: dict[str, Any], layouts: list[str], formats: list[str], timestamp: bool,
                   source_arg: str | None = None) -> dict:
    """The manifest as it may be published: no local path in it (see `PublicPaths`); the
    source located by `location` (Hub id, builtin name, or a local folder/file's name) plus
    the sha256 of every file read; artifacts relative to the manifest's folder."""
    src = ckpt.spec.source
    root = src.path if src.path.is_dir() else src.path.parent
    public = PublicPaths(outdir, src, source_arg)
    m: dict[str, Any] = {
        "schema": MANIFEST_SCHEMA_ID,
        "bitconv_version": __version__,
        "options": {"layouts": list(layouts), "formats": list(formats),
                    **{k: public.scrub(v) for k, v in sorted(options.items())}},
        "source": {
            "kind": src.kind, "location": src.public_location, "revision": src.revision, "commit": src.commit,
            "family": ckpt.spec.family,
            "tensor_kinds": kind_summary(ckpt.tensors),
            "files": [{"path": _rel(p, root), "sha256": _sha256(p), "bytes": p.stat().st_size}
                      for p in sorted(ckpt.files)],
        },
        "artifacts": [t.to_dict(outdir, public) for t in targets],
    }
    if command is not None:
        m["command"] = public.command(list(command))
    if timestamp:
        m["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return m


def check_manifest(path: str | Path, source: str | Path | None = None) -> dict[str, Any]:
    """Re-hash every artifact and source file a manifest lists; report each mismatch.

    A local source is recorded by name only, so its files are checked when `source` says
    where that folder (or file) is now; without it they are left unchecked and a note says
    so. Hub and builtin sources are found on their own (the Hub cache, the package).

    The manifest is validated against its schema first, and every path in it must resolve
    inside the manifest's folder (artifacts) or the source folder (see `manifest_safety`);
    anything else is refused with exit 2 before a byte is hashed.
    """
    from .manifest_safety import load_manifest, member

    path = Path(path)
    m = load_manifest(path)
    root = path.parent
    # Every path is resolved and refused if unsafe before anything is hashed.
    artifacts = [(a, member(root, a["path"], "artifact", path, folder=a.get("format") in FOLDER_FORMATS))
                 for a in m["artifacts"] if a.get("ok", True) and "sha256" in a]
    src = m["source"]
    src_root, note, allowed = _source_root(src, source, path)
    notes = [note] if note else []
    sources = [(f, member(src_root, f["path"], "source file", path, allowed=allowed) if src_root else None)
               for f in (src["files"] if note is None else [])]
    given = Path(source).expanduser() if source is not None else None
    if given is not None and given.is_file():
        # --source FILE names the file itself (a renamed GGUF): hash it, not the recorded
        # name in its folder, which may be another file or none
        if len(src["files"]) != 1:
            raise InputError(f"{given}: the manifest's source has {len(src['files'])} files; pass its folder",
                             hint="--source FILE is for a source that was one file (a GGUF)")
        sources = [(src["files"][0], given)]
    problems: list[str] = []
    checked = 0
    for a, p in artifacts:
        checked += 1
        if not p.exists():
            problems.append(f"missing artifact: {a['path']}")
            continue
        if p.is_file() and "bytes" in a and p.stat().st_size != a["bytes"]:
            problems.append(f"artifact changed: {a['path']} ({p.stat().st_size} bytes != {a['bytes']})")
            continue
        digest, _, files = _hash_artifact(p)
        if digest != a["sha256"]:
            each = _folder_changes(a, files) if files is not None and isinstance(a.get("files"), dict) else []
            problems.extend(each or [f"artifact changed: {a['path']} (sha256 {digest[:12]}… != {a['sha256'][:12]}…)"])
    for f, p in sources:
        if p is None:
            problems.append(f"source file not checkable here: {f['path']}")
            continue
        checked += 1
        if not p.exists():
            problems.append(f"missing source file: {p}")
        elif p.stat().st_size != f["bytes"] or _sha256(p) != f["sha256"]:
            problems.append(f"source file changed: {p}")
    return {"manifest": str(path), "checked": checked, "ok": not problems, "problems": problems,
            "source_checked": note is None and src_root is not None, "notes": notes}


def _folder_changes(artifact: dict[str, Any], now: dict[str, str]) -> list[str]:
    """Each file of a folder artifact (packed safetensors) that is missing, changed or new,
    against the per-file sha256s the manifest recorded (issue 21: name each one)."""
    recorded: dict[str, str] = artifact["files"]
    name = artifact["path"]
    out = [f"missing file of artifact {name}: {rel}" for rel in sorted(recorded) if rel not in now]
    out += [f"file of artifact {name} changed: {rel} (sha256 {now[rel][:12]}… != {str(recorded[rel])[:12]}…)"
            for rel in sorted(recorded) if rel in now and now[rel] != recorded[rel]]
    out += [f"file of artifact {name} not in the manifest: {rel}" for rel in sorted(now) if rel not in recorded]
    return out


def _source_root(src: dict[str, Any], given: str | Path | None,
                 manifest: Path) -> tuple[Path | None, str | None, Path | None]:
    """(folder the recorded source files are relative to, or None; a note when the source is
    deliberately left unchecked; where the source's symlinks may lead). `given` (check
    --source) wins over the manifest. A folder the manifest names is checked not to be
    the file system root; a builtin name may not leave the package's data folder."""
    from .manifest_safety import member, source_root_ok

    kind, location = src.get("kind"), src.get("location") or ""
    if given is not None:
        p = Path(given).expanduser()
        if not p.exists() and kind in ("builtin", "hub") and str(given) == location:
            given = None  # the SOURCE convert was given (`builtin:…`, a Hub id): found as without --source
        elif not p.exists():
            raise InputError(f"{p}: no such source folder or file", hint="pass the folder (or file) the release was converted from")
        else:
            return (p if p.is_dir() else p.parent), None, None
    if kind == "builtin":
        from .readers import BUILTIN_PREFIX, DATA_DIR

        name = location[len(BUILTIN_PREFIX):] if location.startswith(BUILTIN_PREFIX) else location
        return member(DATA_DIR, name, "builtin model", manifest, folder=True), None, None
    if kind == "hub":
        snap = _hub_snapshot(location, src.get("commit"))
        return snap, None, (snap.parent.parent if snap is not None else None)  # snapshot files link into blobs/
    if kind in ("folder", "gguf"):
        legacy = Path(location)  # manifests before bitconv recorded local sources by name
        try:
            usable = legacy.is_absolute() and legacy.exists()
        except (OSError, ValueError):
            usable = False
        if usable:
            root = legacy if legacy.is_dir() else legacy.parent
            source_root_ok(root, manifest)
            return root, None, None
        return None, (f"source files not checked: the manifest names the local source only as "
                      f"{location[:80]!r}; pass --source PATH to check them"), None
    return None, None, None


def _hub_snapshot(repo: str | None, commit: str | None) -> Path | None:
    if not repo or not commit:
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, revision=commit, local_files_only=True))
    except Exception:
        return None


def render_model_card(ckpt: Checkpoint, targets: list[Target], outdir: Path) -> str:
    src = ckpt.spec.source
    base = src.location if src.kind == "hub" else None
    tags = ["bitnet", "ternary", "1.58-bit", "bitconv"]
    if any(t.options.format == "gguf" and t.ok for t in targets):
        tags.append("gguf")
    if any(t.options.format == "safetensors" and t.ok for t in targets):
        tags.append("safetensors")
    tags += [f for f in ("mlx", "compressed-tensors") if any(t.options.format == f and t.ok for t in targets)]
    lines = ["---"]
    if base:
        lines.append(f"base_model: {base}")
    lines += ["library_name: " + ("gguf" if "gguf" in tags else "transformers"), "tags:"]
    lines += [f"- {t}" for t in tags]
    lines += [MODEL_CARD_STAMP, "---", "",
              f"# {ckpt.spec.name} (ternary, converted by bitconv {__version__})", "",
              f"Converted from `{src.public_location}`" + (f" at commit `{src.commit}`" if src.commit else "")
              + f" ({ckpt.spec.family}, {ckpt.spec.hparams.num_layers} layers, hidden {ckpt.spec.hparams.hidden_size}).",
              "", "| file | layout | size | bits/weight | engine | run it |", "|---|---|---|---|---|---|"]
    from .pack import layout_class

    for t in targets:
        if not t.ok:
            continue
        bpw = "2.0" if t.options.format in FOLDER_FORMATS else f"{layout_class(t.options.layout).bits_per_weight:.4g}"
        engine, cmd = ENGINE_RUN.get(t.label, ("", ""))
        lines.append(f"| `{_rel(t.path, outdir)}` | {t.label} | {t.size / 1e6:.1f} MB | {bpw} | {engine} | "
                     f"`{cmd.format(file=_rel(t.path, outdir))}` |")
    verified = [t for t in targets if t.verify]
    if verified:
        lines += ["", "## Verification (bitconv verify)", "",
                  "| file | source ppl | artifact ppl | change | KL | top-1 | passed |", "|---|---|---|---|---|---|---|"]
        for t in verified:
            v = t.verify
            lines.append(f"| `{_rel(t.path, outdir)}` | {v.get('source_perplexity', float('nan')):.3f} | "
                         f"{v.get('artifact_perplexity', float('nan')):.3f} | {v.get('ppl_change', 0):+.2%} | "
                         f"{v.get('mean_kl', 0):.4g} | {v.get('top1_agreement', 0):.3f} | {v.get('passed')} |")
    lines += ["", f"Checksums and options: `{MANIFEST_NAME}` (re-check with `bitconv check {MANIFEST_NAME}`).", ""]
    return "\n".join(lines)


def upload(outdir: Path, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Publish OUTDIR with huggingface_hub's public API (create_repo + upload_folder).

    Every failure is one typed line that says the release is on disk (`UploadError`):
    offline mode, no or a refused token, a missing repository, the network, the Hub."""
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hf_errors

    kept = f"the release is written in {outdir}"
    try:
        api = HfApi(token=token)
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(outdir), commit_message=f"bitconv {__version__} release")
    except hf_errors.OfflineModeIsEnabled:
        raise UploadError(f"not uploaded to {repo_id}: HF_HUB_OFFLINE is set, so the Hub cannot be reached; {kept}",
                          hint="unset HF_HUB_OFFLINE and run again with --force", exit_code=2) from None
    except hf_errors.LocalTokenNotFoundError:
        raise UploadError(f"not uploaded to {repo_id}: no Hub token; {kept}",
                          hint="log in with `hf auth login` or set HF_TOKEN", exit_code=2) from None
    except hf_errors.RepositoryNotFoundError:
        raise UploadError(f"not uploaded to {repo_id}: no such repository, or this token cannot see it; {kept}",
                          hint="check the repo name and that the token may write to it", exit_code=2) from None
    except hf_errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise UploadError(f"not uploaded to {repo_id}: the Hub refused the token (HTTP {status}); {kept}",
                              hint="use a token with write access (`hf auth login` or HF_TOKEN)", exit_code=2) from None
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UploadError(f"not uploaded to {repo_id}: the Hub answered HTTP {status} ({first}); {kept}",
                          hint="try again later") from None
    except Exception as exc:
        if not _is_network_error(exc):
            raise
        raise UploadError(f"not uploaded to {repo_id}: the Hub could not be reached ({type(exc).__name__}); {kept}",
                          hint="check the network and run again with --force") from None
    return str(url)


def _is_network_error(exc: BaseException) -> bool:
    """A connection, DNS or timeout failure, from the OS or the HTTP client huggingface_hub
    uses (httpx, or requests in older versions)."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    names = {"TransportError", "RequestError", "ConnectionError", "ConnectError", "Timeout", "TimeoutException",
             "NetworkError", "ProtocolError"}
    return any(c.__name__ in names and c.__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3")
               for c in type(exc).__mro__)
