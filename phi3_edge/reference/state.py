"""What flows between streamed layers: one sequence's hidden state and residual stream, plus shared feeds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from phi3_edge.edge_runtime.threads import session_options as runtime_session_options
from phi3_edge.exporter.config import Phi3Spec
from phi3_edge.reference import layer_graph as lg

HEAD_CHUNK_BYTES = 64 << 20  # fp32 lm_head rows per chunk: 5461 of Phi-3-mini's 32064, 37 chunks of a 200k vocab

# (layer, sequence index, checkpoint weight name, x (S, in_features)): the input of every Linear, as the fp32
# reference computes it. Calibration-based quantizers (GPTQ, AWQ) accumulate statistics from these.
ActivationHook = Callable[[int, int, str, np.ndarray], None]


@dataclass(frozen=True)
class State:
    """A sequence between two layers (batch 1): the last mlp output and the residual stream, each (1, S, H).

    Layer 0 starts from the embedding with no residual (None), exactly as the whole graph does.
    """

    hidden: np.ndarray
    residual: np.ndarray | None

    @property
    def length(self) -> int:
        return int(self.hidden.shape[1])


def session_options(threads: int | None) -> ort.SessionOptions:
    return runtime_session_options(threads)


def sequence_feeds(state: State, spec: Phi3Spec, fused_rotary: bool) -> dict[str, np.ndarray]:
    """The non-weight inputs of a reference layer graph for one sequence with an empty past."""
    length = state.length
    empty = np.zeros((1, spec.num_kv_heads, 0, spec.head_dim), dtype=np.float32)  # (B, Hkv, 0, D)
    feeds = {lg.HIDDEN: state.hidden, lg.SEQLENS_K: np.asarray([length - 1], dtype=np.int32),
             lg.TOTAL_LEN: np.asarray(length, dtype=np.int32), lg.TOTAL_LEN_I64: np.asarray(length, dtype=np.int64),
             lg.PAST_KEY: empty, lg.PAST_VALUE: empty}
    if state.residual is not None:
        feeds[lg.RESIDUAL] = state.residual
    if not fused_rotary:
        feeds[lg.POSITION_IDS] = np.arange(length, dtype=np.int64)[None]  # (B, S)
    return feeds
