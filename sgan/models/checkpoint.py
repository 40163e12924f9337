"""Activation checkpointing of the networks' blocks, for training at larger inputs.

A checkpointed block keeps only its input for the backward pass and runs its forward again there
(torch.utils.checkpoint, non-reentrant) instead of keeping every activation inside it. The
recomputation replays the random state of the forward pass (torch's default), so a dropout inside
a block draws the same mask twice and the gradients equal those without checkpointing.
"""
import torch
from torch.utils.checkpoint import checkpoint


def run_block(block, x, checkpointing):
    """block(x), checkpointed when ``checkpointing`` and gradients are being recorded."""
    if checkpointing and torch.is_grad_enabled():
        return checkpoint(block, x, use_reentrant=False)
    return block(x)


def run_blocks(blocks, x, checkpointing):
    """x through the callables ``blocks`` in turn, each one checkpointed on its own (:func:`run_block`)."""
    for block in blocks:
        x = run_block(block, x, checkpointing)
    return x
