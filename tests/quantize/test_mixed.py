"""Mixed precision, measured: int8 for the tensors whose calibration-set error costs most per byte, in budget.

llama.cpp's fixed layer rule (quantize/mixed.py) is kept as the comparison the bench measures against.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from fixtures.reference import ort_incremental
from phi3_edge.api import export
from phi3_edge.cli import main
from phi3_edge.errors import Phi3EdgeError
from phi3_edge.evaluate import compare_artifacts
from phi3_edge.exporter.config import load_spec
from phi3_edge.quantize.mixed import uses_more_bits
from phi3_edge.targets.table import TARGETS

PROMPT = [3, 17, 42, 7, 99, 5, 12, 64, 23, 8, 31, 2]


def test_layer_choice_matches_llama_cpp() -> None:
    """Phi-3-mini's 32 layers: 0-3 and 28-31, plus every third from 6 (4 + 2) on."""
    chosen = [layer for layer in range(32) if uses_more_bits(layer, 32)]
    assert chosen == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]


def data_bytes(folder: Path) -> int:
    """The weights' own bytes (each external initializer's recorded length): the data file adds page-alignment
    padding between tensors (exporter/tensor_writer.py), which moves with each tensor's size, not the budget's."""
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    return sum(int(entry.value) for tensor in model.graph.initializer for entry in tensor.external_data
               if entry.key == "length")


def test_measured_export_stays_in_budget_records_its_choice_and_keeps_parity(tiny_checkpoint, tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint("partial_tied_wide")
    export(str(checkpoint), target="cpu-fp32", output=tmp_path / "fp32", progress=False)
    # Mixed precision over an RTN body (over cpu-int4's AWQ default for these small models:
    # tests/exporter/test_awq_clip_export.py): the plain bytes and blocks it is measured against are RTN's.
    export(str(checkpoint), target="cpu-int4", output=tmp_path / "int4", progress=False, fidelity=False,
           quant_algo="rtn")
    export(str(checkpoint), target="cpu-int4", output=tmp_path / "mixed", progress=False, fidelity=False,
           mixed_precision=True, size_budget=1.15, quant_algo="rtn")
    manifest = json.loads((tmp_path / "mixed" / "manifest.json").read_text())["recipe"]
    applied, measured = manifest["quantization"], manifest["calibration"]["mixed_precision"]
    chosen = [c["tensor"] for c in measured["chosen"]]
    assert chosen and applied["size_budget"] == 1.15 and manifest["quant_algo"] == "rtn+int8-mixed"
    # The overrides: the chosen body Linears at int8 in their plain format's block (gate_up keeps cpu-int4's
    # block 64), and the plain export's own block overrides on every tensor not chosen, as they were.
    plain_recipe = json.loads((tmp_path / "int4" / "manifest.json").read_text())["recipe"]["quantization"]
    body_chosen = [n for n in chosen if n != "model.embed_tokens.weight"]
    widened = {n: r for n, r in applied["overrides"].items() if r["bits"] == 8}
    assert len(body_chosen) == len(set(body_chosen)) and set(widened) == set(body_chosen)
    assert all(r["block_size"] == plain_recipe["overrides"].get(n, plain_recipe["body"])["block_size"]
               for n, r in widened.items())
    kept = {n: r for n, r in applied["overrides"].items() if n not in widened}
    assert kept == {n: r for n, r in plain_recipe["overrides"].items() if n not in widened}
    assert all(c["int8_error"] < c["int4_error"] for c in measured["chosen"])
    # The bytes: what the export holds, against the plain int4 export of the same checkpoint.
    plain, mixed = data_bytes(tmp_path / "int4"), data_bytes(tmp_path / "mixed")
    assert plain < mixed <= 1.15 * plain
    assert mixed - plain == measured["extra_bytes"] <= measured["budget_bytes"]
    graph = onnx.load(str(tmp_path / "mixed" / "model.onnx"), load_external_data=False).graph
    wide = {n.name.split("/")[0] for n in graph.node if n.op_type == "MatMulNBits"
            and next(a.i for a in n.attribute if a.name == "bits") == 8}
    assert {name.removesuffix(".weight") for name in widened} <= wide
    # Parity like every int4 export (tests/targets/test_table.py's bounds), and closer to fp32 than plain int4.
    spec = load_spec(checkpoint / "config.json")
    logits = {name: ort_incremental(tmp_path / name / "model.onnx", PROMPT, 0, spec.num_layers, spec.num_kv_heads,
                                    spec.head_dim).prompt_logits for name in ("fp32", "mixed")}
    assert float(np.abs(logits["mixed"] - logits["fp32"]).max()) <= TARGETS["cpu-int4"].logits_atol
    assert compare_artifacts(tmp_path / "mixed", tmp_path / "fp32").kl < \
        compare_artifacts(tmp_path / "int4", tmp_path / "fp32").kl


def test_bad_size_budgets_fail_in_one_line_before_any_weight(tiny_checkpoint, tmp_path: Path) -> None:
    checkpoint = str(tiny_checkpoint("gqa"))
    for options, message in (({"mixed_precision": True, "size_budget": 0.5}, "--size-budget must be >= 1.0"),
                             ({"size_budget": 1.1}, "add --mixed-precision")):
        with pytest.raises(Phi3EdgeError, match=message) as caught:
            export(checkpoint, target="cpu-int4", output=tmp_path / "bad", progress=False, **options)  # type: ignore
        assert "\n" not in str(caught.value) and not (tmp_path / "bad").exists()
    result = CliRunner().invoke(main, ["export", "-m", checkpoint, "-t", "cpu-int4", "-o", str(tmp_path / "cli"),
                                       "--size-budget", "0.9", "--mixed-precision"])
    assert result.exit_code != 0 and "--size-budget must be >= 1.0" in result.output
    assert not (tmp_path / "cli").exists()
