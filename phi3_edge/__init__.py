"""phi3-edge: Phi-3 family checkpoints to ONNX Runtime artifacts, and a thin runtime to run them."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["export", "load", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: `import phi3_edge` on a device must not import the exporter's dependencies.
    if name in ("export", "load"):
        from phi3_edge import api

        return getattr(api, name)
    raise AttributeError(name)
