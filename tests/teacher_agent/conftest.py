"""A tiny teacher trained once per session, shared by the extractor tests."""

from dataclasses import dataclass

import pytest
from runkit import run_wide_folder

from m2kt.ml.models import ModelConfig, TaskModel, build_model
from m2kt.ml.seed import seed_everything
from m2kt.ml.tasks import TaskBatch, TaskFamily, get_task
from m2kt.ml.threads import use_default_threads
from m2kt.ml.train import TrainConfig, TrainedModel, train_model

TINY = ModelConfig(arch="bert", hidden_size=64, num_layers=3, num_heads=4, step_layer=2)


@dataclass
class TinyTeacher:
    family: TaskFamily
    trained: TrainedModel
    untrained: TaskModel
    splits: dict[str, TaskBatch]


@pytest.fixture(scope="session")
def tiny_teacher() -> TinyTeacher:
    use_default_threads()
    family = get_task("modarith", p=13)
    splits = family.generate_splits({"train": 1200, "eval": 200, "probe": 500, "heldout": 290}, seed=0)
    trained = train_model(
        family,
        splits["train"],
        splits["eval"],
        model_config=TINY,
        train_config=TrainConfig(epochs=60, batch_size=64, lr=3e-3, target_accuracy=0.9, seed=0),
    )
    seed_everything(0)
    untrained, _ = build_model(family, TINY)
    untrained.eval()
    return TinyTeacher(family, trained, untrained, splits)


SMALL_SIZES = {"train": 2000, "eval": 200, "probe": 600, "heldout": 300, "pool": 400}


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
    """A small teacher trained through `teacher_agent.pipeline` (the CLI's path), with a saved extraction."""
    from teacher_agent import pipeline

    use_default_threads()
    with run_wide_folder(tmp_path_factory, "teacher") as root:  # one for every worker of the run
        if not (root / "extraction-probing.json").exists():
            cfg = ModelConfig(arch="bert", hidden_size=48, num_layers=2, num_heads=2)
            train_cfg = TrainConfig(epochs=30, batch_size=64, lr=3e-3, seed=0)  # epochs bound it, not the clock
            model = root / "model"
            pipeline.train("modarith", {"p": 17}, model, model_config=cfg, train_config=train_cfg, sizes=SMALL_SIZES)
            pipeline.save_extraction(pipeline.extract(model, "probing"), root / "extraction-probing")
    return root
