"""The main job end to end: export the bundled demo checkpoint to cpu-int4 and complete some Python.

    python tools/demo.py

Runs exactly what a user would type (printed before each step): `phi3-edge export --model demo --target
cpu-int4 --output build/demo`, then `phi3-edge run build/demo "def fibonacci(n):"`, which streams the
completion and ends with a stats line (tokens, decode tokens/s). The demo model is a 5M-parameter Phi-3
trained here on the CPython standard library (tools/train_demo.py): Python-shaped text, not a real assistant.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

ARTIFACT = "build/demo"
PROMPT = "def fibonacci(n):"


def step(*args: str) -> None:
    print(f"$ {shlex.join(args)}", flush=True)
    completed = subprocess.run(args)
    if completed.returncode != 0:
        sys.exit(completed.returncode)


def main() -> None:
    step("phi3-edge", "export", "--model", "demo", "--target", "cpu-int4", "--output", ARTIFACT, "--force")
    step("phi3-edge", "run", ARTIFACT, PROMPT, "--max-new-tokens", "64")


if __name__ == "__main__":
    main()
