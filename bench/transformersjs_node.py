"""Transformers.js (Node, onnxruntime-node) on our Optimum-layout folders: same greedy tokens as our runtime?

    python bench/transformersjs_node.py                        # demo checkpoint, cpu-fp32 / cpu-int8 / cpu-int4
    python bench/transformersjs_node.py --targets cpu-int4 --new-tokens 32

Needs `node` and `npm` (skipped with a message otherwise). Installs @huggingface/transformers once into
--work/node (ONNXRUNTIME_NODE_INSTALL=skip: the CPU binaries ship inside onnxruntime-node; the skipped step only
fetches CUDA libraries). Each target is exported from the demo checkpoint, laid out with
phi3_edge.exporter.optimum_layout, loaded by AutoModelForCausalLM.from_pretrained with the layout's dtype, and
generates greedily; the row compares its token ids with phi3-edge's runtime on the same folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TRANSFORMERS_JS = "@huggingface/transformers@4.3.2"
SCRIPT = """
import { AutoTokenizer, AutoModelForCausalLM, env } from '@huggingface/transformers';
const [,, root, name, dtype, prompt, n] = process.argv;
env.allowRemoteModels = false;
env.localModelPath = root;
const tokenizer = await AutoTokenizer.from_pretrained(name);
const model = await AutoModelForCausalLM.from_pretrained(name, { dtype, device: 'cpu' });
const inputs = tokenizer(prompt);
const started = performance.now();
const out = await model.generate({ ...inputs, max_new_tokens: Number(n), do_sample: false });
const ids = Array.from(out.data, Number);
console.log(JSON.stringify({ ids: ids.slice(inputs.input_ids.dims[1]), ms: performance.now() - started }));
"""


def ensure_node_packages(work: Path) -> Path:
    folder = work / "node"
    if not (folder / "node_modules" / "@huggingface" / "transformers").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent", TRANSFORMERS_JS], cwd=folder,
                       check=True, env={**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip"})
    (folder / "generate.mjs").write_text(SCRIPT, encoding="utf-8")
    return folder


def prepare(target: str, work: Path) -> tuple[Path, str]:
    """Export the demo to `target` and add the Optimum layout (kept in --work between runs)."""
    from phi3_edge import api
    from phi3_edge.exporter.checkpoint import DEMO_DIR
    from phi3_edge.exporter.optimum_layout import write_optimum_layout

    folder = work / "artifacts" / target
    chosen = api.get_target(target)
    if not (folder / "manifest.json").is_file():
        api.export("demo", target, folder, force=True, progress=False, fidelity=False)
    config = json.loads((DEMO_DIR / "config.json").read_text(encoding="utf-8"))
    layout = write_optimum_layout(folder, config, weight_format=chosen.weight_format, io_dtype=chosen.io_dtype)
    return folder, layout.dtype


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="+", default=["cpu-fp32", "cpu-int8", "cpu-int4"])
    parser.add_argument("--prompt", default="def fibonacci(n):")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--work", type=Path, default=Path("/tmp/phi3-edge-bench/transformersjs"))
    args = parser.parse_args()
    if shutil.which("node") is None or shutil.which("npm") is None:
        print("node / npm not found: skipped")
        return 0
    from phi3_edge import api

    node = ensure_node_packages(args.work)
    version = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    print(f"Transformers.js {TRANSFORMERS_JS.rsplit('@', 1)[1]} on node {version}, prompt {args.prompt!r}, "
          f"{args.new_tokens} greedy tokens")
    print(f"{'target':<12} {'dtype':<6} {'same tokens':<12} {'first diff':<10} {'tjs ms':>8} {'ours ms':>8}")
    for target in args.targets:
        folder, dtype = prepare(target, args.work)
        done = subprocess.run(["node", str(node / "generate.mjs"), str(folder.parent), folder.name, dtype,
                               args.prompt, str(args.new_tokens)], cwd=node, capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            print(f"{target:<12} {dtype:<6} FAILED: {(done.stderr.strip().splitlines() or ['?'])[-1][:100]}")
            continue
        theirs = json.loads(done.stdout.strip().splitlines()[-1])
        model = api.load(folder, verify=False)
        started = time.perf_counter()
        ours = list(model.generate(args.prompt, max_new_tokens=args.new_tokens).token_ids)
        ours_ms = (time.perf_counter() - started) * 1000
        same = theirs["ids"] == ours
        first = next((i for i, (a, b) in enumerate(zip(theirs["ids"], ours, strict=False)) if a != b), None)
        print(f"{target:<12} {dtype:<6} {str(same):<12} {'-' if first is None else first:<10} "
              f"{theirs['ms']:>8.0f} {ours_ms:>8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
