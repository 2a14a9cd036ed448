"""The teacher's model: a thin layer over :mod:`m2kt.ml.models`, with the teacher's defaults.

The teacher is a BERT-style encoder (d=128, 4 blocks) unless configured
otherwise; building, saving and loading are the shared ``m2kt.ml`` functions,
so the student agent reads the same directories.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerFast

from m2kt.ml.models import ModelConfig, TaskModel, build_model, load_pretrained, save_pretrained, weights_sha256
from m2kt.ml.tasks.base import TaskFamily

__all__ = ["TEACHER_DEFAULT", "build_teacher", "load_teacher", "model_card", "save_teacher"]

TEACHER_DEFAULT = ModelConfig(arch="bert", hidden_size=128, num_layers=4, num_heads=4)


def build_teacher(
    family: TaskFamily, config: ModelConfig = TEACHER_DEFAULT
) -> tuple[TaskModel, PreTrainedTokenizerFast]:
    """A fresh teacher for ``family`` (seed torch first for a reproducible init)."""
    return build_model(family, config)


def save_teacher(model: TaskModel, tokenizer: PreTrainedTokenizerFast, path: str | Path) -> Path:
    """Save with ``save_pretrained`` (see :func:`m2kt.ml.models.save_pretrained`)."""
    return save_pretrained(model, tokenizer, path)


def load_teacher(path: str | Path) -> tuple[TaskModel, PreTrainedTokenizerFast]:
    """Load a saved teacher from a local directory."""
    return load_pretrained(path)


def model_card(model: TaskModel) -> dict[str, Any]:
    """The manifest's ``teacher.model`` object: architecture, sizes and weights digest."""
    return {
        "architecture": model.config.arch,
        "hidden_size": model.hidden_size,
        "num_layers": model.num_layers,
        "weights_sha256": weights_sha256(model),
    }
