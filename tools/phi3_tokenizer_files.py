"""The Phi-3 tokenizer side files (tokenizer_config.json, special_tokens_map.json) for a byte-level BPE.

Shared by tools/train_demo.py (the bundled demo) and tests/fixtures/tokenizer.py (the tiny test tokenizer):
the Phi-3 special tokens appended after the trained vocabulary, eos = pad = <|endoftext|>, no bos.
"""

from __future__ import annotations

from typing import Any

EOS = "<|endoftext|>"
SPECIAL_TOKENS: tuple[str, ...] = (EOS, "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")


def tokenizer_config(tokenizer: Any, *, chat_template: str, model_max_length: int) -> dict[str, object]:
    """tokenizer_config.json for a `tokenizers.Tokenizer` that already holds SPECIAL_TOKENS."""
    added = {
        str(tokenizer.token_to_id(token)): {
            "content": token, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True,
        }
        for token in SPECIAL_TOKENS
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": None,
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": chat_template,
    }


def special_tokens_map() -> dict[str, object]:
    return {"eos_token": EOS, "pad_token": EOS, "additional_special_tokens": list(SPECIAL_TOKENS[1:])}
