"""`phi3-edge ARGS...` in this process, paused at one export stage so a test can kill it right there.

    python tests/exporter/paused_export.py STAGE MARKER ARGS...

The product code knows nothing of tests: an export reports its stages to the `on_stage` callback that
api.run_export accepts (exporter/artifact.py's STAGES). This script injects one that, at STAGE, writes our
pid to MARKER and sleeps; then the real CLI runs ARGS, with its own error and Ctrl-C handling.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from phi3_edge import api
from phi3_edge.exporter.artifact import STAGES

PAUSE_SECONDS = 60.0  # long enough for a test to signal us; bounded so a lost test cannot hang CI


def pause_at(stage: str, marker: Path) -> Callable[[str], None]:
    if stage not in STAGES:
        raise SystemExit(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")

    def on_stage(reached: str) -> None:
        if reached == stage:
            marker.write_text(str(os.getpid()), encoding="utf-8")
            time.sleep(PAUSE_SECONDS)

    return on_stage


def main(argv: list[str]) -> None:
    stage, marker, args = argv[0], Path(argv[1]), argv[2:]
    original = api.run_export
    observer = pause_at(stage, marker)

    def run_export(request: Any, **kwargs: Any) -> Any:
        api.run_export = original  # only the CLI's own export pauses (not an accuracy gate's reference export)
        return original(request, on_stage=observer)

    api.run_export = run_export  # type: ignore[assignment]
    from phi3_edge.cli import main as cli

    cli(args, prog_name="phi3-edge")


if __name__ == "__main__":
    main(sys.argv[1:])
