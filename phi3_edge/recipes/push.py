"""`phi3-edge push ARTIFACT REPO_ID`: one hub commit with every artifact file and a generated model card.

    verify the folder (manifest.json hashes) ─► create the repo (exist_ok) ─► one commit:
        every file of the folder + README.md (model_card.py)

The artifact folder itself is not touched: README.md is added in the commit, not written beside the files
(manifest.json lists the folder's files, and `verify` would call an extra file foreign). Every failure is one
line: offline (HF_HUB_OFFLINE), an unreachable endpoint, a missing or rejected token, a bad repo id.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phi3_edge.errors import Phi3EdgeError
from phi3_edge.manifest import read_manifest
from phi3_edge.recipes.model_card import model_card

CARD_FILE = "README.md"
_NETWORK_ERRORS = {"TransportError", "RequestError", "ConnectionError", "ConnectError", "Timeout",
                   "TimeoutException", "NetworkError"}


class PushError(Phi3EdgeError):
    """The artifact could not be published: one line saying why."""


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    url: str  # the commit's URL
    files: int  # files uploaded, the card included


def push_artifact(folder: str | Path, repo_id: str, *, private: bool = True, token: str | None = None,
                  endpoint: str | None = None, command: str | None = None, recipe_text: str | None = None,
                  revision: str | None = None) -> PushResult:
    folder = Path(folder)
    manifest = read_manifest(folder)  # not ours: a one-line ArtifactError before any network traffic
    card = model_card(folder, manifest, repo_id, command=command, recipe_text=recipe_text)
    files = sorted(path for path in folder.rglob("*") if path.is_file() and path.name != CARD_FILE)
    try:
        from huggingface_hub import CommitOperationAdd, HfApi
        from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled
    except ImportError:
        raise PushError("publishing needs huggingface_hub: pip install 'phi3-edge[export]'") from None
    hub = endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    api = HfApi(endpoint=hub, token=token)
    operations = [CommitOperationAdd(path.relative_to(folder).as_posix(), str(path)) for path in files]
    operations.append(CommitOperationAdd(CARD_FILE, card.encode("utf-8")))
    target = (manifest.get("target") or {}).get("name", "artifact")
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.create_commit(repo_id, operations, commit_message=f"phi3-edge push: {target}",
                                 revision=revision)
    except OfflineModeIsEnabled:
        raise PushError(f"cannot push to {hub}: offline mode (HF_HUB_OFFLINE) is set") from None
    except HFValidationError as exc:
        raise PushError(f"invalid repo id {repo_id!r} ({_first_line(exc)})") from None
    except HfHubHTTPError as exc:
        raise PushError(f"the hub refused the push to {repo_id}: {_http_reason(exc)}") from None
    except Exception as exc:
        if _is_network_error(exc):
            raise PushError(f"cannot reach the Hugging Face Hub at {hub} ({_first_line(exc)})") from None
        raise
    return PushResult(repo_id, str(getattr(info, "commit_url", "") or f"{hub}/{repo_id}"), len(operations))


def _is_network_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) or any(cls.__name__ in _NETWORK_ERRORS for cls in type(exc).__mro__)


def _http_reason(exc: Any) -> str:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status == 401:
        return "not logged in or the token is invalid (huggingface-cli login, or HF_TOKEN)"
    if status == 403:
        return "the token may not write to this repo"
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
