"""Backward kernels of the saliency-guided attention (docs/design.md §2.1), O(N Ck C), nothing quadratic.

Derived from the centred forward of attention_forward.py (ctx_i = xbar_g + (s Atilde_g^T K_i - eps xbar_g)
/ den_i). With g_i = dL/dE_i, per row i of an attending group g:
    H_i = Atilde_g g_i  (Ck)             t~_i = g_i . (ctx_i - xbar_g) = (s K_i . H_i - eps g_i . xbar_g) / den_i
    t_i = g_i . ctx_i = g_i . xbar_g + t~_i                                   d gamma = sum_i t_i
    key_coef_i = gamma s / den_i         dden_i = -gamma t~_i / den_i         dm_i = -n_g dden_i
    x_coef_i = gamma (1 - eps / den_i) / n_g
    dK_i = key_coef_i H_i + s dden_i q_g + s dm_i Q_{a(i)}      (a(i) = argmin column, when m_i is a real entry)
and per group, through Atilde_g = sum_j Q_j (X_j - xbar_g)^T and xbar_g = x_g / n_g:
    dAtilde_g = sum_i key_coef_i K_i g_i^T      dq_g = s sum_i K_i dden_i      dx_g = sum_i x_coef_i g_i
    dQ_j = dAtilde_g (X_j - xbar_g) + dq_g + s sum_{i : a(i) = j} K_i dm_i
    dX_j = g_j + dAtilde_g^T (Q_j - q_g / n_g) + dx_g                          (j in g)
Background rows under bg_mean (ctx_i = x_g / (n_g + eps)): t_i = g_i . x_g / (n_g + eps), dK_i = 0,
key_coef_i = dden_i = 0 and x_coef_i = gamma / (n_g + eps). A row alone in its group with a real m_i = P_ii
has ctx_i = 0 identically (attention_forward.output_kernel): all its terms are 0.

Kernels, in launch order:
    row_grads_kernel        t, key_coef, dden, x_coef, dm (B, N) and grad_key       one row tile per program
    group_grad_sums_kernel  dAtilde (B, 2, Ck, C), dq (B, 2, Ck), dx (B, 2, C)
    argmin_scatter_kernel   s K_i dm_i added at column a(i) (shift only; atomic adds, see its docstring)
    grad_query_kernel       grad_query
    grad_x_kernel           grad_x
d gamma = sum_i t_i is reduced by the launch code. Dtype conventions as in attention_forward.py.
"""
import triton
import triton.language as tl

from sgan.kernels.attention_forward import EPS, GAMMA, SCALE, group_sums_autotune
from sgan.kernels.attention_layout import (group_attends, group_channel_tile, load_tile, load_tile_transposed,
                                           row_tile_positions, store_tile)
from sgan.kernels.autotuning import clamp_blocks_to_sizes, configs


@triton.autotune(
    configs=configs([dict(BLOCK_I=16, BLOCK_C=32, num_warps=4, num_stages=3),
                     dict(BLOCK_I=32, BLOCK_C=32, num_warps=8, num_stages=3),
                     dict(BLOCK_I=16, BLOCK_C=64, num_warps=8, num_stages=3),
                     dict(BLOCK_I=64, BLOCK_C=16, num_warps=8, num_stages=3)],
                    dict(BLOCK_I=32, BLOCK_C=16)),
    key=["C", "Ck"],
    prune_configs_by={"early_config_prune": clamp_blocks_to_sizes({"BLOCK_C": "C"})})
