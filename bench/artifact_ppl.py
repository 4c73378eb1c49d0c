"""Exported artifacts judged on real weights: the export a user's command makes, run by onnxruntime.

bench/quant_real.py judges recipes on numpy weights through the layer-streamed fp32 reference (fast, one
variable at a time). This measures the product end to end instead: each row is `phi3-edge export` of the model
with its options (api.export, as the CLI calls it), then the artifact's perplexity on the same held-out texts
(quant_real.held_out_texts: pydoc prose and textwrap.py, EVAL_TOKENS tokens each, windows of 512) through
onnxruntime (accuracy level 4's int8 activation rounding included), KL / top-1 on the built-in prompts
(phi3_edge.evaluate), the weights file's bytes and the export's wall time. The gap is to the cpu-fp32 export of
the same weights. llama.cpp's Q4_0 / Q4_K_M / Q8_0 rows (llama-perplexity on the same decoded text) come from
quant_real.llamacpp_rows.

    python bench/artifact_ppl.py                                    # default, rtn, awq rows + llama.cpp
    python bench/artifact_ppl.py --rows default,awq-mixed --no-llamacpp
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quant_real import EVAL_TOKENS, LLAMA_BIN, Bench, llamacpp_rows, print_rows  # noqa: E402

from phi3_edge.api import export  # noqa: E402
from phi3_edge.evaluate import compare_artifacts  # noqa: E402
from phi3_edge.targets.table import TARGETS  # noqa: E402

# Row name -> (target, export options). "default" is what `phi3-edge export -m MODEL` does with no option.
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("cpu-int4", {}),
    "rtn": ("cpu-int4", {"quant_algo": "rtn"}),
    # what the default does above cpu-int4's calibration limit (RTN + llama.cpp's int8 down projections), run
    # on this model by lowering the limit for the row (export_row)
    "default-above-limit": ("cpu-int4", {}),
    "awq": ("cpu-int4", {"quant_algo": "awq"}),
    "awq-mixed": ("cpu-int4", {"quant_algo": "awq", "mixed_precision": True, "size_budget": 1.253}),
    # 1.08 x the plain export's 97.4 MB on SmolLM2-135M = llama.cpp Q4_K_M's 105.5 MB file
    "awq-mixed-q4km": ("cpu-int4", {"quant_algo": "awq", "mixed_precision": True, "size_budget": 1.08}),
    "rtn-mixed": ("cpu-int4", {"quant_algo": "rtn", "mixed_precision": True, "size_budget": 1.253}),
    "int8": ("cpu-int8", {}),
}


def export_row(model: str, name: str, work: Path) -> tuple[Path, float]:
    target, options = ROWS[name]
    folder = work / name
    started = time.perf_counter()
    if name == "default-above-limit":
        with _no_calibrated_default(target):
            export(model=model, target=target, output=folder, force=True, fidelity=False, progress=False)
    else:
        export(model=model, target=target, output=folder, force=True, fidelity=False, progress=False, **options)
    return folder, time.perf_counter() - started


@contextmanager
def _no_calibrated_default(name: str) -> Iterator[None]:
    """The target as a model above its calibrate_up_to_params sees it (the table entry swapped for the row)."""
    original = TARGETS[name]
    TARGETS[name] = replace(original, calibrate_up_to_params=0)
    try:
        yield
    finally:
        TARGETS[name] = original


def measure(model: str, names: Sequence[str], work: Path, texts: dict[str, str]) -> list[dict[str, object]]:
    reference, _ = _reference(model, work)
    rows = []
    for name in names:
        folder, seconds = export_row(model, name, work)
        gaps: dict[str, float] = {}
        report = None
        for text_name, text in texts.items():
            report = compare_artifacts(folder, reference, text=text)
            assert report.ppl is not None and report.ref_ppl is not None
            gaps[f"ppl_gap_{text_name}"] = report.ppl / report.ref_ppl - 1
        assert report is not None
        label = f"{name}: export {ROWS[name][0]} " + (" ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                            ROWS[name][1].items()) or "(no options)")
        rows.append({"label": label, **gaps, "kl": report.kl, "top1": report.top1,
                     "MB": (folder / "model.onnx.data").stat().st_size / 1e6, "seconds": seconds})
        print(rows[-1], flush=True)
    return rows


def _reference(model: str, work: Path) -> tuple[Path, float]:
    folder = work / "fp32"
    started = time.perf_counter()
    if not (folder / "manifest.json").exists():
        export(model=model, target="cpu-fp32", output=folder, force=True, fidelity=False, progress=False)
    return folder, time.perf_counter() - started


def held_out(bench: Bench) -> dict[str, str]:
    """Each held-out text cut to the EVAL_TOKENS tokens quant_real scores (decoded back to text)."""
    return {name: bench.tokenizer.decode([t for s in seqs for t in s]) for name, seqs in bench.eval.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--rows", default="default,rtn,awq,awq-mixed", help=f"comma-separated: {', '.join(ROWS)}")
    parser.add_argument("--work", type=Path, default=Path("/tmp/phi3-edge-bench/artifact-ppl"))
    parser.add_argument("--no-llamacpp", action="store_true")
    parser.add_argument("--llama-bin", type=Path, default=LLAMA_BIN)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    bench = Bench(args.model)
    rows = measure(args.model, args.rows.split(","), args.work, held_out(bench))
    if not args.no_llamacpp:
        rows += llamacpp_rows(bench, args.work / "llamacpp", args.llama_bin)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print_rows(rows, f"{args.model}: exported artifacts vs the cpu-fp32 export, {EVAL_TOKENS} held-out tokens "
                         "per text (KL/top-1 on the built-in prompts)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
