"""Hub sources without network: a real huggingface_hub cache laid out on disk, HF_HUB_OFFLINE=1.

The cache has the exact structure huggingface_hub writes (`models--org--name/refs/main`
holding a commit hash, `snapshots/<commit>/<file>` symlinks into `blobs/`), so the
conversion goes through huggingface_hub's own `snapshot_download` resolution. Most tests
run the CLI in a subprocess with the environment set, the way a user runs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bitconv.convert import convert
from bitconv.errors import SourceNotFoundError
from bitconv.readers.gguf_file import GGUFFile
import waiting

REPO = "bitconv-test/tiny-bitnet"


def add_snapshot(hub_cache: Path, repo_id: str, folder: Path, commit: str, ref: str | None = "main") -> Path:
    """Put FOLDER's files into the cache as snapshot COMMIT of REPO_ID (blobs + symlinks + ref)."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    blobs, snap = repo / "blobs", repo / "snapshots" / commit
    blobs.mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    for f in sorted(folder.iterdir()):
        data = f.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        blob = blobs / digest
        if not blob.exists():
            blob.write_bytes(data)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)  # huggingface_hub writes it without a newline
    return snap


def commit_hash(seed: str) -> str:
    return hashlib.sha1(seed.encode()).hexdigest()


@pytest.fixture
def hf_home(tmp_path) -> Path:
    home = tmp_path / "hf-home"
    (home / "hub").mkdir(parents=True)
    return home


def env_for(hf_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", NO_COLOR="1",
               TORCHDYNAMO_DISABLE="1")
    return env


def bitconv_cli(hf_home: Path, *args: str) -> subprocess.CompletedProcess:
    return waiting.run([sys.executable, "-m", "bitconv.cli", *map(str, args)], 180, env=env_for(hf_home),
                       capture_output=True, text=True)


def tensor_bytes(path: Path) -> dict[str, bytes]:
    f = GGUFFile(path)
    return {n: np.asarray(f.raw(n)).tobytes() for n in f.tensors}


def test_repo_id_resolves_through_refs_main(silu_ckpt, hf_home, tmp_path):
    commit = commit_hash("main")
    add_snapshot(hf_home / "hub", REPO, silu_ckpt, commit)
    out = tmp_path / "hub.gguf"
    p = bitconv_cli(hf_home, "convert", REPO, out, "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["plan"]["source"] == {"kind": "hub", "location": REPO, "revision": None, "commit": commit}
    f = GGUFFile(out)
    assert f.get("general.source.huggingface.repository") == REPO
    assert f.get("bitconv.source.kind") == "hub" and f.get("bitconv.source.location") == REPO
    assert f.get("bitconv.source.commit") == commit
    assert f.get("bitconv.source.revision") is None
    assert f.get("general.name") == "tiny-bitnet"
    # same tensors as converting the folder directly
    local = tmp_path / "local.gguf"
    convert(silu_ckpt, local)
    assert tensor_bytes(out) == tensor_bytes(local)


def test_revision_commit_hash_picks_that_snapshot(silu_ckpt, ckpt_factory, hf_home, tmp_path):
    old, new = commit_hash("old"), commit_hash("new")
    other = ckpt_factory("silu", seed=11)
    add_snapshot(hf_home / "hub", REPO, silu_ckpt, old, ref=None)
    add_snapshot(hf_home / "hub", REPO, other, new)  # refs/main -> new
    out_old, out_main = tmp_path / "old.gguf", tmp_path / "main.gguf"
    p = bitconv_cli(hf_home, "convert", REPO, out_old, "--revision", old, "--quiet")
    assert p.returncode == 0, p.stderr
    p = bitconv_cli(hf_home, "convert", REPO, out_main, "--revision", "main", "--quiet")
    assert p.returncode == 0, p.stderr
    f_old, f_main = GGUFFile(out_old), GGUFFile(out_main)
    assert f_old.get("bitconv.source.commit") == old and f_old.get("bitconv.source.revision") == old
    assert f_main.get("bitconv.source.commit") == new and f_main.get("bitconv.source.revision") == "main"
    assert f_old.get("general.source.huggingface.repository") == REPO
    local_old = tmp_path / "local-old.gguf"
    convert(silu_ckpt, local_old)
    assert tensor_bytes(out_old) == tensor_bytes(local_old)
    assert tensor_bytes(out_main) != tensor_bytes(out_old)


def test_sharded_repo_in_cache(sharded_ckpt, hf_home, tmp_path):
    """Shards in the cache are symlinks into blobs/: the index check must still accept them."""
    commit = commit_hash("sharded")
    add_snapshot(hf_home / "hub", REPO, sharded_ckpt, commit)
    out = tmp_path / "s.gguf"
    p = bitconv_cli(hf_home, "convert", REPO, out, "--quiet")
    assert p.returncode == 0, p.stderr
    local = tmp_path / "local.gguf"
    convert(sharded_ckpt, local)
    assert tensor_bytes(out) == tensor_bytes(local)
    assert GGUFFile(out).get("bitconv.source.commit") == commit


def test_uncached_revision_offline_is_bad_input(silu_ckpt, hf_home, tmp_path):
    add_snapshot(hf_home / "hub", REPO, silu_ckpt, commit_hash("main"))
    out = tmp_path / "x.gguf"
    missing = commit_hash("never-downloaded")
    p = bitconv_cli(hf_home, "convert", REPO, out, "--revision", missing)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and REPO in lines[0] and missing in lines[0] and "cache" in lines[0], p.stderr
    assert not out.exists() and list(tmp_path.glob(".*tmp")) == []


def test_in_process_with_patched_constants(silu_ckpt, hf_home, tmp_path, monkeypatch):
    """The library path: huggingface_hub's constants are read at import, so patch them too."""
    import huggingface_hub.constants as hc

    commit = commit_hash("inproc")
    add_snapshot(hf_home / "hub", REPO, silu_ckpt, commit)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    res = convert(REPO, tmp_path / "a.gguf")
    assert res.plan.spec.source.kind == "hub" and res.plan.spec.source.commit == commit
    with pytest.raises(SourceNotFoundError, match="not in the local Hugging Face cache"):
        convert("bitconv-test/not-there", tmp_path / "b.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf", "hf-home"]
