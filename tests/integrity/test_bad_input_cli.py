"""Bad input through the real CLI: exit code != 0, exactly one stderr line starting with "error:", no traceback,
nothing at --output. Each case breaks a copy of the tiny checkpoint in one way.

(tests/exporter/test_bad_input.py covers some of these at the API level; this is what a user sees.)
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

WEIGHTS = "model.safetensors"


def cli() -> list[str]:
    script = Path(sys.executable).with_name("phi3-edge")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "phi3_edge.cli"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli(), *args], capture_output=True, text=True, timeout=120)


def export(model: Path, output: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("export", "--model", str(model), "--target", "cpu-fp32", "--output", str(output), "--quiet", *extra)


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


# -- how to break a checkpoint ------------------------------------------------------------------------------

def edit_config(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        edit(config)
        (folder / "config.json").write_text(json.dumps(config))
    return apply


def set_config(**values: object) -> Callable[[Path], None]:
    return edit_config(lambda config: config.update(values))


def write(name: str, content: bytes | str) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        data = content.encode() if isinstance(content, str) else content
        (folder / name).write_bytes(data)
    return apply


def remove(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def split(folder: Path) -> tuple[dict, bytes]:
    blob = (folder / WEIGHTS).read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + length]), blob[8 + length :]


def join(folder: Path, header: dict | bytes, data: bytes) -> None:
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    (folder / WEIGHTS).write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


def edit_header(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        header, data = split(folder)
        edit(header)
        join(folder, header, data)
    return apply


def first_tensor(header: dict) -> str:
    return next(name for name in header if name != "__metadata__")


def truncate_body(folder: Path) -> None:
    blob = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(blob[: len(blob) - 1000])


def header_past_end(folder: Path) -> None:
    blob = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(struct.pack("<Q", len(blob) * 2) + blob[8:])


def header_not_json(folder: Path) -> None:
    header, data = split(folder)
    encoded = json.dumps(header).encode()
    join(folder, b"{" + b"\xff" * (len(encoded) - 1), data)


def retype(header: dict) -> None:
    header[first_tensor(header)]["dtype"] = "I64"


def offsets_past_end(header: dict) -> None:
    entry = header[first_tensor(header)]
    begin, end = entry["data_offsets"]
    entry["data_offsets"] = [begin + 10**9, end + 10**9]


def huge_shape(header: dict) -> None:
    header[first_tensor(header)]["shape"] = [2**40, 2**40]


def rename_tensor(header: dict) -> None:
    header["model.layers.1.mlp.down_weight"] = header.pop("model.layers.1.mlp.down_proj.weight")


def extra_tensor(folder: Path) -> None:
    header, data = split(folder)
    name = "model.layers.0.mlp.down_proj.weight"
    header["model.layers.0.mlp.surprise.weight"] = dict(header[name])  # same bytes, a name no graph uses
    join(folder, header, data)


def reshape(header: dict) -> None:
    entry = header["model.layers.0.self_attn.o_proj.weight"]
    rows, cols = entry["shape"]
    entry["shape"] = [rows * 2, cols // 2]


def pickle_only(folder: Path) -> None:
    (folder / WEIGHTS).unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")


def tokenizer_dir(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.json").mkdir()


def unsafe_index(folder: Path) -> None:
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../elsewhere.safetensors"}}))


# (case id, breaker, text the one error line must contain)
CASES: list = [
    ("config missing", remove("config.json"), "config.json not found"),
    ("config not json", write("config.json", "{model_type: phi3"), "not valid JSON"),
    ("config not utf-8", write("config.json", b"\xff\xfe{}"), "not valid JSON"),
    ("config a list", write("config.json", "[1, 2]"), "expected a JSON object"),
    ("config nested 100k deep", write("config.json", "[" * 100_000 + "]" * 100_000), "not valid JSON"),
    ("hidden not divisible by heads", set_config(hidden_size=66), "not divisible by num_attention_heads"),
    ("kv heads not dividing heads", set_config(num_key_value_heads=3), "does not divide num_attention_heads"),
    ("hidden size 0", set_config(hidden_size=0), "hidden_size must be a positive integer"),
    ("negative layers", set_config(num_hidden_layers=-1), "num_hidden_layers must be a positive integer"),
    ("vocab a string", set_config(vocab_size="512"), "vocab_size must be a positive integer"),
    ("vocab 10^12", set_config(vocab_size=10**12), "larger than any Phi-3 model"),
    ("positions 10^9", set_config(max_position_embeddings=10**9), "larger than any Phi-3 model"),
    ("eps NaN", set_config(rms_norm_eps=float("nan")), "rms_norm_eps must be a positive finite number"),
    ("tie flag a string", set_config(tie_word_embeddings="false"), "tie_word_embeddings must be true or false"),
    ("model_type gemma", set_config(model_type="gemma"), "model_type 'gemma' is not supported"),  # llama is accepted
    ("model_type missing", edit_config(lambda c: c.pop("model_type")), "model_type None is not supported"),
    ("safetensors empty", write(WEIGHTS, b""), "truncated safetensors file (no header)"),
    ("safetensors truncated body", truncate_body, "truncated: tensor"),
    ("header length past the end", header_past_end, "runs past the end of the file"),
    ("header not json", header_not_json, "safetensors header is not valid JSON"),
    ("unsupported dtype", edit_header(retype), "unsupported dtype 'I64'"),
    ("data offsets out of range", edit_header(offsets_past_end), "truncated: tensor"),
    ("shape of 2^80 elements", edit_header(huge_shape), "do not match shape"),
    ("missing tensor", edit_header(rename_tensor), "missing tensor 'model.layers.1.mlp.down_proj.weight'"),
    ("extra tensor", extra_tensor, "unexpected tensors not used by the Phi-3 graph"),
    ("wrong shape", edit_header(reshape), "has shape"),
    ("pickle only", pickle_only, "pickle checkpoints are refused"),
    ("unsafe shard in index", unsafe_index, "unsafe or non-safetensors file"),
    ("tokenizer missing", remove("tokenizer.json"), "tokenizer.json not found"),
    ("tokenizer a folder", tokenizer_dir, "tokenizer.json not found"),
    # Broken tokenizer files are parsed before the graph is built and named as the checkpoint's own file.
    ("tokenizer not json", write("tokenizer.json", "{not json"), "tokenizer.json: not valid JSON"),
    ("tokenizer_config not json", write("tokenizer_config.json", "{not json"), "tokenizer_config.json: not valid JSON"),
    ("tokenizer model a string", write("tokenizer.json", '{"model": "x"}'), "tokenizer.json: cannot be read"),
    ("tokenizer a JSON string", write("tokenizer.json", '"just a string"'), "tokenizer.json: expected a JSON object"),
    ("tokenizer token id not int", write("tokenizer.json", '{"added_tokens": [{"content": "<|end|>", "id": "x"}]}'),
     "tokenizer.json: cannot be read"),
    ("tokenizer_config a list", write("tokenizer_config.json", "[1]"), "tokenizer_config.json: expected a JSON object"),
]


@pytest.fixture()
def checkpoint_copy(tiny_checkpoint, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_checkpoint("gqa"), tmp_path / "ckpt"))


@pytest.mark.parametrize(("case", "breaker", "expected"),
                         [pytest.param(*c, id=c[0]) if type(c) is tuple else c for c in CASES])
def test_bad_checkpoint_is_one_line_and_leaves_nothing(checkpoint_copy, tmp_path, case, breaker, expected) -> None:
    breaker(checkpoint_copy)
    output = tmp_path / "out"
    line = one_error_line(export(checkpoint_copy, output))
    assert expected in line, line
    assert "ckpt" in line, f"the message must name the file or folder: {line}"
    assert not output.exists() and not list(tmp_path.glob(".out.*")), "nothing may be left at --output"


def test_no_tokenizer_flag_exports_without_one(checkpoint_copy, tmp_path) -> None:
    (checkpoint_copy / "tokenizer.json").unlink()
    done = export(checkpoint_copy, tmp_path / "out", "--no-tokenizer")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "model.onnx").is_file() and not (tmp_path / "out" / "tokenizer.json").exists()


def test_unknown_target_and_missing_model(tmp_path) -> None:
    line = one_error_line(run_cli("export", "--model", str(tmp_path), "--target", "tpu-int3",
                                  "-o", str(tmp_path / "o")))
    assert "tpu-int3" in line and "cpu-fp32" in line
    line = one_error_line(export(tmp_path / "nowhere", tmp_path / "out"))
    assert "nowhere" in line and "does not exist" in line
    assert not (tmp_path / "o").exists() and not (tmp_path / "out").exists()


def test_existing_outputs_are_protected(tiny_checkpoint, tmp_path) -> None:
    """A folder that is not ours is never overwritten (not even with --force); ours needs --force."""
    checkpoint = tiny_checkpoint("gqa")
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    a_file = tmp_path / "file.txt"
    a_file.write_text("also precious")
    for target in (foreign, a_file):
        for extra in ((), ("--force",)):
            line = one_error_line(export(checkpoint, target, *extra))
            assert "is not a phi3-edge artifact; refusing to overwrite" in line and str(target) in line
    assert (foreign / "thesis.tex").read_text() == "precious" and a_file.read_text() == "also precious"
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]

    ours = tmp_path / "artifact"
    assert export(checkpoint, ours).returncode == 0
    manifest = (ours / "manifest.json").read_text()
    line = one_error_line(export(checkpoint, ours))
    assert "already exists; pass --force to replace it" in line
    assert (ours / "manifest.json").read_text() == manifest
    assert export(checkpoint, ours, "--force").returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_debug_shows_the_traceback(checkpoint_copy, tmp_path) -> None:
    remove("config.json")(checkpoint_copy)
    done = run_cli("--debug", "export", "--model", str(checkpoint_copy), "-o", str(tmp_path / "out"), "--quiet")
    assert done.returncode != 0 and "Traceback" in done.stderr and "config.json not found" in done.stderr
