"""The fused seed NLL statistics (docs/design.md §3): input checks, backend dispatch, autograd.

Per image, the sums and counts of -log Phi at the labelled positions, split into background and
foreground: all that the seed losses (eq. 5 and eq. 8, ``sgan.losses``) need from the logits. The
backends compute only these statistics (and their gradient); the losses combine them in plain
PyTorch, so autograd hands the backends the gradient of the statistics.

Backend contract (``cpp``/``cuda`` in ``torch.ops.sgan_ext``, ``triton`` in ``sgan.kernels.losses``,
dispatched by ``sgan.ops.softmax``; the custom ops ``torch.ops.sgan.fused_seed_nll_forward/backward``,
with autograd and fake tensors, take the backend's name as their last argument and call its function
of that name); tensors are contiguous and on one device, ``acc`` is float64 for float64 logits, else
float32, and Phi is the softmax over the C channels floored at ``floor`` and renormalised:

``seed_nll_forward(logits, seeds, label_offset, floor) -> (sums, counts, stats)``
    logits (B, C, N) float; seeds (B, N) int64. A position with label y != 255 whose channel
    c = y - label_offset lies in [0, C) counts in group g = 0 if y == 0 else 1:
    sums[b, g] += -log Phi_c, counts[b, g] += 1; with ``floor`` 0 (no floor) -log Phi_c is computed
    as log E - (z_c - M), never as the log of p_c, so it stays finite and exact however small p_c is.
    sums, counts: (B, 2) acc. stats (B, 4, N) acc holds,
    per position, M = max_c z_c, 1 / E with E = sum_c exp(z_c - M) (so p_c = exp(z_c - M) / E),
    S = sum_c max(p_c, floor) and T = sum of the p_c >= floor; it must be valid at counted positions
    and is passed back to the backward.
``seed_nll_backward(grad_sums, logits, seeds, stats, label_offset, floor) -> grad_logits``
    grad_sums (B, 2) acc; grad_logits has the shape and dtype of logits: grad_sums[b, g] times the
    gradient of -log Phi_c at counted positions, 0 elsewhere.

The forward reads the logits once; the backward reads them once more and uses the per-position
statistics instead of recomputing the softmax reductions. Nothing of size B x C x N is materialised
besides the gradient.
"""
import torch
from torch import Tensor

from sgan.ops.dispatch import accumulation_dtype, describe, values_checked
from sgan.ops.seed_nll.reference import seed_nll_stats_reference
from sgan.ops.softmax import backend_module

SEED_STATS = 4  # per-position statistics rows of the fused forward (see the contract)


# ---------------------------------------------------------------------------------------------
# custom ops (fused backends) with fake implementations and autograd


@torch.library.custom_op("sgan::fused_seed_nll_forward", mutates_args=())
def _seed_nll_forward_op(logits: Tensor, seeds: Tensor, label_offset: int, floor: float, backend: str
                         ) -> tuple[Tensor, Tensor, Tensor]:
    sums, counts, stats = backend_module(backend).seed_nll_forward(logits, seeds, label_offset, floor)
    return sums, counts, stats


@_seed_nll_forward_op.register_fake
def _seed_nll_forward_fake(logits, seeds, label_offset, floor, backend):
    acc = accumulation_dtype(logits.dtype)
    B, _, N = logits.shape
    return (logits.new_empty((B, 2), dtype=acc), logits.new_empty((B, 2), dtype=acc),
            logits.new_empty((B, SEED_STATS, N), dtype=acc))


@torch.library.custom_op("sgan::fused_seed_nll_backward", mutates_args=())
def _seed_nll_backward_op(grad_sums: Tensor, logits: Tensor, seeds: Tensor, stats: Tensor, label_offset: int,
                          floor: float, backend: str) -> Tensor:
    return backend_module(backend).seed_nll_backward(grad_sums, logits, seeds, stats, label_offset, floor)


