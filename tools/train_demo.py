"""Train the bundled demo checkpoint: a small Phi-3-architecture model on CPython standard-library source.

    python tools/train_demo.py --out phi3_edge/demo/checkpoint            # the shipped checkpoint (--steps default)
    python tools/train_demo.py --out /tmp/demo --steps 20                 # a quick timing run

Reproducible: the corpus is a pinned, sorted list of stdlib modules (tools/demo_corpus.py) read from the running
interpreter, the tokenizer is trained from it deterministically, the model, data order and optimizer are seeded, and
training runs a fixed number of steps on one CPU thread with deterministic algorithms. (A wall-clock budget would
not be reproducible, so `--steps` is the knob.) The same interpreter, torch and transformers versions on the same
kind of CPU (kernels differ between instruction sets) give the same weights; the versions are recorded in
training.json, the corpus lists and their hashes in corpus.json.

What is written to --out:
  config.json, model.safetensors (bfloat16 weights, ~10 MB), generation_config.json   (save_pretrained)
  tokenizer.json, tokenizer_config.json (Phi-3 chat template), special_tokens_map.json
  corpus.json    the train / held-out module lists, token counts, sha256 of the texts
  training.json  steps, seconds, final train loss, held-out perplexity, versions, seed, sample completion

The default --steps was chosen from a timing run so that training takes about 25 minutes on one core of the
2-core AMD EPYC build machine (see DEFAULT_STEPS); checking a change takes `--steps 20` and about a minute.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

# One thread everywhere, before torch / tokenizers start their pools: determinism, and the other core stays free.
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_corpus import HELDOUT_MODULES, TRAIN_MODULES, read_modules  # noqa: E402
from phi3_tokenizer_files import EOS, SPECIAL_TOKENS, special_tokens_map, tokenizer_config  # noqa: E402

SEED = 1234
DEFAULT_STEPS = 800
"""Chosen from a timing run on the build machine (AMD EPYC with avx512_bf16, one thread, the other core busy):
~1.7 s/step with bfloat16 autocast (3.6 s/step in float32) at batch 16 x 256, so 800 steps take ~23 minutes."""

BPE_VOCAB = 4000  # 256 byte symbols + merges; the 5 special tokens come after, as Phi-3 places them (32000+)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|' + message['role'] + '|>' + '\n' + message['content'] + '<|end|>\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
MODEL_SHAPE = {
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,  # grouped-query attention, 2 query heads per KV head
    "max_position_embeddings": 1024,
}
SAMPLE_PROMPT = "def fibonacci(n):"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"optimizer steps (default {DEFAULT_STEPS})")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step (default 16)")
    parser.add_argument("--seq", type=int, default=256, help="tokens per sequence (default 256)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    parser.add_argument("--warmup", type=float, default=0.05, help="warmup fraction of the steps (default 0.05)")
    parser.add_argument("--seed", type=int, default=SEED, help=f"seed (default {SEED})")
    parser.add_argument("--log-every", type=int, default=10, help="print the train loss every N steps")
    parser.add_argument(
        "--amp", choices=("bfloat16", "none"), default="bfloat16",
        help="autocast dtype for the forward pass (default bfloat16: twice as fast where the CPU has native bf16; "
        "the weights and optimizer stay float32). Pinned, not detected, so a run does not depend on the CPU",
    )
    parser.add_argument(
        "--dtype", choices=("bfloat16", "float32"), default="bfloat16",
        help="dtype of the saved weights (training is float32; default bfloat16, ~10 MB)",
    )
    return parser.parse_args(argv)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


# ---------------------------------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str]):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tokenizer


def encode_stream(tokenizer, texts: list[str], eos_id: int) -> torch.Tensor:
    """All texts as one token stream, each module followed by <|endoftext|>."""
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(texts, add_special_tokens=False):
        ids.extend(encoding.ids)
        ids.append(eos_id)
    return torch.tensor(ids, dtype=torch.long)


# ---------------------------------------------------------------------------------------------------- model


def build_model(vocab_size: int, eos_id: int):
    from transformers import Phi3Config, Phi3ForCausalLM

    config = Phi3Config(
        vocab_size=vocab_size,
        **MODEL_SHAPE,
        original_max_position_embeddings=MODEL_SHAPE["max_position_embeddings"],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        sliding_window=None,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attention_dropout=0.0,
        initializer_range=0.02,
    )
    return Phi3ForCausalLM(config)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def make_optimizer(model, lr: float) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]  # RMSNorm weights
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, foreach=False)


class Batches:
    """Non-overlapping (seq + 1)-token windows of the train stream, reshuffled each epoch by a seeded generator."""

    def __init__(self, stream: torch.Tensor, seq: int, batch: int, seed: int) -> None:
        self.windows = stream[: (len(stream) - 1) // seq * seq + 1].unfold(0, seq + 1, seq)
        self.batch = batch
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.epoch = 0

    def next(self) -> torch.Tensor:
        if len(self.order) < self.batch:
            self.order = torch.randperm(len(self.windows), generator=self.generator)
            self.epoch += 1
        picked, self.order = self.order[: self.batch], self.order[self.batch :]
        return self.windows[picked]


def causal_lm_loss(model, windows: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=windows[:, :-1], use_cache=False).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), windows[:, 1:].reshape(-1))


@torch.no_grad()
def heldout_perplexity(model, stream: torch.Tensor, seq: int, batch: int) -> tuple[float, int]:
    """Token-level perplexity over non-overlapping (seq + 1)-token windows of the held-out stream (tail included)."""
    model.eval()
    windows = list(stream[: (len(stream) - 1) // seq * seq + 1].unfold(0, seq + 1, seq))
    covered = len(windows) * seq
    if covered < len(stream) - 1:
        windows.append(stream[covered:])  # the shorter tail window, scored on its own
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(windows), batch):
        group = windows[start : start + batch]
        same = [w for w in group if len(w) == seq + 1]
        for chunk in ([torch.stack(same)] if same else []) + [w[None] for w in group if len(w) != seq + 1]:
            logits = model(input_ids=chunk[:, :-1], use_cache=False).logits.float()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum")
            total_nll += nll.item()
            total_tokens += chunk[:, 1:].numel()
    model.train()
    return math.exp(total_nll / total_tokens), total_tokens


def greedy_sample(model, tokenizer, prompt: str, new_tokens: int = 64) -> str:
    ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False).ids])
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             do_sample=False)
    return tokenizer.decode(out[0].tolist(), skip_special_tokens=False)


# ---------------------------------------------------------------------------------------------------- main


def sha256_texts(modules: list[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    for name, text in modules:
        digest.update(name.encode() + b"\0" + text.encode("utf-8") + b"\0")
    return digest.hexdigest()


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    import transformers
    from transformers import GenerationConfig

    args = parse_args(argv)
    seed_everything(args.seed)
    t_start = time.perf_counter()

    train_modules = read_modules(TRAIN_MODULES)
    heldout_modules = read_modules(HELDOUT_MODULES)
    print(f"corpus: {len(train_modules)} train modules, {len(heldout_modules)} held out "
          f"(python {platform.python_version()})", flush=True)

    tokenizer = train_tokenizer([text for _, text in train_modules])
    eos_id = tokenizer.token_to_id(EOS)
    end_id = tokenizer.token_to_id("<|end|>")
    vocab_size = -(-tokenizer.get_vocab_size() // 64) * 64
    train_stream = encode_stream(tokenizer, [t for _, t in train_modules], eos_id)
    heldout_stream = encode_stream(tokenizer, [t for _, t in heldout_modules], eos_id)
    print(f"tokenizer: {tokenizer.get_vocab_size()} tokens (model vocab {vocab_size}); "
          f"train {len(train_stream):,} tokens, held-out {len(heldout_stream):,} tokens "
          f"[{time.perf_counter() - t_start:.1f}s]", flush=True)

    torch.manual_seed(args.seed)  # model init independent of how much randomness the steps above used
    model = build_model(vocab_size, eos_id)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters, {MODEL_SHAPE}", flush=True)

    optimizer = make_optimizer(model, args.lr)
    batches = Batches(train_stream, args.seq, args.batch, args.seed)
    warmup = max(1, int(args.warmup * args.steps))
    t_train = time.perf_counter()
    recent: list[float] = []
    loss_value = last_mean = float("nan")
    for step in range(args.steps):
        lr = lr_at(step, args.steps, args.lr, warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp == "bfloat16"):
            loss = causal_lm_loss(model, batches.next())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss_value = loss.item()
        recent.append(loss_value)
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            elapsed = time.perf_counter() - t_train
            last_mean = sum(recent) / len(recent)
            print(f"step {step + 1:5d}/{args.steps}  loss {last_mean:.4f}  lr {lr:.2e}  epoch {batches.epoch}  "
                  f"{elapsed / (step + 1):.2f}s/step  {elapsed / 60:.1f} min", flush=True)
            recent = []
    train_seconds = time.perf_counter() - t_train

    # Score and sample the weights as shipped: rounded to the saved dtype, computed in float32 without autocast
    # (as the exported float32 ONNX model computes).
    save_dtype = getattr(torch, args.dtype)
    model = model.to(save_dtype).to(torch.float32)
    ppl, ppl_tokens = heldout_perplexity(model, heldout_stream, args.seq, args.batch)
    print(f"held-out perplexity {ppl:.3f} over {ppl_tokens:,} tokens ({len(heldout_modules)} modules)", flush=True)
    model.generation_config = GenerationConfig(
        bos_token_id=None, eos_token_id=[eos_id, end_id], pad_token_id=eos_id, do_sample=False
    )
    sample = greedy_sample(model, tokenizer, SAMPLE_PROMPT)
    print(f"greedy sample:\n{sample}\n", flush=True)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.safetensors*"):
        stale.unlink()
    model = model.to(save_dtype)
    save_kwargs = {"safe_serialization": True} if "safe_serialization" in inspect.signature(
        model.save_pretrained).parameters else {}  # transformers 5 always writes safetensors
    model.save_pretrained(out, **save_kwargs)
    tokenizer.save(str(out / "tokenizer.json"))
    write_json(out / "tokenizer_config.json", tokenizer_config(
        tokenizer, chat_template=CHAT_TEMPLATE, model_max_length=MODEL_SHAPE["max_position_embeddings"]))
    write_json(out / "special_tokens_map.json", special_tokens_map())
    write_json(out / "corpus.json", {
        "source": "CPython standard library (sysconfig.get_paths()['stdlib'] of the training interpreter)",
        "python": platform.python_version(),
        "train": list(TRAIN_MODULES),
        "heldout": list(HELDOUT_MODULES),
        "train_tokens": len(train_stream),
        "heldout_tokens": len(heldout_stream),
        "train_sha256": sha256_texts(train_modules),
        "heldout_sha256": sha256_texts(heldout_modules),
    })
    write_json(out / "training.json", {
        "steps": args.steps,
        "batch": args.batch,
        "seq_len": args.seq,
        "tokens_seen": args.steps * args.batch * args.seq,
        "epochs": round(args.steps * args.batch * args.seq / len(train_stream), 3),
        "peak_lr": args.lr,
        "warmup_steps": warmup,
        "schedule": "AdamW(0.9, 0.95, wd 0.1), linear warmup then cosine to 10%, grad clip 1.0",
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "autocast": args.amp,
        "seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "final_train_loss": round(last_mean, 4),  # mean over the last --log-every steps
        "last_step_loss": round(loss_value, 4),
        "heldout_perplexity": round(ppl, 3),
        "heldout_tokens_scored": ppl_tokens,
        "parameters": n_params,
        "saved_dtype": args.dtype,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": __import__("tokenizers").__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "sample_prompt": SAMPLE_PROMPT,
        "sample_greedy_64": sample,
    })
    for path in out.iterdir():  # save_pretrained writes model.safetensors 0600; a wheel must ship it readable
        if path.is_file():
            path.chmod(0o644)
    print(f"wrote {out} [{time.perf_counter() - t_start:.0f}s total]", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
