"""The fused seed NLL statistics of the seed losses: public op, input checks, reference, autograd."""
from sgan.ops.seed_nll.function import check_seeds, seed_nll_stats
from sgan.ops.seed_nll.reference import seed_log_probs, seed_nll_stats_reference

__all__ = ["check_seeds", "seed_log_probs", "seed_nll_stats", "seed_nll_stats_reference"]
