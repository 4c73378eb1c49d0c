"""Device honesty: which execution provider an artifact was built for, whether this machine has it, and which
one a session really runs on.

An artifact names its provider twice: manifest.json's target.execution_provider and genai_config.json's
session_options.provider_options (onnxruntime-genai's spelling: "cuda", "dml", ...; an empty list means the
CPU). The runtime cannot read the target table (a device installs the runtime alone), and needs no table: an
onnxruntime provider is named "<Key>ExecutionProvider" ("cuda" -> "CUDAExecutionProvider", "dml" ->
"DmlExecutionProvider"), so the key is matched against onnxruntime's own list, case-insensitively.

A graph built for CUDA or DirectML still runs on the CPU (fp16 I/O, slowly): we never do that silently.
Without allow_cpu it is an ArtifactError saying what is missing; with it, the choice carries a notice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from phi3_edge.artifact_contract import GENAI_CONFIG_FILE, MANIFEST_FILE
from phi3_edge.errors import ArtifactError

# In every onnxruntime build, and what onnxruntime-genai runs when genai_config lists no provider.
CPU_PROVIDER = "CPUExecutionProvider"
_SUFFIX = "executionprovider"
CPU_KEY = CPU_PROVIDER.lower().removesuffix(_SUFFIX)  # genai_config's spelling of it


@dataclass(frozen=True)
class ProviderChoice:
    """The providers to open a session with, and what the artifact asked for."""

    built_for: str  # onnxruntime's name of the artifact's provider ("CUDAExecutionProvider")
    target: str | None  # manifest.json's target name, when the folder has our manifest
    providers: tuple[str, ...]  # InferenceSession(providers=...), in priority order
    on_cpu_instead: bool  # built for another provider, running on the CPU because allow_cpu was given

    @property
    def notice(self) -> str | None:
        """One line for a person when the artifact does not run where it was built to run."""
        if not self.on_cpu_instead:
            return None
        what = f"{self.target} artifact" if self.target else "artifact"
        return f"warning: {what} built for {self.built_for}, running on {cpu_provider()} (--allow-cpu): slow"


def cpu_provider() -> str:
    return CPU_PROVIDER


def ort_provider_name(key: str) -> str:
    """onnxruntime's provider name for a genai_config key ("cuda" -> "CUDAExecutionProvider").

    A key no onnxruntime build knows is returned as "<key>ExecutionProvider", so messages still name it.
    """
    wanted = key.lower().removesuffix(_SUFFIX) + _SUFFIX
    for name in ort.get_all_providers():
        if name.lower() == wanted:
            return str(name)
    return f"{key}ExecutionProvider"


def artifact_provider_key(folder: Path) -> tuple[str, str | None]:
    """(provider key, target name) the artifact was built for: manifest.json first, then genai_config.json."""
    manifest = _json(Path(folder) / MANIFEST_FILE)
    target = manifest.get("target") if isinstance(manifest, dict) else None
    if isinstance(target, dict) and isinstance(target.get("execution_provider"), str):
        name = target.get("name")
        return target["execution_provider"], name if isinstance(name, str) else None
    config = _json(Path(folder) / GENAI_CONFIG_FILE)
    model = config.get("model") if isinstance(config, dict) else None
    decoder = model.get("decoder") if isinstance(model, dict) else None
    session = decoder.get("session_options") if isinstance(decoder, dict) else None
    listed = session.get("provider_options") if isinstance(session, dict) else None
    if isinstance(listed, list) and listed and isinstance(listed[0], dict) and listed[0]:
        return str(next(iter(listed[0]))), None
    return CPU_KEY, None


def choose_providers(folder: Path, *, allow_cpu: bool = False,
                     available: list[str] | None = None) -> ProviderChoice:
    """The providers for a session on this artifact; ArtifactError when its provider is missing here.

    `available` stands in for onnxruntime.get_available_providers() (tests).
    """
    key, target = artifact_provider_key(folder)
    wanted = ort_provider_name(key)
    offered = list(ort.get_available_providers() if available is None else available)
    cpu = cpu_provider()
    if wanted in offered:
        # The CPU stays listed after a GPU provider: onnxruntime places the few ops the GPU lacks there.
        return ProviderChoice(wanted, target, (wanted,) if wanted == cpu else (wanted, cpu), False)
    if not allow_cpu:
        what = f"a {target} artifact" if target else "this artifact"
        raise ArtifactError(
            f"{what} is built for {wanted}, which this onnxruntime does not offer (it has {', '.join(offered)}); "
            f"install an onnxruntime build with {wanted}, or pass --allow-cpu to run it on the CPU, slowly",
            folder)
    return ProviderChoice(wanted, target, (cpu,), True)


def session_provider(session: Any) -> str:
    """The provider an InferenceSession actually runs on: the first of session.get_providers()."""
    providers = session.get_providers()
    return str(providers[0]) if providers else "unknown"


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None  # missing or unreadable: the loader reports it with its own message
