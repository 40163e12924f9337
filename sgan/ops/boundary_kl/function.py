"""The fused boundary KL statistics (docs/design.md §3): input checks, backend dispatch, autograd.

Per image, the sum over positions of sum_c R_c log clip(R_c / Phi_c, ratio_min, ratio_max): all that
the boundary loss (eq. 9, ``sgan.losses``) needs from the logits. The backends compute only these sums
(and their gradient); the loss divides them in plain PyTorch, so autograd hands the backends the
gradient of the sums.

Backend contract (``cpp``/``cuda`` in ``torch.ops.sgan_ext``, ``triton`` in ``sgan.kernels.losses``,
dispatched by ``sgan.ops.softmax``; the custom ops ``torch.ops.sgan.fused_boundary_kl_forward/backward``,
with autograd and fake tensors, take the backend's name as their last argument and call its function
of that name); tensors are contiguous and on one device, ``acc`` is float64 for float64 logits, else
float32, and Phi is the softmax over the C channels floored at ``floor`` and renormalised:

``boundary_kl_forward(logits, target, floor, ratio_min, ratio_max) -> (sums, stats)``
    logits (B, C, N) float; target (B, C, N) acc, floored at ``floor`` and renormalised inside into
    R; sums (B,) acc, sums[b] = sum over positions of sum_c R_c log clip(R_c / Phi_c, ratio_min,
    ratio_max). stats (B, 7, N) acc: M = max_c z_c, 1 / E with E = sum_c exp(z_c - M),
    S = sum_c max(p_c, floor), T = sum of the p_c >= floor, W = sum_c w_c, U = sum_{c: p_c >= floor} w_c
    (w_c = R_c where R_c / Phi_c lies inside the clip range, else 0) and 1 / sum_c max(target_c, floor).
``boundary_kl_backward(grad_sums, logits, target, stats, floor, ratio_min, ratio_max) -> grad_logits``
    grad_sums (B,) acc; the gradient with respect to the logits (R is a constant; clipped terms
    have no gradient).

The forward reads the logits once; the backward reads them once more and uses the per-position
statistics instead of recomputing the softmax reductions. Nothing of size B x C x N is materialised
besides the gradient.
"""
import numpy as np
import torch
from torch import Tensor

from sgan.ops.boundary_kl.reference import boundary_kl_sums_reference
from sgan.ops.dispatch import accumulation_dtype, describe, values_checked
from sgan.ops.softmax import backend_module

BOUNDARY_STATS = 7  # per-position statistics rows of the fused forward (see the contract)


# ---------------------------------------------------------------------------------------------
# custom ops (fused backends) with fake implementations and autograd


@torch.library.custom_op("sgan::fused_boundary_kl_forward", mutates_args=())
def _boundary_kl_forward_op(logits: Tensor, target: Tensor, floor: float, ratio_min: float, ratio_max: float,
                            backend: str) -> tuple[Tensor, Tensor]:
    sums, stats = backend_module(backend).boundary_kl_forward(logits, target, floor, ratio_min, ratio_max)
    return sums, stats


@_boundary_kl_forward_op.register_fake
def _boundary_kl_forward_fake(logits, target, floor, ratio_min, ratio_max, backend):
    acc = accumulation_dtype(logits.dtype)
    B, _, N = logits.shape
    return logits.new_empty((B,), dtype=acc), logits.new_empty((B, BOUNDARY_STATS, N), dtype=acc)


@torch.library.custom_op("sgan::fused_boundary_kl_backward", mutates_args=())
def _boundary_kl_backward_op(grad_sums: Tensor, logits: Tensor, target: Tensor, stats: Tensor, floor: float,
                             ratio_min: float, ratio_max: float, backend: str) -> Tensor:
    return backend_module(backend).boundary_kl_backward(grad_sums, logits, target, stats, floor, ratio_min,
                                                        ratio_max)


@_boundary_kl_backward_op.register_fake
def _boundary_kl_backward_fake(grad_sums, logits, target, stats, floor, ratio_min, ratio_max, backend):
    return torch.empty_like(logits)


def _boundary_kl_setup_context(ctx, inputs, output):
    logits, target, floor, ratio_min, ratio_max, backend = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(logits, target, output[1])
    ctx.options = (floor, ratio_min, ratio_max, backend)


def _boundary_kl_backward(ctx, grad_sums, unused_grad_stats):
    logits, target, stats = ctx.saved_tensors
    grad_logits = _boundary_kl_backward_op(grad_sums.contiguous(), logits, target, stats, *ctx.options)
    return grad_logits, None, None, None, None, None


_boundary_kl_forward_op.register_autograd(_boundary_kl_backward, setup_context=_boundary_kl_setup_context)


# ---------------------------------------------------------------------------------------------
# input checks and the operator


def check_target(target, logits, name="target"):
    """``target`` (a tensor or numpy array of the logits' shape) as a contiguous tensor in the
    accumulation dtype on the logits' device, detached; its values finite and non-negative."""
    if isinstance(target, np.ndarray):
        target = torch.from_numpy(target)
    if not isinstance(target, Tensor):
        raise TypeError(f"{name}: expected a tensor or numpy array, got {type(target).__name__}")
    if target.shape != logits.shape:
        raise ValueError(f"{name}: expected the shape of the logits {tuple(logits.shape)}, "
                         f"got {describe(target)}")
    if not target.is_floating_point():
        raise TypeError(f"{name}: expected floating probabilities, got {target.dtype}")
    if values_checked(target) and not bool(((target >= 0) & torch.isfinite(target)).all()):
        raise ValueError(f"{name}: expected finite, non-negative probabilities")
    return target.detach().to(device=logits.device, dtype=accumulation_dtype(logits.dtype)).contiguous()


def boundary_kl_sums(logits, target, floor, ratio_min, ratio_max, backend):
    """(B,) in the accumulation dtype: per image, the sum over positions of
    sum_c R_c log clip(R_c / Phi_c, ratio_min, ratio_max), R the target floored at ``floor`` and
    renormalised (a constant: no gradient), Phi the softmax of the logits floored likewise.

    Inputs as the checks return them: logits (B, C, h, w) (``sgan.ops.softmax.check_logits``), target
    of their shape (``check_target``) and ``backend`` concrete, with the logits it computes with
    (``sgan.ops.softmax.resolve_for_logits``).
    """
    if backend == "reference":
        return boundary_kl_sums_reference(logits, target, floor, ratio_min, ratio_max)
    B, C, h, w = logits.shape
    sums, _ = _boundary_kl_forward_op(logits.reshape(B, C, h * w).contiguous(), target.reshape(B, C, h * w),
                                      floor, ratio_min, ratio_max, backend)
    return sums
