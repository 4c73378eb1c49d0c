"""Export progress: a rich bar over checkpoint bytes on a terminal, a quiet line per layer in CI logs."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@dataclass(frozen=True)
class ProgressHooks:
    on_tensor: Callable[[str, int], None]
    on_layer: Callable[[int], None]


@contextmanager
def export_progress(total_bytes: int, num_layers: int, enabled: bool | None = None) -> Iterator[ProgressHooks]:
    """enabled=None: a live bar when stderr is a terminal, one line per layer otherwise; False: silent."""
    console = Console(stderr=True)
    if enabled is False:
        yield ProgressHooks(lambda name, nbytes: None, lambda layer: None)
    elif enabled or console.is_terminal:
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("exporting", total=total_bytes)

            def on_tensor(name: str, nbytes: int) -> None:
                bar.update(task, advance=nbytes, description=name)

            yield ProgressHooks(on_tensor, lambda layer: None)
    else:
        def on_layer(layer: int) -> None:
            print(f"layer {layer + 1}/{num_layers} exported", file=sys.stderr, flush=True)

        yield ProgressHooks(lambda name, nbytes: None, on_layer)
