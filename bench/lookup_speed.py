"""Prompt-lookup decoding vs plain decoding on the same artifact: decode tok/s, acceptance, identical tokens.

Tasks (greedy, exactly --gen-len tokens unless eos comes first, the same for both):
  edit    a chat request to return a Python function with one name changed (the reply copies the prompt)
  code    raw completion of a module whose next function repeats an earlier one's shape
  prose   a chat question with nothing to copy (lookup should cost ~nothing here)
A folder without a chat template runs the raw `code` task only. Each (task, mode) runs --repeats times in
alternating order; the best decode speed is reported and the tokens of both modes are compared.

Usage: python bench/lookup_speed.py FOLDER [--draft 8] [--threads 2] [--gen-len 128] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

SNIPPET = textwrap.dedent('''\
    def wrap_lines(text, width):
        """Split text into lines of at most width characters, breaking at spaces."""
        words = text.split()
        lines = []
        current = ""
        for word in words:
            if current and len(current) + 1 + len(word) > width:
                lines.append(current)
                current = word
            else:
                current = current + " " + word if current else word
        if current:
            lines.append(current)
        return lines
    ''')
TASKS: dict[str, Any] = {
    "edit": [{"role": "user", "content": "Rename the variable `current` to `line` in this function and return "
                                         "the whole function:\n\n" + SNIPPET}],
    "code": SNIPPET + "\n\n" + SNIPPET.replace("wrap_lines", "wrap_words").split("words = text")[0],
    "prose": [{"role": "user", "content": "Write a short paragraph about why the sky looks blue."}],
}


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--draft", type=int, default=8, help="draft tokens per verify pass")
    parser.add_argument("--gen-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def run_task(model: Any, prompt: Any, args: argparse.Namespace) -> dict[str, Any]:
    best: dict[int, Any] = {}
    for index in range(args.repeats):
        for lookup in (0, args.draft) if index % 2 == 0 else (args.draft, 0):
            result = model.generate(prompt, args.gen_len, lookup=lookup)
            if lookup not in best or result.tokens_per_second > best[lookup].tokens_per_second:
                best[lookup] = result
    plain, fast = best[0], best[args.draft]
    stats = fast.lookup
    return {"tokens": len(plain.token_ids), "identical": plain.token_ids == fast.token_ids,
            "plain_tps": plain.tokens_per_second, "lookup_tps": fast.tokens_per_second,
            "speedup": fast.tokens_per_second / plain.tokens_per_second if plain.tokens_per_second else 0.0,
            "passes": stats.passes, "drafted": stats.drafted, "accepted": stats.accepted,
            "acceptance": stats.acceptance, "ttft_ms": plain.prefill_seconds * 1000}


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    from phi3_edge.edge_runtime import load

    model = load(args.folder, intra_op_threads=args.threads, verify=False)
    try:
        _ = model.chat_template
        tasks = TASKS
    except Exception:  # no chat template: the raw completion task only
        tasks = {"code": TASKS["code"]}
    model.generate(TASKS["code"], 2)  # warm-up
    rows = {name: run_task(model, prompt, args) for name, prompt in tasks.items()}
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("task", "tokens", "plain tok/s", "lookup tok/s", "speedup", "drafted", "accepted",
                  "acceptance", "verify passes", "same tokens",
                  title=f"{args.folder.name}: prompt lookup, {args.draft} draft tokens, {args.threads} threads, "
                        f"best of {args.repeats}")
    for name, r in rows.items():
        table.add_row(name, str(r["tokens"]), f"{r['plain_tps']:.1f}", f"{r['lookup_tps']:.1f}",
                      f"{r['speedup']:.2f}x", str(r["drafted"]), str(r["accepted"]), f"{r['acceptance']:.2f}",
                      str(r["passes"]), "yes" if r["identical"] else "NO")
    Console(width=max(Console().width, 120)).print(table)
    return 0 if all(r["identical"] for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
