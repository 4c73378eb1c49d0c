"""tokenizer.json is artifact content: a regex that hits Oniguruma's backtracking limit makes tokenizers panic
(pyo3's PanicException, a BaseException); the runtime turns it into one ArtifactError naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phi3_edge.edge_runtime.tokenizer import EdgeTokenizer
from phi3_edge.errors import ArtifactError

DEMO_TOKENIZER = Path(__file__).parents[2] / "phi3_edge" / "demo" / "checkpoint" / "tokenizer.json"


def test_a_backtracking_regex_is_one_line(tmp_path: Path) -> None:
    data = json.loads(DEMO_TOKENIZER.read_text(encoding="utf-8"))
    data["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": "(a|a)+$"}, "behavior": "Isolated",
                             "invert": False}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    tokenizer = EdgeTokenizer.load(tmp_path)
    with pytest.raises(ArtifactError, match="tokenizers failed to encode") as caught:
        tokenizer.encode("a" * 40 + "b")
    assert "\n" not in str(caught.value) and "tokenizer.json" in str(caught.value)
