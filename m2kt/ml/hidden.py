"""Read-out states of a model, for every layer, over a list of texts.

Concept extraction, packet building and the student's CAL all need the same
thing: the state at the read-out position after every transformer block,
``[N, L, d]``, and sometimes the head-averaged attention maps ``[N, L, n, n]``.
The read-out position is the ``[CLS]``/first token for encoders and the last
non-pad token for decoders (see :mod:`m2kt.ml.tokenizer`).

By default the embedding layer's output is *excluded*, so ``states[:, l]`` is
the output of block ``l`` and ``L`` equals ``num_hidden_layers``; pass
``include_embeddings=True`` to prepend it (then ``L = num_hidden_layers + 1``).
For GPT-2 and Llama the last entry is after the final norm, as transformers
returns it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from m2kt.ml.models import Readout, TaskModel, readout_positions
from m2kt.ml.tokenizer import encode

__all__ = ["HiddenStates", "collect_hidden", "gather_readout", "readout_for"]

logger = logging.getLogger(__name__)

_DECODER_TYPES = frozenset({"gpt2", "llama", "gpt_neox", "mistral", "qwen2", "gptj", "opt"})


@dataclass(frozen=True)
class HiddenStates:
    """All-layer read-out states of N texts.

    Attributes:
        states: ``[N, L, d]`` float32.
        attentions: ``[N, L, n, n]`` float32 head-averaged attention (zero-padded to
            the longest text), or ``None`` if not requested.
        lengths: ``[N]`` number of non-pad tokens per text.
        include_embeddings: Whether ``states[:, 0]`` is the embedding output.
    """

    states: torch.Tensor
    attentions: torch.Tensor | None
    lengths: torch.Tensor
    include_embeddings: bool


def readout_for(model: TaskModel | PreTrainedModel) -> Readout:
    """The read-out convention of a TaskModel, or of a bare HF base model by its model type."""
    if isinstance(model, TaskModel):
        return model.readout
    return "last" if str(model.config.model_type) in _DECODER_TYPES else "first"


def gather_readout(hidden: torch.Tensor, attention_mask: torch.Tensor, readout: Readout) -> torch.Tensor:
    """Pick the read-out token of each row: hidden ``[B, n, d]``, mask ``[B, n]`` -> ``[B, d]``."""
    pos = readout_positions(attention_mask, readout)  # [B]
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), pos]


def _backbone(model: TaskModel | PreTrainedModel) -> PreTrainedModel:
    return model.backbone if isinstance(model, TaskModel) else model


def collect_hidden(
    model: TaskModel | PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[str],
    *,
    batch_size: int = 256,
    include_embeddings: bool = False,
    attentions: bool = False,
    readout: Readout | None = None,
) -> HiddenStates:
    """Run ``model`` over ``texts`` in batches and return its read-out states for all layers.

    Args:
        model: A TaskModel or a bare transformers base model (eager attention is
            needed for ``attentions=True``).
        tokenizer: The model's tokenizer.
        texts: Inputs; all are padded to the longest so that attention maps stack.
        batch_size: Texts per forward pass.
        include_embeddings: Prepend the embedding output as layer 0.
        attentions: Also return head-averaged attention maps per layer.
        readout: Override the read-out convention (default: the model's own).

    Returns:
        A :class:`HiddenStates`; the model's train/eval mode is restored.
    """
    backbone = _backbone(model)
    where = readout or readout_for(model)
    enc = encode(tokenizer, texts)
    n = enc.input_ids.shape[1]
    was_training = backbone.training
    backbone.eval()  # type: ignore[no-untyped-call]
    states, maps = [], []
    with torch.inference_mode():
        for start in range(0, len(enc), batch_size):
            ids = enc.input_ids[start : start + batch_size]  # [B, n]
            mask = enc.attention_mask[start : start + batch_size]  # [B, n]
            out = backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=attentions)
            layers = out.hidden_states if include_embeddings else out.hidden_states[1:]
            states.append(torch.stack([gather_readout(h, mask, where) for h in layers], dim=1))  # [B, L, d]
            if attentions:
                if not out.attentions:
                    raise RuntimeError("the model returned no attentions; build it with eager attention")
                avg = torch.stack([a.mean(dim=1) for a in out.attentions], dim=1)  # [B, L, n, n]
                maps.append(F.pad(avg, (0, n - avg.shape[-1], 0, n - avg.shape[-2])))
    backbone.train(was_training)
    return HiddenStates(
        states=torch.cat(states).float(),
        attentions=torch.cat(maps).float() if attentions else None,
        lengths=enc.attention_mask.sum(dim=1),
        include_embeddings=include_embeddings,
    )
