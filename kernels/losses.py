"""Triton kernels of the seed losses and the boundary KL (installed as ``sgan.kernels.losses``).

Launchers follow the backend contract in ``sgan/losses/function.py``. One program handles a block
of BLOCK_N consecutive positions of one image and all C channels (padded to BLOCK_C): it reads the
logits once, keeps the floored softmax in registers, and writes per-block partial sums (reduced by
torch in a fixed order, so results are deterministic) or the gradient. Accumulation is float32, or
float64 for float64 logits.
"""
import functools

import torch
import triton
import triton.language as tl

IGNORE_LABEL = tl.constexpr(255)
_ELEMENTS_PER_PROGRAM = 4096  # BLOCK_C * BLOCK_N


@triton.jit
def _floored_softmax(logits_ptr, b, C, N, offs_c, offs_n, c_mask, n_mask, floor, IS_FP64: tl.constexpr):
    """Softmax over the channels of a (BLOCK_C, BLOCK_N) tile: (p, S = sum max(p, floor),
    T = sum of p over the channels with p >= floor, kept = p >= floor on real channels)."""
    pointers = logits_ptr + b * C * N + offs_c[:, None] * N + offs_n[None, :]
    z = tl.load(pointers, mask=c_mask[:, None] & n_mask[None, :], other=0.0)
    if IS_FP64:
        z = z.to(tl.float64)
    else:
        z = z.to(tl.float32)
    z = tl.where(c_mask[:, None], z, float("-inf"))
    row_max = tl.max(z, axis=0)
    e = tl.exp(z - row_max[None, :])
    p = e / tl.sum(e, axis=0)[None, :]
    floored = tl.where(c_mask[:, None], tl.maximum(p, floor), 0.0)
    kept = c_mask[:, None] & (p >= floor)
    return p, tl.sum(floored, axis=0), tl.sum(tl.where(kept, p, 0.0), axis=0), kept


@triton.jit
def _seed_labels(seeds_ptr, b, N, offs_n, n_mask, label_offset, C):
    """Seed labels of a block, the channel they select and whether they count."""
    labels = tl.load(seeds_ptr + b * N + offs_n, mask=n_mask, other=IGNORE_LABEL)
    channel = labels - label_offset
    counted = n_mask & (labels != IGNORE_LABEL) & (channel >= 0) & (channel < C)
    return labels, channel, counted


@triton.jit
def _seed_nll_forward_kernel(logits_ptr, seeds_ptr, sums_ptr, counts_ptr, params_ptr, C, N, num_blocks, label_offset,
                             BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, IS_FP64: tl.constexpr):
    block = tl.program_id(0)
    b = tl.program_id(1)
    offs_n = block * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, BLOCK_C)
    n_mask = offs_n < N
    c_mask = offs_c < C
    floor = tl.load(params_ptr)
    p, floored_sum, kept_sum, kept = _floored_softmax(logits_ptr, b, C, N, offs_c, offs_n, c_mask, n_mask, floor,
                                                      IS_FP64)
    labels, channel, counted = _seed_labels(seeds_ptr, b, N, offs_n, n_mask, label_offset, C)
    picked = tl.sum(tl.where(offs_c[:, None] == channel[None, :], p, 0.0), axis=0)
    nll = tl.log(floored_sum) - tl.log(tl.maximum(picked, floor))
    nll = tl.where(counted, nll, 0.0)
    background = labels == 0
    out = (b * num_blocks + block) * 2
    tl.store(sums_ptr + out, tl.sum(tl.where(background, nll, 0.0), axis=0))
    tl.store(sums_ptr + out + 1, tl.sum(tl.where(background, 0.0, nll), axis=0))
    counted_float = tl.where(counted, 1.0, 0.0).to(nll.dtype)
    tl.store(counts_ptr + out, tl.sum(tl.where(background, counted_float, 0.0), axis=0))
    tl.store(counts_ptr + out + 1, tl.sum(tl.where(background, 0.0, counted_float), axis=0))


