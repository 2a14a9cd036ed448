"""Torch helpers shared by the teacher and student agents (never imported by the broker).

Modules: :mod:`m2kt.ml.seed` (seeds and generators), :mod:`m2kt.ml.tasks` (task
families and their registry), :mod:`m2kt.ml.tokenizer` (WordLevel tokenizers),
:mod:`m2kt.ml.models` (transformers backbones with task heads, save/load,
weights digest), :mod:`m2kt.ml.train` (train_step, fit, evaluate),
:mod:`m2kt.ml.hidden` (all-layer read-out states and attentions) and
:mod:`m2kt.ml.logistic` (class-balanced logistic probes and read-outs).
"""

from m2kt.ml.hidden import HiddenStates, collect_hidden
from m2kt.ml.models import ModelConfig, TaskModel, build_model, load_pretrained, save_pretrained, weights_sha256
from m2kt.ml.seed import derive_seed, numpy_rng, seed_everything, torch_generator
from m2kt.ml.tasks import TaskBatch, TaskFamily, get_task
from m2kt.ml.tokenizer import build_tokenizer, encode, load_tokenizer
from m2kt.ml.train import TrainConfig, evaluate, fit, tensorize, train_step

__all__ = [
    "HiddenStates",
    "ModelConfig",
    "TaskBatch",
    "TaskFamily",
    "TaskModel",
    "TrainConfig",
    "build_model",
    "build_tokenizer",
    "collect_hidden",
    "derive_seed",
    "encode",
    "evaluate",
    "fit",
    "get_task",
    "load_pretrained",
    "load_tokenizer",
    "numpy_rng",
    "save_pretrained",
    "seed_everything",
    "tensorize",
    "torch_generator",
    "train_step",
    "weights_sha256",
]
