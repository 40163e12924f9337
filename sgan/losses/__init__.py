"""SGAN losses (docs/design.md §3): seed (eq. 5), classification (eq. 6), balanced seed (eq. 8) and
boundary (eq. 9), with fused backends for the seed losses and the KL part of the boundary loss."""
from sgan.data.logits_size import resize_images, resize_seeds
from sgan.losses.function import (
    BACKENDS,
    balanced_seed_loss,
    boundary_crf_targets,
    boundary_loss,
    classification_loss,
    crf_unary_probs,
    fused_backends,
    resolve_backend,
    seed_loss,
)
from sgan.losses.reference import PROB_FLOOR, floor_and_renormalise, floored_softmax

__all__ = [
    "BACKENDS",
    "PROB_FLOOR",
    "balanced_seed_loss",
    "boundary_crf_targets",
    "boundary_loss",
    "classification_loss",
    "crf_unary_probs",
    "floor_and_renormalise",
    "floored_softmax",
    "fused_backends",
    "resize_images",
    "resize_seeds",
    "resolve_backend",
    "seed_loss",
]
