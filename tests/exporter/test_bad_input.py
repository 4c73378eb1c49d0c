"""Bad input: a one-line error naming the file and the problem, and nothing left at --output."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from phi3_edge.api import export
from phi3_edge.errors import Phi3EdgeError


def copy_checkpoint(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def truncate_safetensors(folder: Path) -> str:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "model.safetensors"


def replace_with_pickle(folder: Path) -> str:
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    return "pickle"


def set_model_type(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "gemma"
    (folder / "config.json").write_text(json.dumps(config))
    return "gemma"


def drop_config(folder: Path) -> str:
    (folder / "config.json").unlink()
    return "config.json"


def rewrite_header(folder: Path, edit: Callable[[dict], None]) -> None:
    """Edit a safetensors header in place, keeping the data section byte-identical."""
    path = folder / "model.safetensors"
    blob = path.read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + length])
    edit(header)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + blob[8 + length :])


def rename_tensor(folder: Path) -> str:
    name = "model.layers.1.mlp.down_proj.weight"
    rewrite_header(folder, lambda h: h.__setitem__("model.layers.1.mlp.down_weight", h.pop(name)))
    return name


def reshape_tensor(folder: Path) -> str:
    name = "model.layers.0.self_attn.o_proj.weight"

    def edit(header: dict) -> None:
        rows, cols = header[name]["shape"]
        header[name]["shape"] = [cols, rows] if rows != cols else [rows * 2, cols // 2]

    rewrite_header(folder, edit)
    return "shape"


BREAKERS = {
    "truncated safetensors": truncate_safetensors,
    "pickle only": replace_with_pickle,
    "other model_type": set_model_type,
    "no config.json": drop_config,
    "missing tensor": rename_tensor,
    "wrong shape": reshape_tensor,
}


@pytest.mark.parametrize("case", list(BREAKERS))
def test_broken_checkpoint_is_a_one_line_error(tiny_checkpoint, tmp_path: Path, case: str) -> None:
    folder = copy_checkpoint(tiny_checkpoint("gqa"), tmp_path / "ckpt")
    expected = BREAKERS[case](folder)
    out = tmp_path / "out"
    with pytest.raises(Phi3EdgeError) as caught:
        export(str(folder), target="cpu-fp32", output=out, progress=False)
    message = str(caught.value)
    assert "\n" not in message and expected in message, message
    assert str(tmp_path / "ckpt") in message or "ckpt" in message, message
    assert not out.exists() and not list(tmp_path.glob(".out*")), "nothing may be left at --output"


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(Phi3EdgeError, match="does not exist"):
        export(str(tmp_path / "nowhere"), target="cpu-fp32", output=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_unknown_target_lists_valid_ones(tiny_checkpoint, tmp_path: Path) -> None:
    with pytest.raises(Phi3EdgeError, match="cpu-fp32") as caught:
        export(str(tiny_checkpoint("gqa")), target="tpu-int3", output=tmp_path / "out", progress=False)
    assert "tpu-int3" in str(caught.value)
    assert not (tmp_path / "out").exists()
