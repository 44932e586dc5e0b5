"""Upload failures (issue 21, 11): typed one-line errors for offline / auth / missing repo /
network, never "internal error", and --json lists every file written although the upload
failed. No network: HF_HUB_OFFLINE=1 (conftest) for the offline case, huggingface_hub's own
typed errors raised through a monkeypatched HfApi for the others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bitconv.release import MANIFEST_NAME

from hostile_helpers import one_error_line, run_cli


def _hf_http_error(cls_name: str, status: int):
    import httpx2
    from huggingface_hub import errors as hf_errors

    request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
    response = httpx2.Response(status, request=request)
    return getattr(hf_errors, cls_name)(f"{status} Client Error", response=response)


def _network_error():
    import httpx2

    return httpx2.ConnectError("[Errno -3] Temporary failure in name resolution")


CASES = {
    "offline": (None, 2, ("HF_HUB_OFFLINE",)),
    "auth": (lambda: _hf_http_error("HfHubHTTPError", 401), 2, ("refused the token", "401")),
    "no-token": (lambda: __import__("huggingface_hub").errors.LocalTokenNotFoundError("no token"), 2, ("no Hub token",)),
    "missing-repo": (lambda: _hf_http_error("RepositoryNotFoundError", 404), 2, ("no such repository",)),
    "network": (_network_error, 1, ("could not be reached", "ConnectError")),
    "hub-down": (lambda: _hf_http_error("HfHubHTTPError", 503), 1, ("HTTP 503",)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_upload_failure_is_one_typed_line_and_json_lists_what_was_written(silu_ckpt, tmp_path, monkeypatch, case):
    import huggingface_hub

    make, code, words = CASES[case]
    if make is not None:
        def fail(self, *a, **k):
            raise make()

        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", fail)
    out = tmp_path / "rel"
    r = run_cli("convert", silu_ckpt, out, "--layout", "tq2_0,i2_s", "--upload-repo", "me/tiny", "--json")
    assert r.exit_code == code, r.output
    line = one_error_line(r)
    assert "not uploaded to me/tiny" in line and "internal error" not in line and str(out) in line
    for w in words:
        assert w in line, line
    data = json.loads(r.stdout)
    assert data["ok"] is False
    names = sorted(Path(p).name for p in data["written"])
    assert names == sorted(p.name for p in out.iterdir())
    assert {MANIFEST_NAME, f"{Path(silu_ckpt).name}-tq2_0.gguf", f"{Path(silu_ckpt).name}-i2_s.gguf"} == set(names)


def test_a_bug_in_upload_is_still_an_internal_error(silu_ckpt, tmp_path, monkeypatch):
    """Only the failures above are mapped: anything else stays visible as a bug."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, *a, **k: 1 / 0)
    r = run_cli("convert", silu_ckpt, tmp_path / "rel", "--layout", "tq2_0", "--upload-repo", "me/tiny")
    assert r.exit_code == 1 and "internal error: ZeroDivisionError" in r.output
