"""Triton backend of the saliency-guided attention (docs/design.md §2), selected by ``backend="triton"``.

The two functions below follow the backend contract in sgan/ops/attention/function.py (shapes,
dtypes, the meaning of every statistic); sgan.ops wires them into autograd as a torch.library custom
op. The algorithm lives in the kernels: attention_forward.py (group sums, streamed row minimum,
output) and attention_backward.py (row terms, group sums of the gradients, argmin scatter, grad_query,
grad_x), over the group-sorted layout of attention_layout.py. Nothing of size N x N is allocated.
"""

import torch
import triton
import triton.language as tl

from sgan.kernels.attention_backward import (argmin_scatter_kernel, grad_query_kernel, grad_x_kernel,
                                             group_grad_sums_kernel, row_grads_kernel)
from sgan.kernels.attention_forward import EPS, GAMMA, SCALE, group_sums_kernel, output_kernel, row_min_kernel
from sgan.kernels.attention_layout import group_order
from sgan.kernels.autotuning import MIN_DOT_SIZE
from sgan.ops.dispatch import accumulation_dtype, launch_device

SCATTER_BLOCK_I, SCATTER_BLOCK_CK = 64, 32  # argmin_scatter_kernel is memory-bound and not autotuned


def _kernel_dtypes(dtype):
    """(torch accumulation dtype, its Triton dtype, precision of dots with a statistic) for inputs of dtype:
    "ieee" for float32 / float64 inputs, "tf32" for bfloat16 / float16 (exact K in TF32, float32 range for A)."""
    acc = accumulation_dtype(dtype)
    acc_tl = tl.float64 if acc == torch.float64 else tl.float32
    return acc, acc_tl, "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def _scalars(gamma, scale, eps, acc):
    """(3,) tensor of acc dtype holding gamma, scale, eps at GAMMA, SCALE, EPS: kernel arguments would round
    floats to float32. Built with device-side fills (assigning a Python float into a CUDA tensor would
    synchronise with the host)."""
    values = [None] * 3
    values[GAMMA.value] = gamma.reshape(()).to(acc)
    values[SCALE.value] = torch.full((), scale, dtype=acc, device=gamma.device)
    values[EPS.value] = torch.full((), eps, dtype=acc, device=gamma.device)
    return torch.stack(values)


def _pass_inputs(x, saliency_mask, gamma, scale, eps):
    """What the forward and the backward pass both start from: (acc, acc_tl, stat_precision) of
    _kernel_dtypes, (order, background_size) of the group-sorted layout and the scalars tensor."""
    acc, acc_tl, stat_precision = _kernel_dtypes(x.dtype)
    order, background_size = group_order(saliency_mask)
    return acc, acc_tl, stat_precision, order, background_size, _scalars(gamma, scale, eps, acc)


def saliency_attention_forward(x, key, query, saliency_mask, gamma, scale, eps, shift, bg_mean):
    """x (B, C, N); key, query (B, Ck, N); saliency_mask (B, N) bool; gamma 0-dim acc.

    Returns (out, A, q_sum, x_sum, count, row_min, argmin) as specified in sgan.ops.attention.function.
    """
    B, C, N = x.shape
    Ck = key.shape[1]
    with launch_device(x):
        acc, acc_tl, stat_precision, order, background_size, scalars = _pass_inputs(
            x, saliency_mask, gamma, scale, eps)

        A = x.new_empty((B, 2, Ck, C), dtype=acc)
        q_sum = x.new_empty((B, 2, Ck), dtype=acc)
        x_sum = x.new_empty((B, 2, C), dtype=acc)
        group_sums_kernel[lambda meta: (triton.cdiv(Ck, meta["BLOCK_CK"]), triton.cdiv(C, meta["BLOCK_C"]), 2 * B)](
            x, query, order, background_size, A, q_sum, x_sum, C, Ck, N, BG_MEAN=bg_mean, ACC=acc_tl)
        count = torch.stack([background_size, N - background_size], dim=1).to(acc)  # n_g

        row_min = x.new_zeros((B, N), dtype=acc)
        argmin = x.new_full((B, N), -1, dtype=torch.int64)
        if shift:
            row_min_kernel[lambda meta: (triton.cdiv(N, meta["BLOCK_I"]) + 1, B)](
                key, query, order, background_size, scalars, row_min, argmin, Ck, N, BG_MEAN=bg_mean, ACC=acc_tl)

        out = torch.empty_like(x)
        output_kernel[lambda meta: (triton.cdiv(N, meta["BLOCK_I"]) + 1, triton.cdiv(C, meta["BLOCK_C"]), B)](
            x, key, order, background_size, scalars, A, q_sum, x_sum, count, row_min, argmin, out, C, Ck, N,
            BG_MEAN=bg_mean, ACC=acc_tl, STAT_PRECISION=stat_precision)
    return out, A, q_sum, x_sum, count, row_min, argmin


