"""CALConfig: which form, which direction, what size; validated at construction, stored as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

Direction = Literal["student_to_teacher", "teacher_to_student"]
DIRECTIONS: tuple[str, ...] = ("student_to_teacher", "teacher_to_student")


@dataclass(frozen=True)
class CALConfig:
    """How the CAL maps one space into the other.

    Attributes:
        form: a registered layer form (`student_agent.cal.layers.FORMS`): "mlp_skip" or "lowrank".
        direction: "student_to_teacher" maps the student's all-block states into teacher space so
            the teacher's read-outs apply; "teacher_to_student" maps teacher states into student space.
        in_dim, out_dim: input and output widths (e.g. L_S * d_S -> L_T * d_T).
        hidden: width of the MLP's hidden layer.
        rank: rank of the low-rank form.
        dropout: dropout inside the MLP.
    """

    form: str = "mlp_skip"
    direction: Direction = "student_to_teacher"
    in_dim: int = 0
    out_dim: int = 0
    hidden: int = 256
    rank: int = 32
    dropout: float = 0.0

    def __post_init__(self) -> None:
        from student_agent.cal.layers import FORMS

        if self.form not in FORMS:
            raise ValueError(f"CALConfig.form={self.form!r}: use one of {sorted(FORMS)}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"CALConfig.direction={self.direction!r}: use one of {DIRECTIONS}")
        for name in ("in_dim", "out_dim", "hidden", "rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"CALConfig.{name}={getattr(self, name)} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"CALConfig.dropout={self.dropout} must be in [0, 1)")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> CALConfig:
        data: dict[str, Any] = json.loads(text)
        return cls(**data)
