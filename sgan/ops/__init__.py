"""Public operators of SGAN: the saliency-guided attention, and the seed NLL and boundary KL
statistics that the losses (``sgan.losses``) are made of."""
from sgan.ops.attention import attention_column, saliency_attention
from sgan.ops.boundary_kl import boundary_kl_sums
from sgan.ops.seed_nll import seed_nll_stats

__all__ = ["attention_column", "boundary_kl_sums", "saliency_attention", "seed_nll_stats"]
