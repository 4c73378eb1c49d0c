"""A GGUF file as a WeightStore backend: tensors under their Hugging Face names, float32 row slices.

Llama files are kept in the Llama layout (q/k/v_proj, gate/up_proj; WeightStore packs them by row ranges)
with llama.cpp's Q/K row permutation undone by a row gather (gguf/names.py). `raw_rows` hands back the stored
blocks of some rows, for a quantizer that can carry them into MatMulNBits as they are (Q4_0, Q4_1, Q8_0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from phi3_edge.errors import CheckpointError
from phi3_edge.exporter.gguf.names import SPEC_TENSORS, hf_name, permuted_heads, unpermuted_rows
from phi3_edge.exporter.gguf.reader import GgufFile, GgufTensor, open_gguf
from phi3_edge.exporter.weights import TensorInfo

ARCHITECTURES = ("llama", "phi3")


class GgufTensors:
    def __init__(self, path: Path) -> None:
        self.file = open_gguf(path)
        self.arch = architecture(self.file)
        heads = int(self.file.field(f"{self.arch}.attention.head_count", 0) or 0)
        kv_heads = int(self.file.field(f"{self.arch}.attention.head_count_kv", heads) or heads)
        self.infos: dict[str, TensorInfo] = {}
        self._tensors: dict[str, GgufTensor] = {}
        self._order: dict[str, np.ndarray] = {}  # HF name -> GGUF row of each HF row (permuted Q/K only)
        for tensor in self.file.tensors.values():
            if tensor.name in SPEC_TENSORS:
                continue  # LongRoPE factors: read into the spec by gguf/spec.py
            name = hf_name(tensor.name, self.arch) or tensor.name  # unknown names stay, and show up as unused
            self.infos[name] = TensorInfo(name, self.file.path, tensor.type_name, tensor.shape, 0,
                                          stored_bytes=tensor.nbytes)
            self._tensors[name] = tensor
            permuted = permuted_heads(tensor.name, self.arch, heads, kv_heads)
            if permuted:
                if tensor.shape[0] % (2 * permuted):
                    raise CheckpointError(f"tensor {tensor.name!r}: {tensor.shape[0]} rows do not split into "
                                          f"{permuted} heads of even size", path)
                self._order[name] = unpermuted_rows(tensor.shape[0], permuted)

    def close(self) -> None:
        self.file.close()

    def type_of(self, name: str) -> str:
        return self._tensors[name].type_name

    def read_rows(self, info: TensorInfo, start: int, stop: int) -> np.ndarray:
        tensor = self._tensors[info.name]
        if len(tensor.shape) == 1:
            return self.file.vector(tensor)[start:stop]
        return self.file.rows(tensor, self._index(info.name, start, stop))

    def read_columns(self, info: TensorInfo, start: int, stop: int, rows: tuple[int, int]) -> np.ndarray:
        # Blocks run along a row: a column slice costs its rows dequantized whole, then cut.
        return self.read_rows(info, *rows)[:, start:stop]

    def raw_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Stored bytes of HF rows [start, stop): (rows, row_bytes) uint8 for block-quantized types."""
        return self.file.raw_rows(self._tensors[name], self._index(name, start, stop))

    def _index(self, name: str, start: int, stop: int) -> slice | np.ndarray:
        order = self._order.get(name)
        return slice(start, stop) if order is None else order[start:stop]


def architecture(file: GgufFile) -> str:
    arch = file.field("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"general.architecture {arch!r} is not supported; phi3-edge reads GGUF files of "
                              f"the {' and '.join(ARCHITECTURES)} architectures (Phi-3, Llama / SmolLM)", file.path)
    return str(arch)