@triton.jit(do_not_specialize=["N"])
def row_grads_kernel(grad_out_ptr, key_ptr, query_ptr, order_ptr, background_size_ptr, scalars_ptr,
                     A_ptr, q_sum_ptr, x_sum_ptr, count_ptr, row_min_ptr, argmin_ptr,
                     row_dot_ptr, key_coef_ptr, grad_den_ptr, x_coef_ptr, grad_min_ptr, grad_key_ptr,
                     C, Ck, N,
                     BG_MEAN: tl.constexpr, ACC: tl.constexpr, STAT_PRECISION: tl.constexpr,
                     CK_PAD: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per row i: t_i, key_coef_i, dden_i, x_coef_i, dm_i into row_dot, key_coef, grad_den, x_coef,
    grad_min (B, N), and dK_i into grad_key (B, Ck, N).

    A program holds its rows' H_i = Atilde_g g_i for all Ck channels (CK_PAD = Ck rounded up to a power
    of two, at least 16), accumulated over C tiles; K_i . H_i then gives t~_i without forming ctx_i.
    Grid (cdiv(N, BLOCK_I) + 1, B).
    """
    tile, b = tl.program_id(0), tl.program_id(1)
    image = b.to(tl.int64)
    grad_image, order_image = grad_out_ptr + image * C * N, order_ptr + image * N
    key_image, query_image = key_ptr + image * Ck * N, query_ptr + image * Ck * N
    g, tile_start, _, end, is_row, rows = row_tile_positions(order_image, background_size_ptr, b, tile, N, BLOCK_I)
    attend = group_attends(g, BG_MEAN)
    stats = image * 2 + g
    gamma, scale, eps = tl.load(scalars_ptr + GAMMA), tl.load(scalars_ptr + SCALE), tl.load(scalars_ptr + EPS)
    k = tl.arange(0, CK_PAD)
    k_valid = k < Ck
    n_group = tl.load(count_ptr + stats)
    q_group = tl.load(q_sum_ptr + stats * Ck + k, mask=k_valid, other=0)  # q_g (CK_PAD,)
    row_min = tl.load(row_min_ptr + image * N + rows, mask=is_row, other=0)  # m_i (BLOCK_I,)
    keys = load_tile(key_image, k, rows, k_valid, is_row, N).to(ACC)  # (CK_PAD, BLOCK_I)

    H = tl.zeros((CK_PAD, BLOCK_I), ACC)  # H_i = Atilde_g g_i
    grad_dot_mean = tl.zeros((BLOCK_I,), ACC)  # g_i . xbar_g
    c_end = tl.where(tile_start < end, C, 0)
    for c0 in range(0, c_end, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_valid = c < C
        grads = load_tile(grad_image, c, rows, c_valid, is_row, N).to(ACC)  # (BLOCK_C, BLOCK_I)
        x_mean = tl.load(x_sum_ptr + stats * C + c, mask=c_valid, other=0) / tl.maximum(n_group, 1.0)
        grad_dot_mean += tl.sum(grads * x_mean[:, None], axis=0)
        if attend:
            A_tile = load_tile(A_ptr + stats * Ck * C, k, c, k_valid, c_valid, C)  # (CK_PAD, BLOCK_C)
            A_centred = A_tile - q_group[:, None] * x_mean[None, :]
            H += tl.dot(A_centred, grads, input_precision=STAT_PRECISION)

    argmin = tl.load(argmin_ptr + image * N + rows, mask=is_row, other=-1)
    has_min_column = argmin >= 0
    weightless = tl.where(n_group == 1, has_min_column, False)
    den = scale * tl.sum(keys * q_group[:, None], axis=0) - row_min * n_group + eps
    centred_dot = (scale * tl.sum(keys * H, axis=0) - eps * grad_dot_mean) / den  # t~_i
    mean_row_dot = grad_dot_mean * n_group / (n_group + eps)  # g_i . x_g / (n_g + eps)
    row_dot = tl.where(attend, tl.where(weightless, 0.0, grad_dot_mean + centred_dot), mean_row_dot)
    uses_weights = tl.where(attend, weightless == 0, False)
    key_coef = tl.where(uses_weights, gamma * scale / den, 0.0)
    grad_den = tl.where(uses_weights, -gamma * centred_dot / den, 0.0)
    grad_min = -n_group * grad_den
    x_coef = tl.where(attend, tl.where(weightless, 0.0, gamma * (1 - eps / den) / tl.maximum(n_group, 1.0)), gamma / (n_group + eps))

    query_at_min = load_tile(query_image, k, argmin, k_valid, has_min_column, N).to(ACC)  # Q_{a(i)} (CK_PAD, BLOCK_I)
    min_term = tl.where(has_min_column[None, :], grad_min[None, :] * query_at_min, 0.0)
    grad_key = key_coef[None, :] * H + scale * (grad_den[None, :] * q_group[:, None] + min_term)
    store_tile(grad_key_ptr + image * Ck * N, grad_key, k, rows, k_valid, is_row, N)
    row_offsets = image * N + rows
    tl.store(row_dot_ptr + row_offsets, row_dot, mask=is_row)
    tl.store(key_coef_ptr + row_offsets, key_coef, mask=is_row)
    tl.store(grad_den_ptr + row_offsets, grad_den, mask=is_row)
    tl.store(x_coef_ptr + row_offsets, x_coef, mask=is_row)
    tl.store(grad_min_ptr + row_offsets, grad_min, mask=is_row)


@group_sums_autotune()
@triton.jit(do_not_specialize=["N"])
def group_grad_sums_kernel(grad_out_ptr, key_ptr, order_ptr, background_size_ptr, scalars_ptr,
                           key_coef_ptr, grad_den_ptr, x_coef_ptr,
                           grad_A_ptr, grad_q_ptr, grad_x_sum_ptr,
                           C, Ck, N,
                           BG_MEAN: tl.constexpr, ACC: tl.constexpr, STAT_PRECISION: tl.constexpr,
                           BLOCK_CK: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """dAtilde (B, 2, Ck, C), dq (B, 2, Ck), dx (B, 2, C): sums over the rows of each group.

    Grid (cdiv(Ck, BLOCK_CK), cdiv(C, BLOCK_C), 2 B) with the ownership of group_sums_kernel. A background
    group under BG_MEAN only has dx, computed by its first Ck tile with its key tiles loading as zeros;
    its other programs write zeros without reading anything.
    """
    tile_ck, tile_c, image, g, start, end, ck, c, ck_valid, c_valid = group_channel_tile(
        background_size_ptr, Ck, C, N, BLOCK_CK, BLOCK_C)
    attend = group_attends(g, BG_MEAN)
    grad_image, key_image, order_image = grad_out_ptr + image * C * N, key_ptr + image * Ck * N, order_ptr + image * N

    grad_A_transposed = tl.zeros((BLOCK_C, BLOCK_CK), ACC)
    grad_q = tl.zeros((BLOCK_CK,), ACC)
    grad_x = tl.zeros((BLOCK_C,), ACC)
    rank_end = tl.where(attend | (tile_ck == 0), end, start)
    for rank0 in range(start, rank_end, BLOCK_N):
        ranks = rank0 + tl.arange(0, BLOCK_N)
        in_group = ranks < end
        positions = tl.load(order_image + ranks, mask=in_group, other=0)
        row_offsets = image * N + positions
        key_coef = tl.load(key_coef_ptr + row_offsets, mask=in_group, other=0)
        grad_den = tl.load(grad_den_ptr + row_offsets, mask=in_group, other=0)
        x_coef = tl.load(x_coef_ptr + row_offsets, mask=in_group, other=0)
        grads = load_tile(grad_image, c, positions, c_valid, in_group, N).to(ACC)  # (BLOCK_C, BLOCK_N)
        keys = load_tile(key_image, ck, positions, tl.where(attend, ck_valid, False), in_group, N).to(ACC)
        grad_A_transposed += tl.dot(grads * key_coef[None, :], tl.trans(keys), input_precision=STAT_PRECISION)
        grad_q += tl.sum(keys * grad_den[None, :], axis=1)
        grad_x += tl.sum(grads * x_coef[None, :], axis=1)

    stats = image * 2 + g
    scale = tl.load(scalars_ptr + SCALE)
    A_offsets = stats * Ck * C + ck.to(tl.int64)[None, :] * C + c[:, None]
    tl.store(grad_A_ptr + A_offsets, grad_A_transposed, mask=c_valid[:, None] & ck_valid[None, :])
    tl.store(grad_q_ptr + stats * Ck + ck, scale * grad_q, mask=tl.where(tile_c == 0, ck_valid, False))
    tl.store(grad_x_sum_ptr + stats * C + c, grad_x, mask=tl.where(tile_ck == 0, c_valid, False))


@triton.jit(do_not_specialize=["N"])
def argmin_scatter_kernel(key_ptr, argmin_ptr, grad_min_ptr, scalars_ptr, grad_query_min_ptr,
                          Ck, N,
                          ACC: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_CK: tl.constexpr):
    """grad_query_min (B, Ck, N) += s K_i dm_i at column a(i), for every row whose m_i is a real entry.

    Several rows can share one argmin column, so the adds are atomic into a zeroed ACC buffer: the
    result is exact up to the order of those few additions (the last bits may vary run to run).
    Not autotuned (re-running it would add twice). Grid (cdiv(N, BLOCK_I), cdiv(Ck, BLOCK_CK), B).
    """
    tile, tile_ck, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    image = b.to(tl.int64)
    rows = tile * BLOCK_I + tl.arange(0, BLOCK_I)
    argmin = tl.load(argmin_ptr + image * N + rows, mask=rows < N, other=-1)
    has_min_column = argmin >= 0
    grad_min = tl.load(grad_min_ptr + image * N + rows, mask=has_min_column, other=0)
    ck = tile_ck * BLOCK_CK + tl.arange(0, BLOCK_CK)
    ck_valid = ck < Ck
    keys = load_tile(key_ptr + image * Ck * N, ck, rows, ck_valid, has_min_column, N).to(ACC)  # (BLOCK_CK, BLOCK_I)
    scale = tl.load(scalars_ptr + SCALE)
    offsets = image * Ck * N + ck.to(tl.int64)[:, None] * N + argmin[None, :]
    tl.atomic_add(grad_query_min_ptr + offsets, scale * keys * grad_min[None, :],
                  mask=ck_valid[:, None] & has_min_column[None, :], sem="relaxed")


@triton.autotune(
    configs=configs([dict(BLOCK_J=64, BLOCK_CK=64, BLOCK_C=32, num_warps=4, num_stages=3),
                     dict(BLOCK_J=128, BLOCK_CK=64, BLOCK_C=32, num_warps=8, num_stages=3),
                     dict(BLOCK_J=64, BLOCK_CK=128, BLOCK_C=32, num_warps=8, num_stages=3),
                     dict(BLOCK_J=128, BLOCK_CK=128, BLOCK_C=32, num_warps=8, num_stages=3)],
                    dict(BLOCK_J=32, BLOCK_CK=16, BLOCK_C=16)),
    key=["C", "Ck"],
    prune_configs_by={"early_config_prune": clamp_blocks_to_sizes({"BLOCK_CK": "Ck", "BLOCK_C": "C"})})
@triton.jit(do_not_specialize=["N"])
def grad_query_kernel(x_ptr, order_ptr, background_size_ptr, x_sum_ptr, count_ptr, grad_A_ptr, grad_q_ptr,
                      grad_query_min_ptr, grad_query_ptr,
                      C, Ck, N,
                      BG_MEAN: tl.constexpr, HAS_MIN_GRAD: tl.constexpr, ACC: tl.constexpr,
                      STAT_PRECISION: tl.constexpr,
                      BLOCK_J: tl.constexpr, BLOCK_CK: tl.constexpr, BLOCK_C: tl.constexpr):
    """grad_query (B, Ck, N): dQ_j = dAtilde_g (X_j - xbar_g) + dq_g (+ grad_query_min_j when HAS_MIN_GRAD).

    Background columns under BG_MEAN get only the argmin part (zero there). Grid (cdiv(N, BLOCK_J) + 1,
    cdiv(Ck, BLOCK_CK), B).
    """
    tile, tile_ck, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    image = b.to(tl.int64)
    x_image, order_image = x_ptr + image * C * N, order_ptr + image * N
    g, tile_start, _, end, is_column, columns = row_tile_positions(order_image, background_size_ptr, b, tile, N,
                                                                   BLOCK_J)
    attend = group_attends(g, BG_MEAN)
    stats = image * 2 + g
    ck = tile_ck * BLOCK_CK + tl.arange(0, BLOCK_CK)
    ck_valid = ck < Ck
    n_group = tl.maximum(tl.load(count_ptr + stats), 1.0)

    grad_query = tl.zeros((BLOCK_CK, BLOCK_J), ACC)
    c_end = tl.where(attend & (tile_start < end), C, 0)
    for c0 in range(0, c_end, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_valid = c < C
        grad_A = load_tile(grad_A_ptr + stats * Ck * C, ck, c, ck_valid, c_valid, C)  # (BLOCK_CK, BLOCK_C)
        x_mean = tl.load(x_sum_ptr + stats * C + c, mask=c_valid, other=0) / n_group
        values = load_tile(x_image, c, columns, c_valid, is_column, N).to(ACC)  # (BLOCK_C, BLOCK_J)
        grad_query += tl.dot(grad_A, values - x_mean[:, None], input_precision=STAT_PRECISION)
    grad_query += tl.load(grad_q_ptr + stats * Ck + ck, mask=ck_valid, other=0)[:, None]
    if HAS_MIN_GRAD:
        grad_query += load_tile(grad_query_min_ptr + image * Ck * N, ck, columns, ck_valid, is_column, N)
    store_tile(grad_query_ptr + image * Ck * N, grad_query, ck, columns, ck_valid, is_column, N)


@triton.autotune(
    configs=configs([dict(BLOCK_J=64, BLOCK_C=64, BLOCK_K=32, num_warps=4, num_stages=3),
                     dict(BLOCK_J=128, BLOCK_C=64, BLOCK_K=32, num_warps=8, num_stages=3),
                     dict(BLOCK_J=64, BLOCK_C=128, BLOCK_K=32, num_warps=8, num_stages=3),
                     dict(BLOCK_J=128, BLOCK_C=128, BLOCK_K=32, num_warps=8, num_stages=3)],
                    dict(BLOCK_J=32, BLOCK_C=16, BLOCK_K=16)),
    key=["C", "Ck"],
    prune_configs_by={"early_config_prune": clamp_blocks_to_sizes({"BLOCK_C": "C", "BLOCK_K": "Ck"})})
@triton.jit(do_not_specialize=["N"])
def grad_x_kernel(grad_out_ptr, query_ptr, order_ptr, background_size_ptr, q_sum_ptr, count_ptr, grad_A_ptr,
                  grad_x_sum_ptr, grad_x_ptr,
                  C, Ck, N,
                  BG_MEAN: tl.constexpr, ACC: tl.constexpr, STAT_PRECISION: tl.constexpr,
                  BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    """grad_x (B, C, N): dX_j = g_j + dAtilde_g^T (Q_j - q_g / n_g) + dx_g for j in g (background columns
    under BG_MEAN: g_j + dx_g). Grid (cdiv(N, BLOCK_J) + 1, cdiv(C, BLOCK_C), B)."""
    tile, tile_c, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    image = b.to(tl.int64)
    query_image, order_image = query_ptr + image * Ck * N, order_ptr + image * N
    g, tile_start, _, end, is_column, columns = row_tile_positions(order_image, background_size_ptr, b, tile, N,
                                                                   BLOCK_J)
    attend = group_attends(g, BG_MEAN)
    stats = image * 2 + g
    c = tile_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_valid = c < C
    n_group = tl.maximum(tl.load(count_ptr + stats), 1.0)

    grad_x = load_tile(grad_out_ptr + image * C * N, c, columns, c_valid, is_column, N).to(ACC)
    grad_x += tl.load(grad_x_sum_ptr + stats * C + c, mask=c_valid, other=0)[:, None]
    k_end = tl.where(attend & (tile_start < end), Ck, 0)
    for k0 in range(0, k_end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_valid = k < Ck
        grad_A_transposed = load_tile_transposed(grad_A_ptr + stats * Ck * C, k, c, k_valid, c_valid, C)  # (BLOCK_C, BLOCK_K)
        q_mean = tl.load(q_sum_ptr + stats * Ck + k, mask=k_valid, other=0) / n_group
        queries = load_tile(query_image, k, columns, k_valid, is_column, N).to(ACC)  # (BLOCK_K, BLOCK_J)
        grad_x += tl.dot(grad_A_transposed, queries - q_mean[:, None], input_precision=STAT_PRECISION)
    store_tile(grad_x_ptr + image * C * N, grad_x, c, columns, c_valid, is_column, N)