@triton.jit
def _seed_nll_backward_kernel(grad_sums_ptr, logits_ptr, seeds_ptr, grad_ptr, params_ptr, C, N, label_offset,
                              BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, IS_FP64: tl.constexpr):
    block = tl.program_id(0)
    b = tl.program_id(1)
    offs_n = block * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, BLOCK_C)
    n_mask = offs_n < N
    c_mask = offs_c < C
    floor = tl.load(params_ptr)
    p, floored_sum, kept_sum, kept = _floored_softmax(logits_ptr, b, C, N, offs_c, offs_n, c_mask, n_mask, floor,
                                                      IS_FP64)
    labels, channel, counted = _seed_labels(seeds_ptr, b, N, offs_n, n_mask, label_offset, C)
    grad_background = tl.load(grad_sums_ptr + b * 2)
    grad_foreground = tl.load(grad_sums_ptr + b * 2 + 1)
    coefficient = tl.where(counted, tl.where(labels == 0, grad_background, grad_foreground), 0.0)
    is_label = offs_c[:, None] == channel[None, :]
    label_kept = tl.sum(tl.where(is_label & kept, 1.0, 0.0), axis=0)
    label_term = coefficient * label_kept
    floor_term = coefficient / floored_sum
    # d(-log Phi_y)/dz_c = p_c (m_y + (m_c - T) / S) - [c == y] m_y, with m_c = [p_c >= floor]
    kept_float = tl.where(kept, 1.0, 0.0)
    grad = p * (label_term[None, :] + floor_term[None, :] * (kept_float - kept_sum[None, :]))
    grad = grad - tl.where(is_label, label_term[None, :], 0.0)
    pointers = grad_ptr + b * C * N + offs_c[:, None] * N + offs_n[None, :]
    tl.store(pointers, grad.to(grad_ptr.dtype.element_ty), mask=c_mask[:, None] & n_mask[None, :])


@triton.jit
def _reference_and_ratio(target_ptr, b, C, N, offs_c, offs_n, c_mask, n_mask, p, floored_sum, floor,
                         IS_FP64: tl.constexpr):
    """R (target floored and renormalised, 0 on padded channels) and the unclipped R / Phi."""
    pointers = target_ptr + b * C * N + offs_c[:, None] * N + offs_n[None, :]
    r = tl.load(pointers, mask=c_mask[:, None] & n_mask[None, :], other=0.0)
    if IS_FP64:
        r = r.to(tl.float64)
    else:
        r = r.to(tl.float32)
    r = tl.where(c_mask[:, None], tl.maximum(r, floor), 0.0)
    reference = r / tl.sum(r, axis=0)[None, :]
    phi = tl.maximum(p, floor) / floored_sum[None, :]
    return reference, reference / phi


@triton.jit
def _boundary_kl_forward_kernel(logits_ptr, target_ptr, sums_ptr, params_ptr, C, N, num_blocks,
                                BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, IS_FP64: tl.constexpr):
    block = tl.program_id(0)
    b = tl.program_id(1)
    offs_n = block * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, BLOCK_C)
    n_mask = offs_n < N
    c_mask = offs_c < C
    floor = tl.load(params_ptr)
    p, floored_sum, kept_sum, kept = _floored_softmax(logits_ptr, b, C, N, offs_c, offs_n, c_mask, n_mask, floor,
                                                      IS_FP64)
    ratio_min = tl.load(params_ptr + 1)
    ratio_max = tl.load(params_ptr + 2)
    reference, ratio = _reference_and_ratio(target_ptr, b, C, N, offs_c, offs_n, c_mask, n_mask, p, floored_sum,
                                            floor, IS_FP64)
    ratio = tl.minimum(tl.maximum(ratio, ratio_min), ratio_max)
    terms = tl.where(c_mask[:, None] & n_mask[None, :], reference * tl.log(ratio), 0.0)
    tl.store(sums_ptr + b * num_blocks + block, tl.sum(tl.sum(terms, axis=0), axis=0))


@triton.jit
def _boundary_kl_backward_kernel(grad_sums_ptr, logits_ptr, target_ptr, grad_ptr, params_ptr, C, N,
                                 BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, IS_FP64: tl.constexpr):
    block = tl.program_id(0)
    b = tl.program_id(1)
    offs_n = block * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, BLOCK_C)
    n_mask = offs_n < N
    c_mask = offs_c < C
    floor = tl.load(params_ptr)
    p, floored_sum, kept_sum, kept = _floored_softmax(logits_ptr, b, C, N, offs_c, offs_n, c_mask, n_mask, floor,
                                                      IS_FP64)
    ratio_min = tl.load(params_ptr + 1)
    ratio_max = tl.load(params_ptr + 2)
    reference, ratio = _reference_and_ratio(target_ptr, b, C, N, offs_c, offs_n, c_mask, n_mask, p, floored_sum,
                                            floor, IS_FP64)
    # w_c = R_c inside the clip range (else the term is constant); the gradient of sum_c w_c (-log Phi_c)
    # is -w_c m_c + p_c sum_k w_k m_k + (sum_k w_k) p_c (m_c - T) / S
    weight = tl.where(c_mask[:, None] & (ratio >= ratio_min) & (ratio <= ratio_max), reference, 0.0)
    weight_sum = tl.sum(weight, axis=0)
    kept_weight_sum = tl.sum(tl.where(kept, weight, 0.0), axis=0)
    kept_float = tl.where(kept, 1.0, 0.0)
    coefficient = tl.load(grad_sums_ptr + b)
    grad = p * (kept_weight_sum[None, :] + (weight_sum / floored_sum)[None, :] * (kept_float - kept_sum[None, :]))
    grad = coefficient * (grad - weight * kept_float)
    pointers = grad_ptr + b * C * N + offs_c[:, None] * N + offs_n[None, :]
    tl.store(pointers, grad.to(grad_ptr.dtype.element_ty), mask=c_mask[:, None] & n_mask[None, :])


