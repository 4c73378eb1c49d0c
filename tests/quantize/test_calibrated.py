"""CalibratedBlocks: spilled to disk as added (nothing held in RAM), rows read back exactly, folder cleaned up."""

from __future__ import annotations

import gc
import tempfile
import weakref
from pathlib import Path

import numpy as np
import pytest

from phi3_edge.quantize.blockwise import QuantizedBlocks, quantize_rtn
from phi3_edge.quantize.calibrated import SPILL_PREFIX, CalibratedBlocks

RNG = np.random.default_rng(0)


def blocks(rows: int, k: int, bits: int = 4, symmetric: bool = True) -> QuantizedBlocks:
    return quantize_rtn(RNG.standard_normal((rows, k), dtype=np.float32), bits, 32, symmetric)


def assert_same(got: QuantizedBlocks | None, want: QuantizedBlocks, first: int, last: int) -> None:
    assert got is not None
    np.testing.assert_array_equal(got.q, want.q[first:last])
    np.testing.assert_array_equal(got.scales, want.scales[first:last])
    assert got.scales.dtype == want.scales.dtype
    if want.zero_points is None:
        assert got.zero_points is None
    else:
        assert got.zero_points is not None
        np.testing.assert_array_equal(got.zero_points, want.zero_points[first:last])
    assert (got.bits, got.k, got.block_size) == (want.bits, want.k, want.block_size)


@pytest.mark.parametrize(("bits", "symmetric"), [(4, True), (8, True), (2, False)])
def test_rows_read_back_exactly(tmp_path: Path, bits: int, symmetric: bool) -> None:
    held = CalibratedBlocks("gptq", parent=tmp_path)
    want = blocks(40, 70, bits, symmetric)  # K not a multiple of the block: padded codes round-trip too
    held.add("a.weight", want)
    for first, last in [(0, 40), (3, 17), (39, 40)]:
        assert_same(held.rows("a.weight", first, last, bits, 32), want, first, last)
    assert_same(held.blocks["a.weight"], want, 0, 40)
    assert held.rows("missing.weight", 0, 1, bits, 32) is None
    with pytest.raises(ValueError, match="a.weight: calibrated as int"):
        held.rows("a.weight", 0, 1, bits, 64)
    held.close()


def test_add_keeps_nothing_in_memory(tmp_path: Path) -> None:
    held = CalibratedBlocks("gptq", parent=tmp_path)
    given = blocks(64, 128)
    codes, scales = weakref.ref(given.q), weakref.ref(given.scales)
    held.add("a.weight", given)
    del given
    gc.collect()
    assert codes() is None and scales() is None  # only the spill files hold them now
    assert held.folder is not None and held.folder.parent == tmp_path
    assert sorted(p.name for p in held.folder.iterdir()) == ["0.q.npy", "0.scales.npy"]
    assert (held.folder / "0.q.npy").stat().st_size < 64 * 4 * 32  # int4 codes are packed two to a byte
    held.close()


def test_folder_under_the_system_temp_dir_and_removed_on_close() -> None:
    held = CalibratedBlocks("gptq")
    assert held.folder is None  # nothing made until something is added
    held.add("a.weight", blocks(8, 32))
    folder = held.folder
    assert folder is not None and folder.parent == Path(tempfile.gettempdir()) and folder.name.startswith(SPILL_PREFIX)
    held.close()
    held.close()  # twice is fine
    assert not folder.exists()
    with pytest.raises(ValueError, match="closed"):
        held.rows("a.weight", 0, 1, 4, 32)
    with pytest.raises(ValueError, match="closed"):
        held.add("b.weight", blocks(8, 32))


def test_folder_removed_when_a_with_block_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="calibration failed"), CalibratedBlocks("gptq", parent=tmp_path) as held:
        held.add("a.weight", blocks(8, 32))
        raise RuntimeError("calibration failed")
    assert list(tmp_path.iterdir()) == []


def test_folder_removed_when_collected(tmp_path: Path) -> None:
    held = CalibratedBlocks("gptq", parent=tmp_path)
    held.add("a.weight", blocks(8, 32))
    assert len(list(tmp_path.iterdir())) == 1
    del held
    gc.collect()
    assert list(tmp_path.iterdir()) == []
