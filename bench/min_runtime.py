"""Which onnxruntime releases run our artifacts: each target (and graph variant) against a range of versions.

    python bench/min_runtime.py                                 # ORT 1.17 .. installed, every artifact
    python bench/min_runtime.py --versions 1.20.1 1.21.1 1.22.0 --json

For each version, `pip install --no-deps --target WORK/ort-X onnxruntime==X` (once, cached in --work), then a
child process with only that onnxruntime on its path loads each artifact's model.onnx and runs one 16-token
prefill (past length 0) on the CPU EP. Its logits are compared with the installed onnxruntime's:
  ok        session created and logits within 1e-3 of the installed version's
  close x   logits within 0.1: kernel rounding (int8 activation quantization, fp16 accumulation) changed
  DIFF x    logits differ by more: a semantics change (e.g. GQA's local window)
  refused   session creation failed (unknown op / attribute, IR or opset too new); the first words are shown
  import    that onnxruntime wheel does not import here (numpy ABI, Python version)
The artifacts: the demo checkpoint on each CPU-runnable target, the demo with a quantized shared embedding
(GatherBlockQuantized), and the tiny `sliding` and `longrope` test checkpoints (cpu-fp32).
phi3_edge/runtime_compat.py's table is checked against this (its comments cite the rows).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_VERSIONS = ("1.17.3", "1.18.1", "1.19.2", "1.20.1", "1.21.1", "1.22.1", "1.23.2", "1.24.4")
PROMPT_LEN = 16  # longer than the sliding test checkpoint's window (8), so a window off by one shows
TOLERANCE = 1e-3
KERNEL_TOLERANCE = 0.1  # the demo's logits have RMS ~3: 0.1 is rounding, not a different computation

PROBE = r"""
import json, sys
import numpy as np
try:
    import onnxruntime as ort
except Exception as exc:
    print(json.dumps({"import": f"{type(exc).__name__}: {exc}"[:200]})); sys.exit(0)
out = {"version": ort.__version__, "results": {}}
types = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}
for name, path in json.loads(sys.argv[1]).items():
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feeds = {}
        for arg in session.get_inputs():
            if arg.name == "input_ids":
                feeds[arg.name] = (np.arange(__N__, dtype=np.int64).reshape(1, -1) * 7 + 3) % 200
            elif arg.name == "attention_mask":
                feeds[arg.name] = np.ones((1, __N__), dtype=np.int64)
            else:
                heads, dim = arg.shape[1], arg.shape[3]
                feeds[arg.name] = np.zeros((1, heads, 0, dim), dtype=types[arg.type])
        logits = session.run(["logits"], feeds)[0].astype(np.float32)
        np.save(sys.argv[2] + "/" + name + ".npy", logits)
        out["results"][name] = {"ok": True}
    except Exception as exc:
        out["results"][name] = {"ok": False, "error": " ".join(str(exc).split())[:300]}
print(json.dumps(out))
""".replace("__N__", str(PROMPT_LEN))


def build_artifacts(work: Path) -> dict[str, Path]:
    """The artifacts to probe (exported once into --work with the installed phi3-edge)."""
    from phi3_edge import api
    from phi3_edge.targets.table import TARGETS

    artifacts: dict[str, Path] = {}

    def export(name: str, model: str, target: str, **options: object) -> None:
        folder = work / "artifacts" / name
        if not (folder / "manifest.json").is_file():
            api.export(model, target, folder, force=True, progress=False, fidelity=False, **options)  # type: ignore[arg-type]
        artifacts[name] = folder / "model.onnx"

    for target in TARGETS.values():
        if target.execution_provider == "cpu" or target.io_dtype == "float16":
            export(f"demo-{target.name}", "demo", target.name)
    export("demo-cpu-int4-shared-table", "demo", "cpu-int4", lm_head="int4", embeddings="quantized")
    try:
        from tests.fixtures.checkpoints import make_checkpoint
    except ImportError:  # torch/transformers absent: the demo rows alone
        return artifacts
    for variant in ("sliding", "longrope"):
        checkpoint = work / "checkpoints" / variant
        if not (checkpoint / "config.json").is_file():
            make_checkpoint(checkpoint, variant)
        export(f"{variant}-cpu-fp32", str(checkpoint), "cpu-fp32")
    return artifacts


def install(version: str, work: Path) -> Path:
    target = work / f"ort-{version}"
    if not (target / ".complete").is_file():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                        f"onnxruntime=={version}"], check=True)
        (target / ".complete").touch()
    return target


def probe(artifacts: dict[str, Path], path_dir: Path | None, out: Path) -> dict[str, object]:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if path_dir is not None:
        env["PYTHONPATH"] = str(path_dir)
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps({k: str(v) for k, v in artifacts.items()}),
                           str(out)], capture_output=True, text=True, env=env, cwd=str(out), check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"import": (done.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    result: dict[str, object] = json.loads(lines[-1])
    return result


def cell(name: str, result: dict[str, object], reference: Path, got: Path) -> str:
    import numpy as np

    if "import" in result:
        return "import"
    entry = result["results"][name]  # type: ignore[index]
    if not entry["ok"]:
        return "refused: " + " ".join(entry["error"].split()[:8])
    diff = float(np.max(np.abs(np.load(got / f"{name}.npy") - np.load(reference / f"{name}.npy"))))
    if diff <= TOLERANCE:
        return "ok"
    return f"close {diff:.3g}" if diff <= KERNEL_TOLERANCE else f"DIFF {diff:.3g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", nargs="+", default=list(DEFAULT_VERSIONS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/phi3-edge-bench/min-runtime"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import onnxruntime

    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    artifacts = build_artifacts(work)
    reference = work / "logits-installed"
    base = probe(artifacts, None, reference)
    table: dict[str, dict[str, str]] = {name: {} for name in artifacts}
    for version in args.versions:
        try:
            site = install(version, work)
        except subprocess.CalledProcessError:
            for name in artifacts:
                table[name][version] = "no wheel"
            continue
        result = probe(artifacts, site, work / f"logits-{version}")
        for name in artifacts:
            table[name][version] = cell(name, result, reference, work / f"logits-{version}")
    if args.json:
        print(json.dumps({"installed": onnxruntime.__version__, "baseline": base, "table": table}, indent=2))
        return 0
    print(f"prefill logits vs installed onnxruntime {onnxruntime.__version__} (ok: within {TOLERANCE})")
    for name, row in table.items():
        print(f"\n{name}")
        for version, text in row.items():
            print(f"  {version:>8}  {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
