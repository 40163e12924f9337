"""Triton kernels of the seed losses and the boundary KL (installed as ``sgan.kernels.losses``).

Launchers follow the backend contracts in ``sgan/ops/seed_nll/function.py`` and
``sgan/ops/boundary_kl/function.py``. One program handles a block of BLOCK_N consecutive positions
of one image and all C channels (padded to BLOCK_C). The forward
reads the logits once, keeps the floored softmax in registers and writes per-block partial sums
(reduced by torch in a fixed order, so results are deterministic) and a few statistics per
position; the backward reads the logits once more and writes the gradient. Accumulation is float32, or
float64 for float64 logits. N and the block count derived from it are not specialised on (a new image
size compiles nothing). Offsets into the (B, C, N) tensors are int64, so B * C * N may exceed 2^31.
Compiled, exp and log are libdevice's (within a few ulp, as ::exp / ::log in C++ and CUDA): compiled Triton
lowers ``tl.exp`` of float32 to an approximate exp2 of x * log2(e), off by up to |x| ulp. The interpreter
cannot call libdevice; there ``tl.exp`` / ``tl.log`` are numpy's, which are as accurate. Launches run on
the logits' CUDA device (``launch_device``).
"""
import functools

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from sgan.data import voc_classes
from sgan.kernels.autotuning import INTERPRETED
from sgan.ops.dispatch import accumulation_dtype, launch_device

IGNORE_INDEX = tl.constexpr(voc_classes.IGNORE_INDEX)  # a seed without a label
_NUMPY_MATH = tl.constexpr(INTERPRETED)  # the interpreter runs tl.exp / tl.log as numpy's exp / log
_ELEMENTS_PER_PROGRAM = 4096  # BLOCK_C * BLOCK_N


@triton.jit
def _exp(x):
    """exp within a few ulp: libdevice's when compiled, numpy's when interpreted."""
    if _NUMPY_MATH:
        value = tl.exp(x)
    else:
        value = libdevice.exp(x)
    return value


@triton.jit
def _log(x):
    """log within a few ulp: libdevice's when compiled, numpy's when interpreted."""
    if _NUMPY_MATH:
        value = tl.log(x)
    else:
        value = libdevice.log(x)
    return value


