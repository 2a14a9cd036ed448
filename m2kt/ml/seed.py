"""Seeds and random generators.

Every random draw in m2kt.ml flows through an explicit generator derived from one
integer seed and a *stream* name, so that two parts of a run (data, init, shuffling)
never share a stream and adding a draw in one place never shifts another.
The only global state we touch is torch's default generator, and only in
:func:`seed_everything`, because ``transformers`` initialises weights from it.
"""

from __future__ import annotations

import hashlib
import logging
import random

import numpy as np
import torch

__all__ = ["derive_seed", "numpy_rng", "seed_everything", "torch_generator"]

logger = logging.getLogger(__name__)

_MASK63 = (1 << 63) - 1


def derive_seed(seed: int, stream: str = "") -> int:
    """Return a 63-bit seed for the named stream of a run.

    Hashing (rather than ``seed + k``) keeps the streams of seeds 0 and 1
    unrelated, so neighbouring seeds are really independent draws.

    Args:
        seed: The run's seed.
        stream: A name for the purpose of the draw, e.g. ``"data.train"``.

    Returns:
        A non-negative integer below 2**63, stable across platforms.
    """
    digest = hashlib.sha256(f"{int(seed)}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & _MASK63


def torch_generator(seed: int, stream: str = "") -> torch.Generator:
    """Return a CPU ``torch.Generator`` seeded for one stream of a run."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(derive_seed(seed, stream))
    return gen


def numpy_rng(seed: int, stream: str = "") -> np.random.Generator:
    """Return a numpy ``Generator`` seeded for one stream of a run."""
    return np.random.default_rng(derive_seed(seed, stream))


def seed_everything(seed: int) -> torch.Generator:
    """Seed the global RNGs that third-party code reads, and return our own generator.

    ``transformers`` initialises weights from torch's global generator, so model
    construction is only reproducible after this call. Our own code should use
    the returned generator (or :func:`torch_generator`) instead of the globals.

    Args:
        seed: The run's seed.

    Returns:
        A generator for the ``"main"`` stream of this seed.
    """
    base = derive_seed(seed, "global")
    random.seed(base)
    torch.manual_seed(base)
    logger.debug("seeded global RNGs with seed=%d", seed)
    return torch_generator(seed, "main")
