"""A real ``transformers`` tokenizer for a task family's vocabulary.

Families emit space-separated tokens, so a ``tokenizers`` WordLevel model with a
WhitespaceSplit pre-tokenizer is exact: one token per word, ``[UNK]`` for
anything else. Every sequence is framed as ``[CLS] ... [SEP]``: encoders read
out at ``[CLS]`` (position 0) and causal decoders at ``[SEP]``, the last
non-pad token, which has attended to the whole input. One tokenizer therefore
serves every architecture in :mod:`m2kt.ml.models`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from m2kt.errors import LocalInputError

__all__ = ["SPECIAL_TOKENS", "Encoded", "build_tokenizer", "encode", "load_tokenizer"]

logger = logging.getLogger(__name__)

PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP)


@dataclass(frozen=True)
class Encoded:
    """Padded token ids of N texts: ``input_ids`` and ``attention_mask`` are ``[N, n]`` int64."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, index: torch.Tensor) -> Encoded:
        """Rows ``index`` (a ``[B]`` long tensor), trimmed to their longest sequence."""
        mask = self.attention_mask[index]  # [B, n]
        n = int(mask.sum(dim=1).max().item())
        return Encoded(self.input_ids[index, :n], mask[:, :n])


def build_tokenizer(vocab: Sequence[str], model_max_length: int = 64) -> PreTrainedTokenizerFast:
    """Build the WordLevel tokenizer for ``vocab`` (special tokens get ids 0..3).

    Args:
        vocab: The family's tokens, in a fixed order (ids follow it, so it must be stable).
        model_max_length: Longest sequence the models accept, specials included.

    Raises:
        ValueError: if ``vocab`` repeats a token, contains whitespace or a special token.
    """
    if len(set(vocab)) != len(vocab):
        raise ValueError("vocab repeats a token")
    bad = [t for t in vocab if not t or any(ch.isspace() for ch in t) or t in SPECIAL_TOKENS]
    if bad:
        raise ValueError(f"vocab has empty, whitespace or special tokens: {bad[:5]}")
    ids = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *vocab))}
    core = Tokenizer(models.WordLevel(ids, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", special_tokens=[(CLS, ids[CLS]), (SEP, ids[SEP])]
    )
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core,
        pad_token=PAD,
        unk_token=UNK,
        cls_token=CLS,
        sep_token=SEP,
        bos_token=CLS,
        eos_token=SEP,
        model_max_length=model_max_length,
        padding_side="right",
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer written by ``save_pretrained`` from a local directory (no hub access)."""
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if not isinstance(tok, PreTrainedTokenizerFast):
        raise LocalInputError(f"{path} holds a {type(tok).__name__}, not a fast tokenizer")
    return tok


def encode(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str]) -> Encoded:
    """Tokenise all ``texts`` at once, right-padded to the longest: ``[N, n]`` ids and mask."""
    enc = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt", return_token_type_ids=False)
    return Encoded(enc["input_ids"].long(), enc["attention_mask"].long())
