"""The README.md model card `phi3-edge push` uploads beside an artifact: where it came from and how good it is.

Everything comes from manifest.json (source, target, recipe, fidelity, file sizes, minimum runtimes, the
command that built it), so the card says what the folder is, not what someone remembers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from phi3_edge.artifact_contract import GENAI_CONFIG_FILE

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
TRANSFORMERS_JS_KEY = "transformers.js_config"


def model_card(folder: Path, manifest: dict[str, Any], repo_id: str, *, command: str | None = None,
               recipe_text: str | None = None) -> str:
    source = manifest.get("source") or {}
    target = manifest.get("target") or {}
    origin = str(source.get("source", "?"))
    name = str(target.get("name", "?"))
    lines = [*_front_matter(origin, folder), f"# {repo_id.split('/')[-1]}", "",
             f"`{name}` ONNX Runtime artifact of **{origin}**"
             + (f" (revision `{source['revision']}`)" if source.get("revision") else "")
             + f", exported by phi3-edge {(manifest.get('tools') or {}).get('phi3-edge') or '?'}.", ""]
    if target.get("notes"):
        lines += [f"Target: {target.get('execution_provider', '?')} execution provider, {target.get('weight_format')} "
                  f"weights, {target.get('io_dtype')} activations ({target['notes']}).", ""]
    lines += _fidelity(manifest.get("fidelity")) + _runtime(manifest.get("min_runtime")) + _files(manifest)
    lines += _usage(folder, repo_id)
    built_by = command or manifest.get("command")
    if built_by:
        lines += ["## How it was built", "", "```bash", str(built_by), "```", ""]
    lines += ["## Recipe", "", "```json", json.dumps(manifest.get("recipe") or {}, indent=2), "```", ""]
    if recipe_text:
        lines += ["Build recipe:", "", "```toml", recipe_text.rstrip(), "```", ""]
    return "\n".join(lines)


def _front_matter(origin: str, folder: Path) -> list[str]:
    tags = ["onnx", "onnxruntime", "phi3", "phi3-edge"]
    if (folder / "config.json").is_file() and (folder / "onnx").is_dir():
        tags.append("transformers.js")
    lines = ["---", "library_name: onnxruntime", "pipeline_tag: text-generation", "tags:"]
    lines += [f"- {tag}" for tag in tags]
    if _HUB_ID.match(origin):
        lines.append(f"base_model: {origin}")
    return [*lines, "---", ""]


def _fidelity(fidelity: Any) -> list[str]:
    if not isinstance(fidelity, dict) or not isinstance(fidelity.get("kl"), (int, float)):
        return ["## Fidelity", "", "Not measured (float weights, or exported with --no-fidelity).", ""]
    gate = f" (gate: max KL {fidelity['max_kl']:g})" if isinstance(fidelity.get("max_kl"), (int, float)) else ""
    return ["## Fidelity", "",
            f"Against the {fidelity.get('reference', 'fp32 reference')}{gate}:", "",
            "| mean next-token KL | top-1 agreement | prompts | positions |", "|---|---|---|---|",
            f"| {fidelity['kl']:.4g} | {fidelity.get('top1', 0):.1%} | {fidelity.get('prompts', '-')} "
            f"| {fidelity.get('positions', '-')} |", ""]


def _runtime(record: Any) -> list[str]:
    if not isinstance(record, dict):
        return []
    lines = ["## Runtime", "", f"Oldest onnxruntime that runs it: **{record.get('onnxruntime')}**"
             + (f"; onnxruntime-genai: **{record['onnxruntime-genai']}**" if record.get("onnxruntime-genai") else "")
             + "."]
    reasons = record.get("reasons") or []
    if reasons:
        lines.append("Set by: " + "; ".join(str(r) for r in reasons) + ".")
    return [*lines, ""]


def _files(manifest: dict[str, Any]) -> list[str]:
    files = manifest.get("files") or {}
    total = sum(int(entry.get("bytes", 0)) for entry in files.values())
    lines = ["## Files", "", f"{len(files)} files, {total / 2**20:.1f} MiB (sha256 of each in manifest.json).", "",
             "| file | size |", "|---|---|"]
    lines += [f"| `{name}` | {int(entry.get('bytes', 0)) / 2**20:.2f} MiB |" for name, entry in sorted(files.items())]
    return [*lines, ""]


def _usage(folder: Path, repo_id: str) -> list[str]:
    lines = ["## Use", "", "```bash", f"huggingface-cli download {repo_id} --local-dir {repo_id.split('/')[-1]}",
             f"phi3-edge run {repo_id.split('/')[-1]} \"Explain KV caches in one sentence.\"", "```", ""]
    if (folder / GENAI_CONFIG_FILE).is_file():
        lines += ["onnxruntime-genai loads the folder as it is (`og.Model(folder)`).", ""]
    config = folder / "config.json"
    if config.is_file() and TRANSFORMERS_JS_KEY in config.read_text(encoding="utf-8"):
        lines += ["Transformers.js / Optimum layout included:", "", "```js",
                  "import { pipeline } from '@huggingface/transformers';",
                  f"const generator = await pipeline('text-generation', '{repo_id}');", "```", ""]
    return lines
