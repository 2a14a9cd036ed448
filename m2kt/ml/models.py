"""Teacher and student models: a ``transformers`` backbone plus our small task heads.

Architectures live in a registry (``bert``, ``gpt2``, ``llama``) so teacher and
student can be of different families and widths without ``if`` chains. A
:class:`TaskModel` is a base model (no LM head) plus

* a linear head for the base-task answer, and
* one linear head per intermediate step of the family (auxiliary, weight set in
  training). Supervising the steps makes small models learn chains such as
  ``a + b*c mod p`` in minutes instead of grokking them slowly, and the step heads
  are exactly the teacher read-outs that the packet's reasoning traces need.

Heads read the state at the read-out position: ``[CLS]`` (first token) for
encoders, the last non-pad token (``[SEP]``) for decoders. The answer head reads
the last block; the step heads read block ``step_layer`` (mid-network), so the
blocks above it can build the answer from the steps.

On disk a model directory holds the backbone (``config.json`` and
``model.safetensors`` from ``save_pretrained``), ``heads.safetensors``, the
tokenizer files and ``m2kt_model.json`` (architecture, read-out, task spec,
head sizes). :func:`weights_sha256` digests the *in-memory* state dict of the
whole TaskModel (backbone and heads), not a file, so it is the same before
saving and after loading.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import safetensors.torch
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2Model,
    LlamaConfig,
    LlamaModel,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

from m2kt.constants import MODEL_META_FILE
from m2kt.errors import UnknownName
from m2kt.ml.tasks.base import TaskFamily
from m2kt.ml.tokenizer import build_tokenizer, load_tokenizer

__all__ = [
    "ArchSpec",
    "ModelConfig",
    "Readout",
    "TaskModel",
    "TaskOutput",
    "available_archs",
    "build_model",
    "load_pretrained",
    "model_card",
    "readout_positions",
    "register_arch",
    "save_pretrained",
    "weights_sha256",
]

logger = logging.getLogger(__name__)

Readout = Literal["first", "last"]
META_FILE = MODEL_META_FILE
HEADS_FILE = "heads.safetensors"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelConfig:
    """Size and shape of a TaskModel; ``None`` fields take the architecture's defaults.

    Attributes:
        arch: Registered architecture name.
        hidden_size: Width d of the residual stream.
        num_layers: Transformer blocks L.
        num_heads: Attention heads (must divide ``hidden_size``).
        intermediate_size: MLP width; default ``4 * hidden_size``.
        max_length: Positions the model supports (specials included).
        dropout: Dropout everywhere; 0 by default, since our data is noise-free.
        step_layer: Number of blocks after which the step heads read the state
            (default ``(num_layers + 1) // 2``). Reading the steps mid-network leaves
            the upper blocks free to combine them into the answer; with every head
            on the last block, ``a + b*c mod p`` stayed at chance for minutes.
    """

    arch: str = "bert"
    hidden_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    intermediate_size: int | None = None
    max_length: int = 64
    dropout: float = 0.0
    step_layer: int | None = None

    def resolved(self) -> ModelConfig:
        """Fill the ``None`` fields from the architecture's defaults and validate."""
        spec = _arch(self.arch)
        d = self.hidden_size or spec.default_hidden
        n_layers = self.num_layers or spec.default_layers
        cfg = ModelConfig(
            arch=self.arch,
            hidden_size=d,
            num_layers=n_layers,
            num_heads=self.num_heads or spec.default_heads,
            intermediate_size=self.intermediate_size or 4 * d,
            max_length=self.max_length,
            dropout=self.dropout,
            step_layer=self.step_layer or (n_layers + 1) // 2,
        )
        assert cfg.num_heads is not None and cfg.num_layers is not None
        if d % cfg.num_heads:
            raise ValueError(f"ModelConfig.hidden_size={d} is not divisible by num_heads={cfg.num_heads}")
        if cfg.num_layers < 1 or not 0.0 <= cfg.dropout < 1.0 or not 1 <= (cfg.step_layer or 0) <= cfg.num_layers:
            raise ValueError(
                f"ModelConfig invalid: num_layers={cfg.num_layers}, dropout={cfg.dropout}, step_layer={cfg.step_layer}"
            )
        return cfg


@dataclass(frozen=True)
class TokenIds:
    """The special-token ids an architecture config needs."""

    vocab_size: int
    pad: int
    bos: int
    eos: int


@dataclass(frozen=True)
class ArchSpec:
    """A registered architecture: how to configure it, which class to build, where to read out."""

    name: str
    readout: Readout
    make_config: Callable[[ModelConfig, TokenIds], PretrainedConfig]
    model_cls: type[PreTrainedModel]
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    default_hidden: int = 64
    default_layers: int = 3
    default_heads: int = 4


_ARCHS: dict[str, ArchSpec] = {}


def register_arch(spec: ArchSpec) -> None:
    """Register (or replace) an architecture under ``spec.name``."""
    _ARCHS[spec.name] = spec


def _arch(name: str) -> ArchSpec:
    try:
        return _ARCHS[name]
    except KeyError:
        raise UnknownName(f"unknown architecture {name!r}; known: {sorted(_ARCHS)}") from None


def available_archs() -> list[str]:
    """Names of the registered architectures."""
    return sorted(_ARCHS)


def _int(value: int | None) -> int:
    """A resolved config field (``ModelConfig.resolved`` fills every ``None``)."""
    if value is None:
        raise ValueError("ModelConfig must be resolved before building a model")
    return value


def _bert_config(c: ModelConfig, t: TokenIds) -> PretrainedConfig:
    return BertConfig(
        vocab_size=t.vocab_size,
        hidden_size=_int(c.hidden_size),
        num_hidden_layers=_int(c.num_layers),
        num_attention_heads=_int(c.num_heads),
        intermediate_size=_int(c.intermediate_size),
        max_position_embeddings=c.max_length,
        hidden_dropout_prob=c.dropout,
        attention_probs_dropout_prob=c.dropout,
        pad_token_id=t.pad,
        type_vocab_size=1,
    )


def _gpt2_config(c: ModelConfig, t: TokenIds) -> PretrainedConfig:
    return GPT2Config(
        vocab_size=t.vocab_size,
        n_embd=_int(c.hidden_size),
        n_layer=_int(c.num_layers),
        n_head=_int(c.num_heads),
        n_inner=c.intermediate_size,
        n_positions=c.max_length,
        resid_pdrop=c.dropout,
        embd_pdrop=c.dropout,
        attn_pdrop=c.dropout,
        bos_token_id=t.bos,
        eos_token_id=t.eos,
        pad_token_id=t.pad,
    )


def _llama_config(c: ModelConfig, t: TokenIds) -> PretrainedConfig:
    return LlamaConfig(
        vocab_size=t.vocab_size,
        hidden_size=_int(c.hidden_size),
        num_hidden_layers=_int(c.num_layers),
        num_attention_heads=_int(c.num_heads),
        num_key_value_heads=_int(c.num_heads),
        intermediate_size=_int(c.intermediate_size),
        max_position_embeddings=c.max_length,
        attention_dropout=c.dropout,
        bos_token_id=t.bos,
        eos_token_id=t.eos,
        pad_token_id=t.pad,
    )


register_arch(
    ArchSpec(
        "bert",
        "first",
        _bert_config,
        BertModel,
        {"add_pooling_layer": False},
        default_hidden=128,
        default_layers=4,
        default_heads=4,
    )
)
register_arch(ArchSpec("gpt2", "last", _gpt2_config, GPT2Model))
register_arch(ArchSpec("llama", "last", _llama_config, LlamaModel))


def readout_positions(attention_mask: torch.Tensor, readout: Readout) -> torch.Tensor:
    """Index of the read-out token per row: 0, or the last non-pad token (right padding).

    attention_mask: ``[B, n]`` of 0/1. Returns ``[B]`` int64.
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be [B, n], got {tuple(attention_mask.shape)}")
    if readout == "first":
        return torch.zeros(attention_mask.shape[0], dtype=torch.long, device=attention_mask.device)
    return attention_mask.long().sum(dim=1) - 1


@dataclass(frozen=True)
class TaskOutput:
    """Heads' outputs: ``logits [B, C]``, ``step_logits`` one ``[B, n_s]`` per step, last-block ``state [B, d]``."""

    logits: torch.Tensor
    step_logits: tuple[torch.Tensor, ...]
    state: torch.Tensor


class TaskModel(nn.Module):
    """A transformers base model with a base-task head and one head per reasoning step.

    Args:
        backbone: A base model (BertModel, GPT2Model, LlamaModel, ...), no LM head.
        config: The resolved :class:`ModelConfig` it was built from.
        task_spec: :meth:`TaskFamily.spec` of the task it solves.
        n_classes: Classes of the base-task answer.
        step_classes: Classes of each intermediate step, in chain order.
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        config: ModelConfig,
        task_spec: dict[str, Any],
        n_classes: int,
        step_classes: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.task_spec = task_spec
        self.readout: Readout = _arch(config.arch).readout
        self.step_layer = int(config.step_layer or config.num_layers or 1)
        d = int(backbone.config.hidden_size)
        self.head = nn.Linear(d, n_classes)
        self.step_heads = nn.ModuleList(nn.Linear(d, k) for k in step_classes)
        self._step_classes = tuple(int(k) for k in step_classes)

    @property
    def hidden_size(self) -> int:
        return int(self.backbone.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.backbone.config.num_hidden_layers)

    @property
    def step_classes(self) -> tuple[int, ...]:
        return self._step_classes

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TaskOutput:
        """Run the backbone and the heads on ``[B, n]`` ids and mask."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        pos = readout_positions(attention_mask, self.readout)  # [B]
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)  # [B]
        state = out.hidden_states[-1][rows, pos]  # [B, n, d] -> [B, d]
        mid = out.hidden_states[self.step_layer][rows, pos]  # [B, d]; index 0 is the embeddings
        return TaskOutput(self.head(state), tuple(h(mid) for h in self.step_heads), state)

    def meta(self) -> dict[str, Any]:
        """The JSON written next to the weights."""
        return {
            "format_version": FORMAT_VERSION,
            "model_config": asdict(self.config),
            "readout": self.readout,
            "task": self.task_spec,
            "n_classes": int(self.head.out_features),
            "step_classes": list(self.step_classes),
        }


