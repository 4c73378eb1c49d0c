"""Smoke tests of the runtime commands: run (sampling options, --chat, --stop), chat, bench --json, inspect."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from fixtures.table_bytes import gathered_table_bytes
from phi3_edge.api import load
from phi3_edge.cli import main


def _invoke(*args: str, stdin: str | None = None) -> Result:
    result = CliRunner().invoke(main, list(args), input=stdin)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_run_streams_the_api_text(tiny_artifact) -> None:
    folder = str(tiny_artifact("gqa"))
    options = ["--max-new-tokens", "12", "--temperature", "0.7", "--top-p", "0.9", "--top-k", "50",
               "--repetition-penalty", "1.1", "--seed", "1"]
    result = _invoke("run", folder, "Hello world", *options)
    expected = load(folder).generate("Hello world", 12, temperature=0.7, top_p=0.9, top_k=50,
                                     repetition_penalty=1.1, seed=1)
    assert result.stdout == expected.text + "\n"
    assert "tok/s decode" in result.stderr and f"stop: {expected.stop_reason}" in result.stderr


def test_run_chat_and_stop(tiny_artifact) -> None:
    folder = str(tiny_artifact("gqa"))
    chat = load(folder).generate([{"role": "user", "content": "Hi"}], 16, ignore_eos=True)
    stop = chat.text[4:6]
    result = _invoke("run", folder, "Hi", "--chat", "--max-new-tokens", "16", "--stop", "zzz", "--stop", stop)
    assert result.stdout == chat.text[: chat.text.index(stop)] + "\n"
    assert "stop: stop" in result.stderr


def test_chat_reads_turns_until_exit(tiny_artifact) -> None:
    folder = str(tiny_artifact("gqa"))
    model = load(folder)
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    first = model.generate(history, 6).text
    history += [{"role": "assistant", "content": first}, {"role": "user", "content": "And then?"}]
    second = model.generate(history, 6).text
    result = _invoke("chat", folder, "--system", "Be brief.", "--max-new-tokens", "6",
                     stdin="Hi\n\nAnd then?\n/exit\nnever read\n")
    assert result.stdout == f"{first}\n{second}\n"


def test_chat_reports_an_overflowing_turn_and_goes_on(tiny_artifact) -> None:
    folder = str(tiny_artifact("gqa"))
    result = _invoke("chat", folder, "--max-new-tokens", "2", stdin="fox " * 300 + "\nHi\n")
    # The message alone outgrows the context: refused in one line naming both sizes, and the chat goes on.
    assert "error: this message is " in result.stderr and "-token context leaves no room" in result.stderr
    assert result.stdout == load(folder).generate([{"role": "user", "content": "Hi"}], 2).text + "\n"


def test_bench_json(tiny_artifact) -> None:
    folder = str(tiny_artifact("gqa", "cpu-int4"))
    for backend in ("ort", "genai"):
        result = _invoke("bench", folder, "--prompt-len", "16", "--gen-len", "8", "--backend", backend,
                         "--bandwidth-mb", "16", "--threads", "1", "--json")
        report = json.loads(result.stdout)
        assert report["backend"] == backend and report["prompt_len"] == 16 and report["gen_len"] == 8
        for key in ("ttft_s", "prefill_tps", "decode_tps", "peak_rss_mb", "roofline_ratio", "roofline_ratio_streamed"):
            assert report[key] > 0, key
        # A token streams every weight but the untied embedding table (float or quantized) it looks one row up in.
        table = gathered_table_bytes(Path(folder) / "model.onnx")
        assert table > 0 and report["streamed_weight_bytes"] == report["weight_bytes"] - table


def test_bench_table_and_inspect(tiny_artifact) -> None:
    folder = str(tiny_artifact("longrope", "cpu-int4"))
    assert "roofline ratio" in _invoke("bench", folder, "--prompt-len", "8", "--gen-len", "4",
                                       "--bandwidth-mb", "16").stdout
    text = _invoke("inspect", folder).stdout
    for expected in ("com.microsoft.GroupQueryAttention", "MatMulNBits", "If", "past_key_values.1.value",
                     "model.onnx.data", "cpu-int4", "block_size=32", "onnxruntime"):
        assert expected in text, expected
