"""SGAN losses (docs/design.md §3): seed (eq. 5), classification (eq. 6), balanced seed (eq. 8) and
boundary (eq. 9), made of the seed NLL and boundary KL operators of ``sgan.ops`` (fused backends)."""
from sgan.losses.function import (
    KL_RATIO_MAX,
    KL_RATIO_MIN,
    PROB_FLOOR,
    balanced_seed_loss,
    boundary_crf_targets,
    boundary_loss,
    classification_loss,
    crf_unary_probs,
    seed_loss,
)

__all__ = [
    "KL_RATIO_MAX",
    "KL_RATIO_MIN",
    "PROB_FLOOR",
    "balanced_seed_loss",
    "boundary_crf_targets",
    "boundary_loss",
    "classification_loss",
    "crf_unary_probs",
    "seed_loss",
]
