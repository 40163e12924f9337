"""The fused boundary KL statistics of the boundary loss: public op, input checks, reference, autograd."""
from sgan.ops.boundary_kl.function import boundary_kl_sums, check_target
from sgan.ops.boundary_kl.reference import boundary_kl_sums_reference

__all__ = ["boundary_kl_sums", "boundary_kl_sums_reference", "check_target"]