def _blocks(logits):
    """(BLOCK_C, BLOCK_N, number of blocks per image, IS_FP64) for (B, C, N) logits."""
    _, C, N = logits.shape
    block_c = triton.next_power_of_2(C)
    block_n = max(16, min(128, _ELEMENTS_PER_PROGRAM // block_c))
    return block_c, block_n, triton.cdiv(N, block_n), logits.dtype == torch.float64


def _accumulate_dtype(logits):
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


@functools.lru_cache(maxsize=64)
def _params(device, dtype, floor, ratio_min, ratio_max):
    """[floor, ratio_min, ratio_max] as a tensor of the accumulation dtype: Triton would round
    float arguments to float32, which is not exact for float64 logits."""
    return torch.tensor([floor, ratio_min, ratio_max], dtype=dtype, device=device)


def _params_for(logits, floor, ratio_min=0.0, ratio_max=0.0):
    return _params(logits.device, _accumulate_dtype(logits), float(floor), float(ratio_min), float(ratio_max))


def seed_nll_forward(logits, seeds, label_offset, floor):
    """(sums, counts), (B, 2) each, group 0 background and 1 foreground; see the contract."""
    B, C, N = logits.shape
    block_c, block_n, num_blocks, is_fp64 = _blocks(logits)
    acc = _accumulate_dtype(logits)
    sums = torch.empty((B, num_blocks, 2), dtype=acc, device=logits.device)
    counts = torch.empty((B, num_blocks, 2), dtype=acc, device=logits.device)
    _seed_nll_forward_kernel[(num_blocks, B)](logits, seeds, sums, counts, _params_for(logits, floor), C, N, num_blocks,
                                              int(label_offset), BLOCK_C=block_c, BLOCK_N=block_n, IS_FP64=is_fp64)
    return sums.sum(1), counts.sum(1)


def seed_nll_backward(grad_sums, logits, seeds, label_offset, floor):
    """Gradient of the sums with respect to the logits, the logits' shape and dtype."""
    B, C, N = logits.shape
    block_c, block_n, num_blocks, is_fp64 = _blocks(logits)
    grad = torch.empty_like(logits)
    _seed_nll_backward_kernel[(num_blocks, B)](grad_sums.to(_accumulate_dtype(logits)).contiguous(), logits, seeds,
                                               grad, _params_for(logits, floor), C, N, int(label_offset), BLOCK_C=block_c,
                                               BLOCK_N=block_n, IS_FP64=is_fp64)
    return grad


def boundary_kl_forward(logits, target, floor, ratio_min, ratio_max):
    """Per-image sums (B,) of sum_c R log clip(R / Phi); see the contract."""
    B, C, N = logits.shape
    block_c, block_n, num_blocks, is_fp64 = _blocks(logits)
    sums = torch.empty((B, num_blocks), dtype=_accumulate_dtype(logits), device=logits.device)
    _boundary_kl_forward_kernel[(num_blocks, B)](logits, target, sums, _params_for(logits, floor, ratio_min, ratio_max),
                                                 C, N, num_blocks, BLOCK_C=block_c,
                                                 BLOCK_N=block_n, IS_FP64=is_fp64)
    return sums.sum(1)


def boundary_kl_backward(grad_sums, logits, target, floor, ratio_min, ratio_max):
    """Gradient of the per-image KL sums with respect to the logits."""
    B, C, N = logits.shape
    block_c, block_n, num_blocks, is_fp64 = _blocks(logits)
    grad = torch.empty_like(logits)
    _boundary_kl_backward_kernel[(num_blocks, B)](grad_sums.to(_accumulate_dtype(logits)).contiguous(), logits,
                                                  target, grad, _params_for(logits, floor, ratio_min, ratio_max),
                                                  C, N, BLOCK_C=block_c, BLOCK_N=block_n,
                                                  IS_FP64=is_fp64)
    return grad
