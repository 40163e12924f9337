"""Plain PyTorch reference of the SGAN losses (docs/design.md §3), differentiated by autograd.

Everything is computed in the accumulation dtype (float64 for float64 logits, else float32) and
materialises the floored softmax (or, with floor 0, the log-softmax); the fused backends compute the
same per-image statistics without that tensor. Seeds are int64 (B, h, w): 0 = background, 1..20 =
classes, 255 = unlabelled.
"""
import torch

from sgan.data.voc_classes import IGNORE_INDEX
from sgan.ops.dispatch import accumulation_dtype

PROB_FLOOR = 1e-5  # softmax probabilities are floored here and renormalised before any log
KL_RATIO_MIN, KL_RATIO_MAX = 0.05, 20.0  # clip of R / Phi in the boundary loss (eq. 9)


def floor_and_renormalise(probs, floor=PROB_FLOOR, dim=1):
    """max(probs, floor) renormalised to sum 1 along ``dim``."""
    floored = probs.clamp_min(floor)
    return floored / floored.sum(dim, keepdim=True)


def floored_softmax(logits, floor=PROB_FLOOR, dim=1):
    """Softmax along ``dim`` floored at ``floor`` and renormalised, in the accumulation dtype."""
    return floor_and_renormalise(torch.softmax(logits.to(accumulation_dtype(logits.dtype)), dim), floor, dim)


def seed_log_probs(logits, floor=PROB_FLOOR, dim=1):
    """log Phi along ``dim`` in the accumulation dtype: the log of the floored softmax, or with
    ``floor`` 0 the plain log-softmax z - max - log sum exp (finite however small the probability)."""
    if floor > 0:
        return floored_softmax(logits, floor, dim).log()
    return torch.log_softmax(logits.to(accumulation_dtype(logits.dtype)), dim)


def seed_nll_stats_reference(logits, seeds, label_offset, floor=PROB_FLOOR):
    """Per-image sums and counts of -log Phi at the seeds, split into background and foreground.

    logits (B, C, h, w); seeds (B, h, w) int64. A position with label y != 255 and channel
    c = y - label_offset in [0, C) counts, in group 0 if y == 0 (background) else group 1.
    Phi is the softmax floored at ``floor`` and renormalised (no floor when 0).
    Returns (sums, counts), both (B, 2) in the accumulation dtype.
    """
    B, C = logits.shape[:2]
    log_probs = seed_log_probs(logits, floor)
    channel = seeds - label_offset
    counted = (seeds != IGNORE_INDEX) & (channel >= 0) & (channel < C)
    picked = log_probs.gather(1, channel.clamp(0, C - 1).unsqueeze(1)).squeeze(1)
    nll = torch.where(counted, -picked, torch.zeros_like(picked))
    background = seeds == 0
    groups = (counted & background, counted & ~background)
    sums = torch.stack([torch.where(g, nll, torch.zeros_like(nll)).sum((1, 2)) for g in groups], 1)
    counts = torch.stack([g.sum((1, 2)) for g in groups], 1).to(sums.dtype)
    return sums, counts


def boundary_kl_sums_reference(logits, target, floor=PROB_FLOOR, ratio_min=KL_RATIO_MIN, ratio_max=KL_RATIO_MAX):
    """Per-image sums over positions of sum_c R log clip(R / Phi, ratio_min, ratio_max), (B,).

    logits, target: (B, C, h, w); R = target floored and renormalised (a constant), Phi the
    floored softmax of the logits.
    """
    acc = accumulation_dtype(logits.dtype)
    probs = floored_softmax(logits, floor)
    reference = floor_and_renormalise(target.detach().to(acc), floor)
    kl = (reference * (reference / probs).clamp(ratio_min, ratio_max).log()).sum(1)
    return kl.sum((1, 2))
