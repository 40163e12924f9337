"""Plain PyTorch reference of the seed NLL statistics (docs/design.md §3), differentiated by autograd.

It computes in the accumulation dtype (float64 for float64 logits, else float32) and materialises the
floored softmax (or, with floor 0, the log-softmax); the fused backends compute the same per-image
statistics without that tensor.
"""
import torch

from sgan.ops.dispatch import accumulation_dtype
from sgan.ops.softmax import floored_softmax


def seed_log_probs(logits, floor, dim=1):
    """log Phi along ``dim`` in the accumulation dtype: the log of the floored softmax, or with
    ``floor`` 0 the plain log-softmax z - max - log sum exp (finite however small the probability)."""
    if floor > 0:
        return floored_softmax(logits, floor, dim).log()
    return torch.log_softmax(logits.to(accumulation_dtype(logits.dtype)), dim)


def seed_nll_stats_reference(logits, seeds, label_offset, floor, ignore_index):
    """Per-image sums and counts of -log Phi at the seeds, split into background and foreground.

    logits (B, C, h, w); seeds (B, h, w) int64. A position with label y != ``ignore_index`` and channel
    c = y - label_offset in [0, C) counts, in group 0 if y == 0 (background) else group 1.
    Phi is the softmax floored at ``floor`` and renormalised (no floor when 0).
    Returns (sums, counts), both (B, 2) in the accumulation dtype.
    """
    B, C = logits.shape[:2]
    log_probs = seed_log_probs(logits, floor)
    channel = seeds - label_offset
    counted = (seeds != ignore_index) & (channel >= 0) & (channel < C)
    picked = log_probs.gather(1, channel.clamp(0, C - 1).unsqueeze(1)).squeeze(1)
    nll = torch.where(counted, -picked, torch.zeros_like(picked))
    background = seeds == 0
    groups = (counted & background, counted & ~background)
    sums = torch.stack([torch.where(g, nll, torch.zeros_like(nll)).sum((1, 2)) for g in groups], 1)
    counts = torch.stack([g.sum((1, 2)) for g in groups], 1).to(sums.dtype)
    return sums, counts