@_seed_nll_backward_op.register_fake
def _seed_nll_backward_fake(grad_sums, logits, seeds, stats, label_offset, floor, backend):
    return torch.empty_like(logits)


def _seed_nll_setup_context(ctx, inputs, output):
    logits, seeds, label_offset, floor, backend = inputs
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.save_for_backward(logits, seeds, output[2])
    ctx.options = (label_offset, floor, backend)


def _seed_nll_backward(ctx, grad_sums, unused_grad_counts, unused_grad_stats):
    logits, seeds, stats = ctx.saved_tensors
    grad_logits = _seed_nll_backward_op(grad_sums.contiguous(), logits, seeds, stats, *ctx.options)
    return grad_logits, None, None, None, None


_seed_nll_forward_op.register_autograd(_seed_nll_backward, setup_context=_seed_nll_setup_context)


# ---------------------------------------------------------------------------------------------
# input checks and the operator


def check_seeds(seeds, logits, label_offset, ignore_index):
    """Seeds as contiguous int64 (B, h, w) on the logits' device, labels in
    0..C - 1 + label_offset or ``ignore_index``; ``logits`` (B, C, h, w) checked already."""
    max_label = logits.shape[1] - 1 + label_offset
    if not isinstance(seeds, Tensor):
        raise TypeError(f"seeds: expected a torch.Tensor, got {type(seeds).__name__}")
    B, _, h, w = logits.shape
    if seeds.shape != (B, h, w):
        raise ValueError(f"seeds: expected shape (B={B}, h={h}, w={w}), the batch and spatial size of the "
                         f"logits, got {describe(seeds)}; resize seeds to the logits' size first with "
                         f"sgan.data.logits_size.resize_seeds (nearest neighbour)")
    if seeds.dtype.is_floating_point or seeds.dtype.is_complex or seeds.dtype == torch.bool:
        raise TypeError(f"seeds: expected an integer tensor (labels 0..{max_label}, {ignore_index} unlabelled), "
                        f"got {seeds.dtype}")
    if seeds.device != logits.device:
        raise ValueError(f"seeds: expected device {logits.device} (the device of the logits), got {seeds.device}")
    seeds = seeds.to(torch.int64).contiguous()
    if values_checked(seeds):
        bad = (seeds < 0) | ((seeds > max_label) & (seeds != ignore_index))
        if bool(bad.any()):
            found = sorted(set(seeds[bad].unique().tolist()))[:10]
            raise ValueError(f"seeds: expected labels in 0..{max_label} or {ignore_index} (unlabelled), "
                             f"found {found}")
    return seeds


def seed_nll_stats(logits, seeds, label_offset, floor, ignore_index, backend):
    """(sums, counts), (B, 2) each in the accumulation dtype: per image, the sum and the number of
    -log Phi_c over the counted positions, group 0 background (label 0), group 1 the other labels.

    A position with label y counts when y != ``ignore_index`` and its channel c = y - label_offset
    lies in [0, C). Phi is the softmax floored at ``floor`` and renormalised (0: the plain softmax,
    its log computed without taking the log of p). Inputs as the checks return them: logits
    (B, C, h, w) (``sgan.ops.softmax.check_logits``), seeds (B, h, w) int64 (``check_seeds``),
    ``floor`` a float (``check_floor``) and ``backend`` concrete, with the logits it computes with
    (``resolve_for_logits``). The fused backends have ``ignore_index`` 255 built in (the unlabelled
    label of ``sgan.data.voc_classes``); the reference takes it from here.
    """
    if backend == "reference":
        return seed_nll_stats_reference(logits, seeds, label_offset, floor, ignore_index)
    B, C, h, w = logits.shape
    sums, counts, _ = _seed_nll_forward_op(logits.reshape(B, C, h * w).contiguous(), seeds.reshape(B, h * w),
                                           label_offset, floor, backend)
    return sums, counts
