"""A model's *view* of an input: its states at the read-out token and at every word, all blocks.

The read-out state alone carries what the model computed for its answer, but a property of
one input (``b is even``) lives at that input's own position. A view gathers, per text,

* slot 0: the read-out token (``[CLS]`` for encoders, the last non-pad token for decoders);
* slot 1 + i: the first token of word i (words are the whitespace-split units our task
  families emit, so teacher and student slots line up even when their tokenizers differ),

each after every transformer block: ``states [N, S, L, d]`` with ``S = 1 + words``. Slots a
text does not have (shorter texts) are zero and ``mask`` is False there. ``tokens`` holds the
token string at each word slot, the observable a student knows about its own inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from m2kt.ml.models import Readout, TaskModel, readout_positions

__all__ = ["Views", "collect_views", "word_count"]


@dataclass(frozen=True)
class Views:
    """states ``[N, S, L, d]`` float32, mask ``[N, S]`` bool, tokens: N rows of S strings ("" where none)."""

    states: torch.Tensor
    mask: torch.Tensor
    tokens: tuple[tuple[str, ...], ...]

    @property
    def slots(self) -> int:
        return int(self.states.shape[1])

    def flat(self) -> torch.Tensor:
        """``[N, S, L * d]``: every block side by side, per slot."""
        return self.states.flatten(2)


def word_count(texts: Sequence[str]) -> int:
    """The number of word slots that covers every text (at least one)."""
    return max([1, *(len(t.split()) for t in texts)])


def collect_views(
    model: TaskModel | PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[str],
    words: int,
    *,
    batch_size: int = 256,
    readout: Readout | None = None,
) -> Views:
    """Run the model over ``texts``; return its view with ``1 + words`` slots (longer texts are cut)."""
    backbone = model.backbone if isinstance(model, TaskModel) else model
    where: Readout = readout or (model.readout if isinstance(model, TaskModel) else "first")
    was_training = backbone.training
    backbone.eval()  # type: ignore[no-untyped-call]
    states, masks, tokens = [], [], []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            enc = tokenizer(chunk, padding=True, truncation=True, return_tensors="pt", return_token_type_ids=False)
            ids, attn = enc["input_ids"], enc["attention_mask"]
            out = backbone(input_ids=ids, attention_mask=attn, output_hidden_states=True)
            hidden = torch.stack(out.hidden_states[1:], dim=2)  # [B, n, L, d]
            b = hidden.shape[0]
            slot_pos = torch.zeros(b, 1 + words, dtype=torch.long)  # token index of each slot
            mask = torch.zeros(b, 1 + words, dtype=torch.bool)
            slot_pos[:, 0], mask[:, 0] = readout_positions(attn, where), True
            rows: list[tuple[str, ...]] = []
            for row in range(b):
                names = [""] * (1 + words)
                strings = tokenizer.convert_ids_to_tokens(ids[row].tolist())
                seen: set[int] = set()
                for j, word in enumerate(enc.word_ids(row)):
                    if word is None or word in seen or word >= words:
                        continue
                    seen.add(word)
                    slot_pos[row, 1 + word], mask[row, 1 + word] = j, True
                    names[1 + word] = strings[j]
                rows.append(tuple(names))
            picked = hidden[torch.arange(b).unsqueeze(1), slot_pos]  # [B, S, L, d]
            states.append(picked * mask[:, :, None, None])
            masks.append(mask)
            tokens.extend(rows)
    backbone.train(was_training)
    return Views(torch.cat(states).float(), torch.cat(masks), tuple(tokens))