@triton.jit
def _block_offsets(C, N, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's (block, b, offs_c, offs_n, c_mask, n_mask): positions block * BLOCK_N + [0, BLOCK_N)
    of image b, all channels padded to BLOCK_C. Grid (blocks per image, B). b is int64, so every offset
    computed from it (b * C * N) is too."""
    block = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_n = block * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, BLOCK_C)
    return block, b, offs_c, offs_n, offs_c < C, offs_n < N


@triton.jit
def _store_tile(pointer, values, b, C, N, offs_c, offs_n, c_mask, n_mask):
    """Store a (BLOCK_C, BLOCK_N) tile into a (B, C, N) tensor, in its dtype."""
    tl.store(pointer + b * C * N + offs_c[:, None].to(tl.int64) * N + offs_n[None, :],
             values.to(pointer.dtype.element_ty), mask=c_mask[:, None] & n_mask[None, :])


@triton.jit
def _load_tile(pointer, b, C, N, offs_c, offs_n, c_mask, n_mask, other, IS_FP64: tl.constexpr):
    """A (BLOCK_C, BLOCK_N) tile of a (B, C, N) tensor in the accumulation dtype; ``other`` where the
    channel is padding, 0 where the position is."""
    values = tl.load(pointer + b * C * N + offs_c[:, None].to(tl.int64) * N + offs_n[None, :],
                     mask=c_mask[:, None] & n_mask[None, :], other=0.0)
    if IS_FP64:
        values = values.to(tl.float64)
    else:
        values = values.to(tl.float32)
    return tl.where(c_mask[:, None], values, other)


@triton.jit
def _floor(values, floor):
    """max(values, floor), NaN propagating."""
    return tl.maximum(values, floor, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _floored_softmax(z, c_mask, floor):
    """Softmax over the channels of a tile of logits (padding channels -inf): (p, M = max_c z_c,
    E = sum_c exp(z_c - M), 1 / E, S = sum max(p, floor), T = sum of p over the channels with
    p >= floor, kept = p >= floor). The backward recomputes p exactly as exp(z - M) * (1 / E)."""
    row_max = tl.max(z, axis=0)
    total = tl.sum(_exp(z - row_max[None, :]), axis=0)
    inverse_total = 1.0 / total
    p = _exp(z - row_max[None, :]) * inverse_total[None, :]
    floored = tl.where(c_mask[:, None], _floor(p, floor), 0.0)
    kept = c_mask[:, None] & (p >= floor)
    return (p, row_max, total, inverse_total, tl.sum(floored, axis=0), tl.sum(tl.where(kept, p, 0.0), axis=0),
            kept)


@triton.jit
def _seed_labels(seeds_ptr, b, N, offs_n, n_mask, label_offset, C):
    """Seed labels of a block, the channel they select and whether they count."""
    labels = tl.load(seeds_ptr + b * N + offs_n, mask=n_mask, other=IGNORE_INDEX)
    channel = labels - label_offset
    counted = n_mask & (labels != IGNORE_INDEX) & (channel >= 0) & (channel < C)
    return labels, channel, counted


@triton.jit(do_not_specialize=["N", "num_blocks"])
def _seed_nll_forward_kernel(logits_ptr, seeds_ptr, sums_ptr, counts_ptr, stats_ptr, params_ptr, C, N, num_blocks,
                             label_offset, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, IS_FP64: tl.constexpr):
    block, b, offs_c, offs_n, c_mask, n_mask = _block_offsets(C, N, BLOCK_C, BLOCK_N)
    floor = tl.load(params_ptr)
    z = _load_tile(logits_ptr, b, C, N, offs_c, offs_n, c_mask, n_mask, float("-inf"), IS_FP64)
    p, row_max, total, inverse_total, floored_sum, kept_sum, kept = _floored_softmax(z, c_mask, floor)
    labels, channel, counted = _seed_labels(seeds_ptr, b, N, offs_n, n_mask, label_offset, C)
    is_label = offs_c[:, None] == channel[None, :]
    picked = tl.sum(tl.where(is_label, p, 0.0), axis=0)
    floored_nll = _log(floored_sum) - _log(_floor(picked, floor))
    # no floor: -log p_y = log E - (z_y - M), finite and exact however small p_y is
    plain_nll = _log(total) - (tl.sum(tl.where(is_label, z, 0.0), axis=0) - row_max)
    nll = tl.where(floor > 0, floored_nll, plain_nll)
    nll = tl.where(counted, nll, 0.0)
    background = labels == 0
    out = (b * num_blocks + block) * 2
    tl.store(sums_ptr + out, tl.sum(tl.where(background, nll, 0.0), axis=0))
    tl.store(sums_ptr + out + 1, tl.sum(tl.where(background, 0.0, nll), axis=0))
    counted_float = tl.where(counted, 1.0, 0.0).to(nll.dtype)
    tl.store(counts_ptr + out, tl.sum(tl.where(background, counted_float, 0.0), axis=0))
    tl.store(counts_ptr + out + 1, tl.sum(tl.where(background, 0.0, counted_float), axis=0))
    stats = stats_ptr + b * 4 * N + offs_n
    tl.store(stats, row_max, mask=n_mask)
    tl.store(stats + N, inverse_total, mask=n_mask)
    tl.store(stats + 2 * N, floored_sum, mask=n_mask)
    tl.store(stats + 3 * N, kept_sum, mask=n_mask)


@triton.jit(do_not_specialize=["N"])
def _seed_nll_backward_kernel(grad_sums_ptr, logits_ptr, seeds_ptr, stats_ptr, grad_ptr, params_ptr, C, N,
                              label_offset, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, IS_FP64: tl.constexpr):
    block, b, offs_c, offs_n, c_mask, n_mask = _block_offsets(C, N, BLOCK_C, BLOCK_N)
    floor = tl.load(params_ptr)
    labels, channel, counted = _seed_labels(seeds_ptr, b, N, offs_n, n_mask, label_offset, C)
    stats = stats_ptr + b * 4 * N + offs_n
    row_max = tl.load(stats, mask=counted, other=0.0)
    inverse_total = tl.load(stats + N, mask=counted, other=0.0)
    floored_sum = tl.load(stats + 2 * N, mask=counted, other=1.0)
    kept_sum = tl.load(stats + 3 * N, mask=counted, other=0.0)
    z = _load_tile(logits_ptr, b, C, N, offs_c, offs_n, c_mask, n_mask, float("-inf"), IS_FP64)
    # the statistics hold only at counted positions: p = 0 elsewhere
    p = _exp(tl.where(counted[None, :], z - row_max[None, :], float("-inf"))) * inverse_total[None, :]
    kept = c_mask[:, None] & (p >= floor)
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
    _store_tile(grad_ptr, grad, b, C, N, offs_c, offs_n, c_mask, n_mask)


@triton.jit(do_not_specialize=["N", "num_blocks"])
def _boundary_kl_forward_kernel(logits_ptr, target_ptr, sums_ptr, stats_ptr, params_ptr, C, N, num_blocks,
                                BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, IS_FP64: tl.constexpr):
    block, b, offs_c, offs_n, c_mask, n_mask = _block_offsets(C, N, BLOCK_C, BLOCK_N)
    floor, ratio_min, ratio_max = tl.load(params_ptr), tl.load(params_ptr + 1), tl.load(params_ptr + 2)
    z = _load_tile(logits_ptr, b, C, N, offs_c, offs_n, c_mask, n_mask, float("-inf"), IS_FP64)
    p, row_max, _, inverse_total, floored_sum, kept_sum, kept = _floored_softmax(z, c_mask, floor)
    target = tl.where(c_mask[:, None], _floor(_load_tile(target_ptr, b, C, N, offs_c, offs_n, c_mask, n_mask, 0.0,
                                                         IS_FP64), floor), 0.0)
    reference_scale = 1.0 / tl.sum(target, axis=0)
    reference = target * reference_scale[None, :]
    ratio = reference * floored_sum[None, :] / _floor(p, floor)
    inside = c_mask[:, None] & (ratio >= ratio_min) & (ratio <= ratio_max)
    clipped = tl.minimum(tl.maximum(ratio, ratio_min, propagate_nan=tl.PropagateNan.ALL), ratio_max,
                         propagate_nan=tl.PropagateNan.ALL)
    terms = tl.where(c_mask[:, None] & n_mask[None, :], reference * _log(clipped), 0.0)
    tl.store(sums_ptr + b * num_blocks + block, tl.sum(tl.sum(terms, axis=0), axis=0))
    # w_c = R_c inside the clip range (else the term is constant): W = sum_c w_c, U = sum_{c: p_c >= floor} w_c
    weight = tl.where(inside, reference, 0.0)
    stats = stats_ptr + b * 7 * N + offs_n
    tl.store(stats, row_max, mask=n_mask)
    tl.store(stats + N, inverse_total, mask=n_mask)
    tl.store(stats + 2 * N, floored_sum, mask=n_mask)
    tl.store(stats + 3 * N, kept_sum, mask=n_mask)
    tl.store(stats + 4 * N, tl.sum(weight, axis=0), mask=n_mask)
    tl.store(stats + 5 * N, tl.sum(tl.where(kept, weight, 0.0), axis=0), mask=n_mask)
    tl.store(stats + 6 * N, reference_scale, mask=n_mask)


@triton.jit(do_not_specialize=["N"])
def _boundary_kl_backward_kernel(grad_sums_ptr, logits_ptr, target_ptr, stats_ptr, grad_ptr, params_ptr, C, N,
                                 BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, IS_FP64: tl.constexpr):
    block, b, offs_c, offs_n, c_mask, n_mask = _block_offsets(C, N, BLOCK_C, BLOCK_N)
    floor, ratio_min, ratio_max = tl.load(params_ptr), tl.load(params_ptr + 1), tl.load(params_ptr + 2)
    stats = stats_ptr + b * 7 * N + offs_n
    row_max = tl.load(stats, mask=n_mask, other=0.0)
    inverse_total = tl.load(stats + N, mask=n_mask, other=0.0)
    floored_sum = tl.load(stats + 2 * N, mask=n_mask, other=1.0)
    kept_sum = tl.load(stats + 3 * N, mask=n_mask, other=0.0)
    weight_sum = tl.load(stats + 4 * N, mask=n_mask, other=0.0)
    kept_weight_sum = tl.load(stats + 5 * N, mask=n_mask, other=0.0)
    reference_scale = tl.load(stats + 6 * N, mask=n_mask, other=0.0)
    z = _load_tile(logits_ptr, b, C, N, offs_c, offs_n, c_mask, n_mask, float("-inf"), IS_FP64)
    p = _exp(z - row_max[None, :]) * inverse_total[None, :]
    kept = c_mask[:, None] & (p >= floor)
    target = _floor(_load_tile(target_ptr, b, C, N, offs_c, offs_n, c_mask, n_mask, 0.0, IS_FP64), floor)
    reference = target * reference_scale[None, :]
    ratio = reference * floored_sum[None, :] / _floor(p, floor)
    weight = tl.where(kept & (ratio >= ratio_min) & (ratio <= ratio_max), reference, 0.0)
    # the gradient of sum_c w_c (-log Phi_c) is -w_c m_c + p_c U + W p_c (m_c - T) / S
    coefficient = tl.load(grad_sums_ptr + b)
    kept_float = tl.where(kept, 1.0, 0.0)
    scaled_weight_sum = (weight_sum / floored_sum)[None, :]
    grad = p * (kept_weight_sum[None, :] + scaled_weight_sum * (kept_float - kept_sum[None, :])) - weight
    _store_tile(grad_ptr, coefficient * grad, b, C, N, offs_c, offs_n, c_mask, n_mask)


def _blocks(logits):
    """(BLOCK_C, BLOCK_N, number of blocks per image, IS_FP64: whether to accumulate in float64) for
    (B, C, N) logits."""
    _, C, N = logits.shape
    block_c = triton.next_power_of_2(C)
    block_n = max(16, min(128, _ELEMENTS_PER_PROGRAM // block_c))
    return block_c, block_n, triton.cdiv(N, block_n), accumulation_dtype(logits.dtype) == torch.float64


@functools.lru_cache(maxsize=64)
def _params(device, dtype, floor, ratio_min, ratio_max):
    """[floor, ratio_min, ratio_max] as a tensor of the accumulation dtype: Triton would round
    float arguments to float32, which is not exact for float64 logits."""
    return torch.tensor([floor, ratio_min, ratio_max], dtype=dtype, device=device)


def _params_for(logits, floor, ratio_min=0.0, ratio_max=0.0):
    return _params(logits.device, accumulation_dtype(logits.dtype), float(floor), float(ratio_min), float(ratio_max))


def seed_nll_forward(logits, seeds, label_offset, floor):
    """(sums, counts, stats): (B, 2), (B, 2) and (B, 4, N); see the contract."""
    with launch_device(logits):
        B, C, N = logits.shape
        block_c, block_n, num_blocks, is_fp64 = _blocks(logits)
        acc = accumulation_dtype(logits.dtype)
        sums = torch.empty((B, num_blocks, 2), dtype=acc, device=logits.device)
        counts = torch.empty((B, num_blocks, 2), dtype=acc, device=logits.device)
        stats = torch.empty((B, 4, N), dtype=acc, device=logits.device)
        _seed_nll_forward_kernel[(num_blocks, B)](logits, seeds, sums, counts, stats, _params_for(logits, floor), C, N,
                                                  num_blocks, int(label_offset), BLOCK_C=block_c, BLOCK_N=block_n,
                                                  IS_FP64=is_fp64)
    return sums.sum(1), counts.sum(1), stats


def seed_nll_backward(grad_sums, logits, seeds, stats, label_offset, floor):
    """Gradient of the sums with respect to the logits, the logits' shape and dtype."""
    with launch_device(logits):
        B, C, N = logits.shape
        block_c, block_n, num_blocks, is_fp64 = _blocks(logits)
        grad = torch.empty_like(logits)
        grad_sums = grad_sums.to(accumulation_dtype(logits.dtype)).contiguous()
        _seed_nll_backward_kernel[(num_blocks, B)](grad_sums, logits, seeds, stats, grad, _params_for(logits, floor), C,
                                                   N, int(label_offset), BLOCK_C=block_c, BLOCK_N=block_n,
                                                   IS_FP64=is_fp64)
    return grad


def boundary_kl_forward(logits, target, floor, ratio_min, ratio_max):
    """(sums (B,), stats (B, 7, N)): per-image sums of sum_c R log clip(R / Phi); see the contract."""
    with launch_device(logits):
        B, C, N = logits.shape
        block_c, block_n, num_blocks, is_fp64 = _blocks(logits)
        acc = accumulation_dtype(logits.dtype)
        sums = torch.empty((B, num_blocks), dtype=acc, device=logits.device)
        stats = torch.empty((B, 7, N), dtype=acc, device=logits.device)
        _boundary_kl_forward_kernel[(num_blocks, B)](logits, target, sums, stats,
                                                     _params_for(logits, floor, ratio_min, ratio_max), C, N, num_blocks,
                                                     BLOCK_C=block_c, BLOCK_N=block_n, IS_FP64=is_fp64)
    return sums.sum(1), stats


def boundary_kl_backward(grad_sums, logits, target, stats, floor, ratio_min, ratio_max):
    """Gradient of the per-image KL sums with respect to the logits."""
    with launch_device(logits):
        B, C, N = logits.shape
        block_c, block_n, num_blocks, is_fp64 = _blocks(logits)
        grad = torch.empty_like(logits)
        grad_sums = grad_sums.to(accumulation_dtype(logits.dtype)).contiguous()
        _boundary_kl_backward_kernel[(num_blocks, B)](grad_sums, logits, target, stats, grad,
                                                      _params_for(logits, floor, ratio_min, ratio_max), C, N,
                                                      BLOCK_C=block_c, BLOCK_N=block_n, IS_FP64=is_fp64)
    return grad
