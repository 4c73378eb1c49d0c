"""Real weights: every CPU target of a real instruct model against its cpu-fp32 export, on held-out real text.

Model: SmolLM2-135M-Instruct (`smollm2:135m`, Q4_1 GGUF; cpu-fp32 is its exact dequantization). Texts: English
prose (an Apache-2.0 licence text) and Python (the standard library's textwrap.py), each cut to --chars
characters. Columns: weights file size, perplexity on each text, and mean next-token KL / top-1 agreement
against cpu-fp32 on the built-in prompts (phi3_edge.evaluate), plus what the GGUF blocks became.

    python bench/real_weights.py [--chars 6000] [--work build/real_weights] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from phi3_edge.api import evaluate, export

MODEL = "smollm2:135m"
# (label, target, options)
ROWS = (
    ("cpu-fp32", "cpu-fp32", {}),
    ("cpu-int8 rtn", "cpu-int8", {}),
    ("cpu-int4 rtn", "cpu-int4", {}),
    ("cpu-int4 hqq", "cpu-int4", {"quant_algo": "hqq"}),
    ("cpu-int4 rtn mixed", "cpu-int4", {"mixed_precision": True}),
    ("mobile-int4 rtn", "mobile-int4", {}),
)


def apache_text() -> str:
    """An Apache-2.0 licence text from an installed package (no network), else the wheel's own."""
    import site

    for root in map(Path, site.getsitepackages()):
        for path in sorted(root.glob("*.dist-info/LICENSE*")):
            text = path.read_text(encoding="utf-8", errors="replace")
            if "Apache License" in text and "Version 2.0" in text and len(text) > 8000:
                return text
    raise SystemExit("no Apache-2.0 licence text found among installed packages")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=6000)
    parser.add_argument("--work", type=Path, default=Path("build/real_weights"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    texts = {"prose": apache_text()[: args.chars], "python": Path(textwrap.__file__).read_text()[: args.chars]}
    args.work.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (args.work / f"{name}.txt").write_text(text, encoding="utf-8")
    reference = args.work / "cpu-fp32"
    results = []
    for label, target, options in ROWS:
        folder = args.work / label.replace(" ", "-")
        export(MODEL, target=target, output=folder, force=True, progress=False, fidelity=False, **options)
        row: dict[str, object] = {"label": label, "mib": (folder / "model.onnx.data").stat().st_size / 2**20}
        for name in texts:
            report = evaluate(folder, reference, text_file=args.work / f"{name}.txt")
            row[f"ppl_{name}"], row["ref_" + name] = report.ppl, report.ref_ppl
            row["kl"], row["top1"] = report.kl, report.top1
        row["gguf_blocks"] = json.loads((folder / "manifest.json").read_text())["recipe"].get("gguf_blocks", "-")
        results.append(row)
        print(f"done {label}: {json.dumps(row)}", file=sys.stderr, flush=True)  # partial runs keep their rows
    if args.json:
        print(json.dumps(results, indent=1))
        return
    columns = ("target", "model.onnx.data", "ppl prose", "vs fp32", "ppl python", "vs fp32", "KL vs fp32", "top-1",
               "GGUF blocks")
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = results[0]
    for row in results:
        cells = [str(row["label"]), f"{row['mib']:.1f} MiB"]
        for name in texts:
            ppl, ref = float(row[f"ppl_{name}"]), float(base[f"ppl_{name}"])  # type: ignore[arg-type]
            cells += [f"{ppl:.2f}", f"{(ppl / ref - 1) * 100:+.1f}%"]
        kl, top1 = float(row["kl"]), float(row["top1"])  # type: ignore[arg-type]
        cells += [f"{kl:.4f}", f"{top1:.1%}", str(row["gguf_blocks"])]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
