"""A chat turn's TTFT against the length of the conversation before it: KV reuse (Conversation) vs re-prefill.

For each history length H the conversation is H tokens of earlier turns (filler user/assistant messages
rendered with the artifact's chat template; raw random ids when it has none), then one new user message of
about --message-len tokens. Two measurements per H, in alternating order, best of --repeats:

  reuse      the cache already holds the history (a previous turn ran on it); this turn feeds only what
             follows the common token prefix: the new message and the template's tokens around it
  re-prefill a fresh generation over the whole conversation (what `chat` did before KV reuse)

Usage: python bench/chat_ttft.py FOLDER [--history 0 256 512 1024] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

FILLER_USER = "Tell me more about how the cache keeps the keys and values of earlier tokens for later steps."
FILLER_REPLY = "It stores them once per layer, so each new token only computes its own and reads the rest."
NEW_MESSAGE = "Now summarise all of that in two short sentences for a reader who has never seen a transformer."


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--history", type=int, nargs="+", default=[0, 256, 512, 1024])
    parser.add_argument("--message-len", type=int, default=32, help="new tokens per turn (raw-id mode)")
    parser.add_argument("--gen-len", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


class Turns:
    """Prompt ids for (history, new message): chat-template renders, or raw ids for a template-less folder."""

    def __init__(self, model: Any, message_len: int) -> None:
        self.model = model
        try:
            _ = model.chat_template
            self.templated = True
        except Exception:  # a folder without chat_template: measure on raw ids
            self.templated = False
        vocab = min(model.tokenizer.vocab_size, model.config.vocab_size)
        self._ids = np.random.default_rng(0).integers(0, vocab, size=model.config.context_length).tolist()
        self._message_len = message_len

    def history_and_turn(self, history_tokens: int) -> tuple[list[int], list[int]]:
        """(ids the cache holds after the previous turn, ids of this turn's full prompt)."""
        if not self.templated:
            return self._ids[:history_tokens], self._ids[:history_tokens + self._message_len]
        messages: list[dict[str, str]] = []
        while len(self.model.encode_chat(messages or [{"role": "user", "content": ""}])) < history_tokens:
            messages += [{"role": "user", "content": FILLER_USER}, {"role": "assistant", "content": FILLER_REPLY}]
        before = self.model.encode_chat(messages) if messages else []
        turn = self.model.encode_chat([*messages, {"role": "user", "content": NEW_MESSAGE}])
        return before, turn


def measure(model: Any, turns: Turns, history: int, gen_len: int, reuse: bool) -> tuple[float, int, int]:
    """(TTFT seconds, history tokens, tokens fed) of one turn."""
    from phi3_edge.edge_runtime.conversation import PrefixCache
    from phi3_edge.edge_runtime.generate import GenerationOptions, Generator

    before, turn = turns.history_and_turn(history)
    options = GenerationOptions(max_new_tokens=gen_len, ignore_eos=True)
    cache = None
    if reuse:
        cache = PrefixCache(model.session)
        if before:  # the previous turn: its prompt is what the cache holds now
            for _ in Generator(model.session, before, GenerationOptions(max_new_tokens=1), model.eos_ids,
                               cache=cache):
                pass
    generator = Generator(model.session, turn, options, model.eos_ids, cache=cache)
    for _ in generator:
        pass
    return generator.prefill_seconds, len(before), len(turn) - generator.reused_tokens


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    from phi3_edge.edge_runtime import load

    model = load(args.folder, intra_op_threads=args.threads, verify=False)
    turns = Turns(model, args.message_len)
    measure(model, turns, args.history[0], 2, reuse=False)  # warm-up
    rows = []
    for history in args.history:
        best: dict[bool, float] = {True: float("inf"), False: float("inf")}
        fed: dict[bool, int] = {}
        held = 0
        for index in range(args.repeats):
            for reuse in (True, False) if index % 2 == 0 else (False, True):
                ttft, held, fed[reuse] = measure(model, turns, history, args.gen_len, reuse)
                best[reuse] = min(best[reuse], ttft)
        rows.append({"history_tokens": held, "fed_reuse": fed[True], "fed_full": fed[False],
                     "ttft_reuse_ms": best[True] * 1000, "ttft_full_ms": best[False] * 1000})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, args, turns.templated)
    return 0


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace, templated: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    mode = "chat template" if templated else f"raw ids, {args.message_len}-token messages"
    table = Table("history tokens", "fed (reuse)", "TTFT reuse ms", "fed (re-prefill)", "TTFT re-prefill ms",
                  "speedup", title=f"{args.folder.name}: chat turn TTFT, {mode}, {args.threads} threads, "
                                   f"best of {args.repeats}")
    for r in rows:
        table.add_row(str(r["history_tokens"]), str(r["fed_reuse"]), f"{r['ttft_reuse_ms']:.1f}", str(r["fed_full"]),
                      f"{r['ttft_full_ms']:.1f}", f"{r['ttft_full_ms'] / r['ttft_reuse_ms']:.1f}x")
    Console(width=max(Console().width, 110)).print(table)


if __name__ == "__main__":
    sys.exit(main())
