"""A GPTQ export's calibrated blocks wait in a temp spill folder (quantize/calibrated.py): it exists while the
graph is written and is gone when the export ends, whether it succeeded or failed part-way."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from phi3_edge import api
from phi3_edge.quantize.calibrated import SPILL_PREFIX


class Stop(Exception):
    pass


@pytest.fixture
def spill_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))  # where tempfile.mkdtemp puts the spill folder
    return root


def spilled(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.name.startswith(SPILL_PREFIX)]


@pytest.mark.parametrize("fail_at", [None, "weights"])
def test_spill_folder_is_removed_when_the_export_ends(tiny_checkpoint, tmp_path: Path, spill_root: Path,
                                                      fail_at: str | None) -> None:
    seen: list[int] = []

    def on_stage(stage: str) -> None:
        if stage == "weights":
            seen.append(len(spilled(spill_root)))  # the graph is being written from the spilled blocks
        if stage == fail_at:
            raise Stop(stage)

    request = api.export_request(str(tiny_checkpoint("gqa")), "cpu-int4", tmp_path / "out", quant_algo="gptq",
                                 progress=False, fidelity=False)
    if fail_at is None:
        api.run_export(request, on_stage=on_stage)
        assert (tmp_path / "out" / "model.onnx").is_file()
    else:
        with pytest.raises(Stop):
            api.run_export(request, on_stage=on_stage)
        assert not (tmp_path / "out").exists()
    assert seen == [1]
    assert spilled(spill_root) == []