def build_model(
    family: TaskFamily, config: ModelConfig | None = None, tokenizer: PreTrainedTokenizerFast | None = None
) -> tuple[TaskModel, PreTrainedTokenizerFast]:
    """Build a fresh TaskModel (and its tokenizer) for ``family`` from a config.

    Weights are drawn from torch's global generator, as ``transformers`` does;
    call :func:`m2kt.ml.seed.seed_everything` first for a reproducible init.
    """
    cfg = (config or ModelConfig()).resolved()
    tok = tokenizer or build_tokenizer(family.vocab(), model_max_length=cfg.max_length)
    ids = TokenIds(vocab_size=len(tok), pad=int(tok.pad_token_id), bos=int(tok.cls_token_id), eos=int(tok.sep_token_id))
    spec = _arch(cfg.arch)
    hf_config = spec.make_config(cfg, ids)
    hf_config._attn_implementation = "eager"  # returns attentions; faster than SDPA at our sizes on CPU
    backbone = spec.model_cls(hf_config, **spec.model_kwargs)
    model = TaskModel(backbone, cfg, family.spec(), family.n_classes, tuple(s.n_classes for s in family.step_specs))
    logger.info(
        "built %s d=%d L=%d (%d parameters)",
        cfg.arch,
        cfg.hidden_size,
        cfg.num_layers,
        sum(p.numel() for p in model.parameters()),
    )
    return model, tok


