"""`phi3-edge eval`: JSON keys, the table, --text, one-line errors."""

from __future__ import annotations

import json

from click.testing import CliRunner, Result

from phi3_edge.cli import main


def invoke(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def test_json_against_itself(gqa_artifacts):
    result = invoke("eval", gqa_artifacts["fp32"], "--ref", gqa_artifacts["fp32"], "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert abs(data["kl"]) < 1e-9 and data["top1"] == 1.0
    assert data["ppl"] is None and data["ref_ppl"] is None


def test_json_int4_against_fp32_with_text(gqa_artifacts, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("Hello world! What is the capital of France? The capital of France is Paris.\n")
    result = invoke("eval", gqa_artifacts["int4"], "--ref", gqa_artifacts["fp32"], "--text", text, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"kl", "top1", "ppl", "ref_ppl"} <= set(data)
    assert data["kl"] > 0 and 0 <= data["top1"] <= 1
    assert data["ppl"] > 1 and data["ref_ppl"] > 1 and data["ppl"] != data["ref_ppl"]


def test_table_output(gqa_artifacts):
    result = invoke("eval", gqa_artifacts["int4"], "--ref", gqa_artifacts["fp32"])
    assert result.exit_code == 0, result.output
    assert "mean KL" in result.stdout and "top-1 agreement" in result.stdout


def test_missing_text_file_is_a_one_line_error(gqa_artifacts, tmp_path):
    missing = tmp_path / "missing.txt"
    result = invoke("eval", gqa_artifacts["int4"], "--ref", gqa_artifacts["fp32"], "--text", missing)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing.txt" in lines[0]
