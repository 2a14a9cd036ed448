"""What a CAL is: the user's choices (CALSpec), and the sizes a fit derives from the packet (CALConfig).

The spec is what a user sets (settings, FitConfig, the benchmark's ablations) and is validated on
its own; the input and output widths come from the student and the packet at fit time, so they
are never defaults that fail validation. A checkpoint stores both; ``CALConfig.from_dict`` also
reads the flat layout written before the split (compatibility with existing checkpoint stores).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from student_agent.cal.layers import FORMS, FormArgs, build_form

__all__ = ["DIRECTIONS", "CALConfig", "CALSpec", "build_cal"]

# Which space ψ maps into. The fitting procedure of each is registered in cal/fit.py (FITTERS).
DIRECTIONS: tuple[str, ...] = ("student_to_teacher", "teacher_to_student")
MAX_NEIGHBOUR = 8


@dataclass(frozen=True)
class CALSpec:
    """The user's choices for a CAL.

    Attributes:
        form: a registered layer form (``student_agent.cal.layers.FORMS``): "mlp_skip" or "lowrank".
        direction: "student_to_teacher" maps the student's states into teacher space so the
            teacher's read-outs apply; "teacher_to_student" maps teacher states into student space.
        hidden: width of the MLP's hidden layer.
        rank: rank of the low-rank form.
        dropout: dropout inside the MLP (measured: 0.624 -> 0.651 mean balanced accuracy at m=256).
        neighbours: on views, the word slots (offsets) whose states each word slot's map also sees
            (``student_agent.cal.layers.SlotCAL``, which says what it measured); () for its own
            state only, the default.
    """

    form: str = "mlp_skip"
    direction: str = "student_to_teacher"
    hidden: int = 256
    rank: int = 32
    dropout: float = 0.3
    neighbours: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "neighbours", tuple(self.neighbours))  # a list when read from JSON
        if any(not isinstance(o, int) or o == 0 or abs(o) > MAX_NEIGHBOUR for o in self.neighbours) or len(
            set(self.neighbours)
        ) != len(self.neighbours):
            raise ValueError(
                f"CAL neighbours={self.neighbours}: distinct non-zero slot offsets within +-{MAX_NEIGHBOUR}"
            )
        if self.form not in FORMS:
            raise ValueError(f"CAL form={self.form!r}: use one of {sorted(FORMS)}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"CAL direction={self.direction!r}: use one of {DIRECTIONS}")
        for name in ("hidden", "rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"CAL {name}={getattr(self, name)} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"CAL dropout={self.dropout} must be in [0, 1)")

    @property
    def to_teacher(self) -> bool:
        return self.direction == "student_to_teacher"


@dataclass(frozen=True)
class CALConfig:
    """A CAL as built: the spec and the widths the fit derived (e.g. L_S * d_S -> L_T * d_T)."""

    in_dim: int
    out_dim: int
    spec: CALSpec = field(default_factory=CALSpec)

    def __post_init__(self) -> None:
        for name in ("in_dim", "out_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"CAL {name}={getattr(self, name)} must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return {"in_dim": self.in_dim, "out_dim": self.out_dim, "spec": asdict(self.spec)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CALConfig:
        """Read a stored config: this layout, or the flat one (form, direction, in_dim, ... together)."""
        if "spec" in data:
            spec: dict[str, Any] = {"neighbours": ()} | dict(data["spec"])  # written before neighbours: none
            return cls(int(data["in_dim"]), int(data["out_dim"]), CALSpec(**spec))
        flat: dict[str, Any] = {"neighbours": ()} | dict(data)
        in_dim, out_dim = int(flat.pop("in_dim")), int(flat.pop("out_dim"))
        return cls(in_dim, out_dim, CALSpec(**flat))


def build_cal(config: CALConfig) -> nn.Module:
    """A fresh CAL module of ``config``'s form and widths."""
    s = config.spec
    return build_form(s.form, FormArgs(config.in_dim, config.out_dim, s.hidden, s.rank, s.dropout))