@contextlib.contextmanager
def _no_hf_progress() -> Iterator[None]:
    """Silence transformers' shard progress bars for one save/load, then restore the setting."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _heads_state(model: TaskModel) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}


def save_pretrained(model: TaskModel, tokenizer: PreTrainedTokenizerFast, path: str | Path) -> Path:
    """Write backbone (``save_pretrained``), heads, tokenizer and our JSON into directory ``path``."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with _no_hf_progress():
        model.backbone.save_pretrained(out)
    heads = {k: v.detach().contiguous().cpu() for k, v in _heads_state(model).items()}
    safetensors.torch.save_file(heads, str(out / HEADS_FILE))
    tokenizer.save_pretrained(out)
    meta = {**model.meta(), "weights_sha256": weights_sha256(model)}
    (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return out


def load_pretrained(path: str | Path) -> tuple[TaskModel, PreTrainedTokenizerFast]:
    """Load a directory written by :func:`save_pretrained` (local files only), in eval mode.

    Raises:
        ValueError: if the loaded weights do not match the digest recorded at save time.
    """
    src = Path(path)
    meta = json.loads((src / META_FILE).read_text())
    cfg = ModelConfig(**meta["model_config"])
    spec = _arch(cfg.arch)
    with _no_hf_progress():
        backbone = spec.model_cls.from_pretrained(
            str(src), local_files_only=True, attn_implementation="eager", **spec.model_kwargs
        )
    model = TaskModel(backbone, cfg, meta["task"], int(meta["n_classes"]), tuple(meta["step_classes"]))
    heads = safetensors.torch.load_file(str(src / HEADS_FILE))
    model.load_state_dict({**model.state_dict(), **heads}, strict=True)
    model.eval()
    digest = weights_sha256(model)
    if meta.get("weights_sha256") not in (None, digest):
        raise ValueError(f"{src}: weights digest {digest} != recorded {meta['weights_sha256']}")
    return model, load_tokenizer(src)


def model_card(model: TaskModel) -> dict[str, Any]:
    """What a manifest or a report says of a model: architecture, sizes and weights digest."""
    return {
        "architecture": model.config.arch,
        "hidden_size": model.hidden_size,
        "num_layers": model.num_layers,
        "weights_sha256": weights_sha256(model),
    }


def weights_sha256(model: nn.Module) -> str:
    """Hex SHA-256 of the safetensors serialisation of ``model.state_dict()`` (keys sorted).

    The digest covers every persisted tensor (for a TaskModel: backbone and heads)
    under its ``state_dict`` name, serialised in memory without metadata, so it
    does not depend on how or where the model was saved.
    """
    state = {k: v.detach().cpu().contiguous().clone() for k, v in sorted(model.state_dict().items())}
    return hashlib.sha256(safetensors.torch.save(state)).hexdigest()