def saliency_attention_backward(grad_out, x, key, query, saliency_mask, gamma, A, q_sum, x_sum, count,
                                row_min, argmin, scale, eps, shift, bg_mean):
    """Gradients of saliency_attention_forward's out: (grad_x, grad_key, grad_query, grad_gamma)."""
    B, C, N = x.shape
    Ck = key.shape[1]
    with launch_device(x):
        acc, acc_tl, stat_precision, order, background_size, scalars = _pass_inputs(
            x, saliency_mask, gamma, scale, eps)

        row_dot, key_coef, grad_den, x_coef, grad_min = (x.new_empty((B, N), dtype=acc) for _ in range(5))
        grad_key = torch.empty_like(key)
        row_grads_kernel[lambda meta: (triton.cdiv(N, meta["BLOCK_I"]) + 1, B)](
            grad_out, key, query, order, background_size, scalars, A, q_sum, x_sum, count, row_min, argmin,
            row_dot, key_coef, grad_den, x_coef, grad_min, grad_key, C, Ck, N,
            BG_MEAN=bg_mean, ACC=acc_tl, STAT_PRECISION=stat_precision,
            CK_PAD=max(MIN_DOT_SIZE, triton.next_power_of_2(Ck)))

        grad_A = x.new_empty((B, 2, Ck, C), dtype=acc)  # d Atilde
        grad_q = x.new_empty((B, 2, Ck), dtype=acc)
        grad_x_sum = x.new_empty((B, 2, C), dtype=acc)
        group_grad_sums_kernel[
            lambda meta: (triton.cdiv(Ck, meta["BLOCK_CK"]), triton.cdiv(C, meta["BLOCK_C"]), 2 * B)](
            grad_out, key, order, background_size, scalars, key_coef, grad_den, x_coef, grad_A, grad_q, grad_x_sum,
            C, Ck, N, BG_MEAN=bg_mean, ACC=acc_tl, STAT_PRECISION=stat_precision)

        grad_query_min = None  # the argmin part of grad_query, only with the shift
        if shift:
            grad_query_min = x.new_zeros((B, Ck, N), dtype=acc)
            argmin_scatter_kernel[(triton.cdiv(N, SCATTER_BLOCK_I), triton.cdiv(Ck, SCATTER_BLOCK_CK), B)](
                key, argmin, grad_min, scalars, grad_query_min, Ck, N,
                ACC=acc_tl, BLOCK_I=SCATTER_BLOCK_I, BLOCK_CK=SCATTER_BLOCK_CK)

        grad_query = torch.empty_like(query)
        grad_query_kernel[lambda meta: (triton.cdiv(N, meta["BLOCK_J"]) + 1, triton.cdiv(Ck, meta["BLOCK_CK"]), B)](
            x, order, background_size, x_sum, count, grad_A, grad_q, grad_query_min, grad_query, C, Ck, N,
            BG_MEAN=bg_mean, HAS_MIN_GRAD=shift, ACC=acc_tl, STAT_PRECISION=stat_precision)

        grad_x = torch.empty_like(x)
        grad_x_kernel[lambda meta: (triton.cdiv(N, meta["BLOCK_J"]) + 1, triton.cdiv(C, meta["BLOCK_C"]), B)](
            grad_out, query, order, background_size, q_sum, count, grad_A, grad_x_sum, grad_x, C, Ck, N,
            BG_MEAN=bg_mean, ACC=acc_tl, STAT_PRECISION=stat_precision)

        grad_gamma = row_dot.sum(dtype=torch.float64).to(gamma.dtype).reshape(gamma.shape)  # sum_i g_i . ctx_i
    return grad_x, grad_key, grad_query, grad_gamma
