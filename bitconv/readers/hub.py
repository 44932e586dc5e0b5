"""Hugging Face Hub sources, through huggingface_hub's own download and cache.

Only the files a conversion needs are fetched. Token, cache location and offline mode
follow huggingface_hub's usual settings (HF_TOKEN / `hf auth login`, HF_HOME,
HF_HUB_OFFLINE), so bitconv shares the cache with every other HF tool.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import InputError, SourceNotFoundError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "*.safetensors",
    "model.safetensors.index.json",
]


def looks_like_repo_id(text: str) -> bool:
    return bool(REPO_ID.match(text))


def download(repo_id: str, revision: str | None = None, token: str | None = None) -> tuple[Path, str]:
    """Fetch (or find in the cache) the files of `repo_id`; return (folder, commit hash)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub import errors as hf_errors

    try:
        folder = Path(
            snapshot_download(repo_id, revision=revision, token=token, allow_patterns=ALLOW_PATTERNS)
        )
    except hf_errors.GatedRepoError:
        raise InputError(
            f"{repo_id}: the repository is gated",
            hint="accept its terms on the Hub, then log in with `hf auth login` or set HF_TOKEN",
        ) from None
    except hf_errors.RepositoryNotFoundError:
        raise SourceNotFoundError(
            f"{repo_id}: no such repository on the Hub (or it is private)",
            hint="check the name, or log in with `hf auth login` / set HF_TOKEN for a private repo",
        ) from None
    except hf_errors.RevisionNotFoundError:
        raise SourceNotFoundError(f"{repo_id}: revision {revision!r} does not exist") from None
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled) as exc:
        offline = _offline_mode()
        raise SourceNotFoundError(
            f"{repo_id}{'@' + revision if revision else ''}: not in the local Hugging Face cache and "
            + ("HF_HUB_OFFLINE is set, so the Hub was not asked" if offline else
               f"the Hub cannot be reached ({type(exc).__name__})"),
            # only name the setting the user has: "unset HF_HUB_OFFLINE" when it is unset misleads
            hint="download it first with `hf download`, "
                 + ("unset HF_HUB_OFFLINE, " if offline else "check the network connection, ")
                 + "or pass a local folder",
        ) from None
    except hf_errors.HfHubHTTPError as exc:
        raise SourceNotFoundError(f"{repo_id}: the Hub refused the download ({exc})") from None
    return folder, folder.name


def _offline_mode() -> bool:
    """Whether huggingface_hub runs offline (HF_HUB_OFFLINE set to a true value)."""
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except (ImportError, AttributeError):  # pragma: no cover - older huggingface_hub
        return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
