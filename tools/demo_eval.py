"""Held-out perplexity of the demo model per CPU target, as the README's table.

    python tools/demo_eval.py            # exports demo to each CPU target under build/, prints a Markdown table

The held-out text is the demo's HELDOUT_MODULES from this interpreter's standard library (never trained on),
concatenated as tools/train_demo.py joins files. Each artifact is measured with `phi3-edge eval --json`
against the cpu-fp32 export: KL, top-1 agreement and perplexity on that text.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_corpus import HELDOUT_MODULES  # noqa: E402

BUILD = Path("build")
TARGETS = [("cpu-fp32", "rtn"), ("cpu-int8", "rtn"), ("cpu-int4", "rtn"), ("cpu-int4", "hqq")]


def heldout_text(path: Path) -> Path:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    path.write_text("\n\n".join((stdlib / name).read_text(encoding="utf-8") for name in HELDOUT_MODULES))
    return path


def export(target: str, algo: str) -> Path:
    out = BUILD / f"demo-{target}-{algo}"
    subprocess.run(["phi3-edge", "export", "--model", "demo", "--target", target, "--quant-algo", algo,
                    "--output", str(out), "--force", "--quiet", "--no-fidelity"], check=True, stdout=subprocess.DEVNULL)
    return out


def evaluate(artifact: Path, reference: Path, text: Path) -> dict:
    completed = subprocess.run(["phi3-edge", "eval", str(artifact), "--ref", str(reference), "--text", str(text),
                                "--json"], check=True, capture_output=True, text=True)
    return json.loads(completed.stdout)


def main() -> None:
    BUILD.mkdir(exist_ok=True)
    text = heldout_text(BUILD / "demo-heldout.py")
    artifacts = [(target, algo, export(target, algo)) for target, algo in TARGETS]
    reference = artifacts[0][2]
    print("| target | algorithm | model.onnx.data | held-out perplexity | vs fp32 | KL vs fp32 | top-1 vs fp32 |")
    print("|---|---|---|---|---|---|---|")
    for target, algo, artifact in artifacts:
        report = evaluate(artifact, reference, text)
        size = (artifact / "model.onnx.data").stat().st_size / 2**20
        ratio = report["ppl"] / report["ref_ppl"] - 1
        print(f"| {target} | {algo if target != 'cpu-fp32' else '-'} | {size:.1f} MiB | {report['ppl']:.2f} | "
              f"{ratio:+.1%} | {report['kl']:.4f} | {report['top1']:.1%} |")


if __name__ == "__main__":
    main()
