"""Task families (symbolic reasoning with exact steps and derived concepts) and their registry.

Importing this package registers the built-in families ``modarith``, ``boolean`` and ``digitsum``.
"""

from m2kt.ml.tasks.base import (
    CLI_DEFAULT_PARAMS,
    ENTRY_POINT_GROUP,
    SPLIT_SIZES,
    ConceptDef,
    ConceptSpec,
    StepSpec,
    TaskBatch,
    TaskFamily,
    available_tasks,
    default_params,
    get_task,
    register_task,
    task_from_spec,
)
from m2kt.ml.tasks.boolean import BooleanFormula
from m2kt.ml.tasks.digitsum import DigitSum
from m2kt.ml.tasks.modarith import ModArith

__all__ = [
    "CLI_DEFAULT_PARAMS",
    "ENTRY_POINT_GROUP",
    "SPLIT_SIZES",
    "BooleanFormula",
    "ConceptDef",
    "ConceptSpec",
    "DigitSum",
    "ModArith",
    "StepSpec",
    "TaskBatch",
    "TaskFamily",
    "available_tasks",
    "default_params",
    "get_task",
    "register_task",
    "task_from_spec",
]
