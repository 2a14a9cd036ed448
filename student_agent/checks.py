"""What `m2kt-student` checks before it does anything costly or lasting.

A run with a token the broker refuses retried once a second for ever, and a run with a
teacher's token loaded its model, downloaded, fitted and integrated a packet before its first
report failed; a misspelt `--topic` was followed silently and kept in the state file; and a
query in words the student's task never uses still returned probabilities. Each check here
fails at once with one line that says what is wrong (ValueError: the CLI exits 2).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from m2kt.errors import InvalidOption
from m2kt.ml.tasks.base import TaskFamily

__all__ = ["require_inputs", "require_topics", "topics_without_concepts"]


def require_topics(family: TaskFamily, topics: Sequence[str]) -> None:
    """Every topic must be one of the family's concept topics."""
    unknown = [t for t in topics if t not in family.topics]
    if unknown:
        raise InvalidOption(
            f"{', '.join(unknown)}: not a topic of the {family.name} task; its topics are {', '.join(family.topics)}"
        )


def require_inputs(family: TaskFamily, texts: Sequence[str]) -> None:
    """Every text must be made of the family's tokens (numbers in range, its operators)."""
    vocab = set(family.vocab())
    for text in texts:
        outside = [w for w in text.split() if w not in vocab]
        if outside or not text.split():
            example = family.render(family.sample_inputs(np.random.default_rng(0), 1))[0]
            what = f"{', '.join(dict.fromkeys(outside))} not in its vocabulary" if outside else "empty"
            raise InvalidOption(
                f"{text!r} is not an input of the {family.name} task ({what}); inputs look like {example!r}"
            )


def topics_without_concepts(integrated: Iterable[str], topics: Sequence[str]) -> list[str]:
    """The asked topics of which no integrated concept is part, in the order asked."""
    have = set(integrated)
    return [t for t in topics if t not in have]
