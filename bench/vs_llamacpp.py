"""phi3-edge vs llama.cpp on the same checkpoint and the same CPU threads: TTFT, decode tok/s, KL, bytes.

    checkpoint (HF, bf16) --phi3-edge export --target cpu-int4--> ours, timed by run_bench (ort | genai)
                          --phi3-edge export --target cpu-fp32--> the KL reference (every row is measured vs it)
                          --convert_hf_to_gguf.py--> BF16.gguf --llama-quantize--> Q4_0 / Q4_K_M / Q8_0.gguf,
                                                                                   timed by llama-bench

Speed: every row runs --passes times, in reversed order on even passes (a machine that gets busier or quieter
favours no row), each in its own process; the best TTFT and decode speed of all passes is the row's figure and
the mean decode is printed beside it. Ours: run_bench (warm-up, then --repeats greedy runs of exactly
--gen-len tokens after a --prompt-len prompt). llama.cpp: llama-bench -r --repeats, pp<prompt> at depth 0 for
TTFT (prompt / pp t/s) and tg<gen> at depth <prompt> for decode.

KL: mean KL(fp32 || row) over every position of the built-in evaluation prompts (phi3_edge.evaluate.texts,
encoded by our tokenizer), the same ids fed to our graph and to libllama: `phi3-edge eval`'s number. BF16 is
a KL-only row: llama.cpp on the unquantized weights, so its KL (~0) checks the comparison itself.

    python bench/vs_llamacpp.py --layers 8 --llamacpp-dir /path/to/llama.cpp   # reuse a build
    python bench/vs_llamacpp.py --checkpoint DIR --artifact int4-b128=build/x  # extra artifacts of ours
    python bench/vs_llamacpp.py --model smollm2:135m --gguf SmolLM2-135M-Instruct.Q4_1.gguf  # a real model
Without --llamacpp-dir the sdist is downloaded and built under --work (minutes). Writes vs_llamacpp.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llamacpp  # noqa: E402
from checkpoints import write_fidelity_checkpoint  # noqa: E402

OUR_BACKENDS = ("ort", "genai")


@dataclass(frozen=True)
class Row:
    runtime: str  # "phi3-edge ort" | "phi3-edge genai" | "llama.cpp"
    label: str  # artifact label or GGUF type
    path: Path  # artifact folder or .gguf
    timed: bool = True

    @property
    def key(self) -> str:
        return f"{self.runtime} {self.label}"


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="an HF Phi-3 folder (default: random Phi-3-mini shapes)")
    parser.add_argument("--layers", type=int, default=8, help="layers of the generated checkpoint")
    parser.add_argument("--model", help="instead of --checkpoint: any `phi3-edge export --model` (a short name, a "
                                        "GGUF file, ...); needs --gguf for the llama.cpp side")
    parser.add_argument("--gguf", type=Path, help="llama.cpp's source for --model: this GGUF, requantized "
                                                  "(--allow-requantize) to each --quant type")
    parser.add_argument("--llamacpp-dir", type=Path, help="an existing llama.cpp tree with build/bin tools")
    parser.add_argument("--artifact", action="append", default=[], metavar="LABEL=FOLDER",
                        help="another artifact folder of ours to time beside cpu-int4 (repeatable)")
    parser.add_argument("--quant", nargs="+", default=list(llamacpp.QUANT_TYPES), help="llama-quantize types")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--no-kl", action="store_true", help="skip the KL columns (speed only)")
    parser.add_argument("--no-genai", action="store_true", help="skip the onnxruntime-genai rows")
    parser.add_argument("--work", type=Path, default=Path("/tmp/phi3-edge-bench/vs-llamacpp"))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", choices=["ours", "kl-ref", "kl-ours", "kl-llama"], help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="ort", help=argparse.SUPPRESS)
    parser.add_argument("--reference", type=Path, default=Path("fp32"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- preparing the rows ----------------------------------------------------------------------------------------

def export_ours(model: str, target: str, work: Path) -> Path:
    """`phi3-edge export --target <target>` of the model (kept under --work; its own KL gate is off, the bench
    measures KL itself)."""
    folder = work / f"{Path(model).name.replace(':', '-')}-{target}"
    if not (folder / "manifest.json").is_file():
        command = [sys.executable, "-m", "phi3_edge.cli", "export", "--model", model, "--target", target,
                   "--output", str(folder), "--force", "--no-fidelity", "--quiet"]
        subprocess.run(command, check=True)
    return folder


def prepare(args: argparse.Namespace) -> tuple[list[Row], Path]:
    """Every row to measure, and the fp32 reference folder."""
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "llamacpp.log"
    if args.model and not args.gguf:
        raise SystemExit("error: --model needs --gguf (the file llama.cpp quantizes from)")
    model = args.model or str(args.checkpoint or write_fidelity_checkpoint(args.work, args.layers))
    ours = {"cpu-int4": export_ours(model, "cpu-int4", args.work)}
    for item in args.artifact:
        label, _, folder = item.partition("=")
        ours[label] = Path(folder)
    reference = export_ours(model, "cpu-fp32", args.work)
    llama = llamacpp.find_or_build(args.llamacpp_dir, args.work, log)
    if args.gguf:  # already quantized: its own row (KL only) and requantized copies
        source, source_label = args.gguf, "source " + args.gguf.stem.rsplit(".", 1)[-1]
    else:
        checkpoint = Path(model)
        source = llamacpp.convert(llama, checkpoint, args.work / f"{checkpoint.name}-BF16.gguf", log)
        source_label = "BF16"
    backends = OUR_BACKENDS[:1] if args.no_genai else OUR_BACKENDS
    rows = [Row(f"phi3-edge {backend}", label, folder) for label, folder in ours.items() for backend in backends]
    rows += [Row("llama.cpp", kind, llamacpp.quantize(llama, source, kind, log, args.threads, args.work))
             for kind in args.quant]
    rows.append(Row("llama.cpp", source_label, source, timed=False))
    args.llama = llama
    return rows, reference


# --- workers (each in a fresh process) ---------------------------------------------------------------------------

def worker(args: argparse.Namespace) -> dict[str, Any]:
    if args.worker == "ours":
        from phi3_edge.edge_runtime.bench import run_bench

        report = run_bench(args.path, args.prompt_len, args.gen_len, backend=args.backend, repeats=args.repeats,
                           intra_op_threads=args.threads, verify=False)
        return report.to_json()
    reference = args.work / f"kl-reference-{args.reference.name}.npz"  # the fp32 folder's log-probs
    if args.worker == "kl-ref":
        return _write_reference(args.path, reference, args.threads)
    stored = np.load(reference)
    sequences = [stored[f"ids{i}"].tolist() for i in range(int(stored["count"]))]
    if args.worker == "kl-ours":
        logps = _our_log_probs(args.path, sequences, args.threads)
    else:
        from phi3_edge.evaluate.forward import log_softmax

        llama = llamacpp.find_or_build(args.llamacpp_dir, args.work, args.work / "llamacpp.log")
        logps = [log_softmax(x) for x in llamacpp.read_logits(llama, args.path, sequences, args.threads)]
    return _kl(stored, logps)


def _write_reference(folder: Path, out: Path, threads: int) -> dict[str, Any]:
    from phi3_edge.evaluate.forward import ArtifactModel
    from phi3_edge.evaluate.texts import PROMPTS

    model = ArtifactModel(folder, intra_op_threads=threads)
    sequences = [ids[:model.config.context_length] for ids in (model.encode(p) for p in PROMPTS) if ids]
    arrays: dict[str, np.ndarray] = {"count": np.asarray(len(sequences))}
    with model:
        for index, ids in enumerate(sequences):
            arrays[f"ids{index}"] = np.asarray(ids, dtype=np.int64)
            arrays[f"logp{index}"] = model.log_probs(ids).astype(np.float32)  # (S, V)
    np.savez(out, **arrays)
    return {"positions": sum(len(ids) for ids in sequences)}


def _our_log_probs(folder: Path, sequences: list[list[int]], threads: int) -> list[np.ndarray]:
    from phi3_edge.evaluate.forward import ArtifactModel

    with ArtifactModel(folder, intra_op_threads=threads) as model:
        return [model.log_probs(ids) for ids in sequences]


def _kl(stored: Any, logps: list[np.ndarray]) -> dict[str, Any]:
    from phi3_edge.evaluate.fidelity import kl_per_position

    kls, agree = [], []
    for index, logp in enumerate(logps):
        ref = stored[f"logp{index}"].astype(np.float64)  # (S, V)
        if logp.shape != ref.shape:
            raise RuntimeError(f"logits of shape {logp.shape}, the reference has {ref.shape}")
        kls.append(kl_per_position(ref, logp))
        agree.append(ref.argmax(axis=-1) == logp.argmax(axis=-1))
    return {"kl": float(np.concatenate(kls).mean()), "top1": float(np.concatenate(agree).mean())}


def _spawn(args: argparse.Namespace, kind: str, path: Path, backend: str = "ort") -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", kind, "--path", str(path), "--backend", backend,
               "--reference", str(args.reference),
               "--work", str(args.work), "--threads", str(args.threads), "--prompt-len", str(args.prompt_len),
               "--gen-len", str(args.gen_len), "--repeats", str(args.repeats)]
    if args.llamacpp_dir is not None:
        command += ["--llamacpp-dir", str(args.llamacpp_dir)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- measuring ---------------------------------------------------------------------------------------------------

def measure_speed(row: Row, args: argparse.Namespace) -> dict[str, Any]:
    if row.runtime == "llama.cpp":
        try:
            return llamacpp.bench(args.llama, row.path, args.threads, args.prompt_len, args.gen_len, args.repeats)
        except RuntimeError as exc:
            return {"error": str(exc)}
    return _spawn(args, "ours", row.path, backend=row.runtime.split()[-1])


def measure_kl(rows: list[Row], reference: Path, args: argparse.Namespace) -> dict[Path, dict[str, Any]]:
    """KL per distinct artifact or GGUF (both of our backends run the same graph: one KL)."""
    args.reference = reference
    ref = _spawn(args, "kl-ref", reference)
    if "error" in ref:
        return {row.path: ref for row in rows}
    results: dict[Path, dict[str, Any]] = {}
    for row in rows:
        if row.path not in results:
            results[row.path] = _spawn(args, "kl-llama" if row.runtime == "llama.cpp" else "kl-ours", row.path)
    return results


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows, reference = prepare(args)
    kl = {} if args.no_kl else measure_kl(rows, reference, args)
    timed = [row for row in rows if row.timed]
    runs: dict[str, list[dict[str, Any]]] = {row.key: [] for row in timed}
    for index in range(args.passes):
        for row in timed if index % 2 == 0 else timed[::-1]:
            runs[row.key].append(measure_speed(row, args))
    out = []
    for row in rows:
        result = {"runtime": row.runtime, "label": row.label, "path": str(row.path), "bytes": _bytes(row.path),
                  **kl.get(row.path, {}), **_best(runs.get(row.key, []))}
        out.append(result)
    (args.work / "vs_llamacpp.json").write_text(json.dumps({"rows": out, "runs": runs}, indent=2) + "\n")
    return out


def _bytes(path: Path) -> int:
    """The weights a row loads: a GGUF file, or our model.onnx.data (model.onnx itself is a few hundred KB)."""
    data = path / "model.onnx.data"
    return (data if path.is_dir() else path).stat().st_size


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [run for run in runs if "error" not in run]
    if not ok:
        return runs[0] if runs else {}
    return {"ttft_s": min(run["ttft_s"] for run in ok), "decode_tps": max(run["decode_tps"] for run in ok),
            "decode_tps_mean": sum(run["decode_tps"] for run in ok) / len(ok), "passes": len(ok)}


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    base = next((r for r in rows if r["label"] == "Q4_0" and "decode_tps" in r), None)
    model = args.model or args.checkpoint or f"Phi-3-mini shapes, {args.layers} layers"
    title = (f"{model}; {args.threads} threads, prompt "
             f"{args.prompt_len}, generate {args.gen_len}; best of {args.passes} passes x {args.repeats} runs")
    table = Table("runtime", "weights", "MB", "KL vs fp32", "top-1", "TTFT ms", "decode tok/s", "mean decode",
                  "decode vs Q4_0", "TTFT vs Q4_0", title=title)
    for r in rows:
        speed = "decode_tps" in r
        table.add_row(
            r["runtime"], r["label"], f"{r['bytes'] / 1e6:.1f}",
            f"{r['kl']:.4f}" if "kl" in r else r.get("error", "-")[:40],
            f"{r['top1']:.3f}" if "top1" in r else "-",
            f"{r['ttft_s'] * 1000:.0f}" if speed else "-", f"{r['decode_tps']:.2f}" if speed else "-",
            f"{r['decode_tps_mean']:.2f}" if speed else "-",
            f"{r['decode_tps'] / base['decode_tps']:.2f}x" if speed and base else "-",
            f"{r['ttft_s'] / base['ttft_s']:.2f}x" if speed and base else "-")
    Console(width=max(Console().width, 140)).print(table)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    rows = run(args)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, args)
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
