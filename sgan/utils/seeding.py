"""Seeding: one global seed, and seeds derived from it for each (purpose, epoch, iteration, ...).

Everything random in training is drawn from generators seeded by ``derive_seed(seed, ...)``, so a
run resumed at iteration t sees the same data order, augmentations and dropout masks as an
uninterrupted run, without restoring generator states.
"""
import hashlib
import random

import numpy as np
import torch


def derive_seed(seed, *parts):
    """A 63-bit seed from the global ``seed`` and any hashable ``parts`` (str/int), stable across runs."""
    text = "/".join(str(p) for p in (seed,) + parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def seed_everything(seed):
    """Seed python's, numpy's and torch's (all devices) global generators."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
