"""Forward kernels of the saliency-guided attention (docs/design.md §2.1), factorised per saliency group.

Notation (per image b; g = 0 non-salient, 1 salient; s = scale; i a row, j a column, both positions):
    A_g = sum_{j in g} Q_j X_j^T  (Ck, C)     q_g = sum_{j in g} Q_j     x_g = sum_{j in g} X_j     n_g = |g|
    m_i = min_j Z_ij (the shift; 0 without it)     den_i = s K_i . q_g - m_i n_g + eps
    ctx_i = (s K_i^T A_g - m_i x_g) / den_i      (i in g)               E_i = gamma ctx_i + X_i
The kernels evaluate ctx_i in the equivalent centred form around the group mean xbar_g = x_g / n_g,
    Atilde_g = A_g - q_g xbar_g^T = sum_{j in g} Q_j (X_j - xbar_g)^T,
    ctx_i = xbar_g + (s Atilde_g^T K_i - eps xbar_g) / den_i,
which keeps the small differences ctx_i - xbar_g (and the gradients of nearly saturated rows) free of
cancellation: for a group of one position Atilde_g is exactly 0. (The C++/CUDA backend does the same.)

Three kernels, all reading the group-sorted layout of attention_layout.py:
    group_sums_kernel   A_g, q_g, x_g (n_g from the layout) O(N Ck C)
    row_min_kernel      m_i and its column (shift only)     O(n_g^2 Ck), streamed, nothing N x N stored
    output_kernel       E                                   O(N Ck C)

Dtypes: ACC is float64 for float64 inputs, else float32; statistics and accumulators are ACC. Dots of two
inputs (Q X^T, K^T Q) run in the input dtype with ACC accumulation, "ieee" so float32 never drops to TF32;
dots with a statistic (K^T A_g) run in ACC at STAT_PRECISION: "ieee" for float32/float64 inputs, "tf32"
for bfloat16/float16 inputs (whose K is exact in TF32; A_g keeps float32's range).
Scalars (gamma, scale, eps) are read from an ACC tensor so float64 keeps full precision.
"""
import triton
import triton.language as tl

from sgan.kernels.attention_layout import (group_attends, group_channel_tile, load_tile, load_tile_transposed,
                                           row_tile_positions, store_tile)
from sgan.kernels.autotuning import clamp_blocks_to_sizes, configs

GAMMA, SCALE, EPS = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)  # positions in the scalars tensor


def group_sums_autotune():
    """The autotuner of the kernels that sum a (Ck, C) tile over a group's positions (group_sums_kernel
    here, group_grad_sums_kernel in the backward): one tiling for both, a fresh config list for each."""
    return triton.autotune(
        configs=configs([dict(BLOCK_CK=64, BLOCK_C=64, BLOCK_N=32, num_warps=4, num_stages=3),
                         dict(BLOCK_CK=64, BLOCK_C=128, BLOCK_N=32, num_warps=8, num_stages=3),
                         dict(BLOCK_CK=128, BLOCK_C=128, BLOCK_N=32, num_warps=8, num_stages=3),
                         dict(BLOCK_CK=32, BLOCK_C=64, BLOCK_N=64, num_warps=4, num_stages=3)],
                        dict(BLOCK_CK=16, BLOCK_C=16, BLOCK_N=32)),
        key=["C", "Ck"],
        prune_configs_by={"early_config_prune": clamp_blocks_to_sizes({"BLOCK_CK": "Ck", "BLOCK_C": "C"})})


@group_sums_autotune()
@triton.jit(do_not_specialize=["N"])
def group_sums_kernel(x_ptr, query_ptr, order_ptr, background_size_ptr,
                      A_ptr, q_sum_ptr, x_sum_ptr,
                      C, Ck, N,
                      BG_MEAN: tl.constexpr, ACC: tl.constexpr,
                      BLOCK_CK: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """A (B, 2, Ck, C), q_sum (B, 2, Ck), x_sum (B, 2, C) from x (B, C, N), query (B, Ck, N).

    Grid (cdiv(Ck, BLOCK_CK), cdiv(C, BLOCK_C), 2 B): program (., ., 2 b + g) owns one tile of A[b, g] and
    walks all of group g, so the sum over positions is deterministic and needs no atomics. q_sum is
    written by the programs of the first C tile, x_sum by those of the first Ck tile. (n_g is known
    from the layout: the launch code forms count.) A group whose rows do not attend (the background
    under BG_MEAN) gets A = 0: nothing reads it.
    """
    tile_ck, tile_c, image, g, start, end, ck, c, ck_valid, c_valid = group_channel_tile(
        background_size_ptr, Ck, C, N, BLOCK_CK, BLOCK_C)
    x_image, query_image, order_image = x_ptr + image * C * N, query_ptr + image * Ck * N, order_ptr + image * N
    attend = group_attends(g, BG_MEAN)

    A_tile = tl.zeros((BLOCK_CK, BLOCK_C), ACC)
    q_total = tl.zeros((BLOCK_CK,), ACC)
    x_total = tl.zeros((BLOCK_C,), ACC)
    for rank0 in range(start, end, BLOCK_N):
        ranks = rank0 + tl.arange(0, BLOCK_N)
        in_group = ranks < end
        positions = tl.load(order_image + ranks, mask=in_group, other=0)
        queries = load_tile(query_image, ck, positions, ck_valid, in_group, N)  # (BLOCK_CK, BLOCK_N)
        values = load_tile(x_image, c, positions, c_valid, in_group, N)  # (BLOCK_C, BLOCK_N)
        if attend:
            A_tile += tl.dot(queries, tl.trans(values), input_precision="ieee")
        q_total += tl.sum(queries.to(ACC), axis=1)
        x_total += tl.sum(values.to(ACC), axis=1)

    stats = image * 2 + g
    store_tile(A_ptr + stats * Ck * C, A_tile, ck, c, ck_valid, c_valid, C)
    tl.store(q_sum_ptr + stats * Ck + ck, q_total, mask=tl.where(tile_c == 0, ck_valid, False))
    tl.store(x_sum_ptr + stats * C + c, x_total, mask=tl.where(tile_ck == 0, c_valid, False))


@triton.autotune(
    configs=configs([dict(BLOCK_I=64, BLOCK_J=64, BLOCK_K=32, num_warps=4, num_stages=3),
                     dict(BLOCK_I=128, BLOCK_J=64, BLOCK_K=32, num_warps=8, num_stages=3),
                     dict(BLOCK_I=64, BLOCK_J=128, BLOCK_K=32, num_warps=8, num_stages=3),
                     dict(BLOCK_I=128, BLOCK_J=128, BLOCK_K=64, num_warps=8, num_stages=2)],
                    dict(BLOCK_I=64, BLOCK_J=64, BLOCK_K=16)),
    key=["Ck"],
    prune_configs_by={"early_config_prune": clamp_blocks_to_sizes({"BLOCK_K": "Ck"})})
@triton.jit(do_not_specialize=["N"])
def row_min_kernel(key_ptr, query_ptr, order_ptr, background_size_ptr, scalars_ptr,
                   row_min_ptr, argmin_ptr,
                   Ck, N,
                   BG_MEAN: tl.constexpr, ACC: tl.constexpr,
                   BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr):
    """row_min (B, N) = m_i and argmin (B, N) = its column, for the rows that need the shift.

    For row i of group g, a running minimum (and its column) of P_ij = s K_i . Q_j over the columns j of g,
    one (BLOCK_I, BLOCK_J) score tile at a time; no tile is ever stored. Columns of the other group hold
    Z_ij = 0, so when that group is non-empty m_i = min(0, running minimum), with argmin -1 where 0 wins
    (a masked zero: no gradient to key or query). With BG_MEAN only salient rows use m_i; background
    rows keep the caller's row_min 0 / argmin -1.
    Grid (cdiv(N, BLOCK_I) + 1, B): row tiles that never straddle the groups (attention_layout.row_tile).
    """
    tile, b = tl.program_id(0), tl.program_id(1)
    image = b.to(tl.int64)
    key_image, query_image, order_image = key_ptr + image * Ck * N, query_ptr + image * Ck * N, order_ptr + image * N
    g, tile_start, start, end, is_row, rows = row_tile_positions(order_image, background_size_ptr, b, tile, N,
                                                                 BLOCK_I)
    needs_min = group_attends(g, BG_MEAN)
    is_row = tl.where(needs_min, is_row, False)
    scale = tl.load(scalars_ptr + SCALE)
    column_end = tl.where(needs_min & (tile_start < end), end, start)  # an empty tile scans nothing
    best = tl.full((BLOCK_I,), float("inf"), ACC)
    best_rank = tl.full((BLOCK_I,), -1, tl.int32)
    for column0 in range(start, column_end, BLOCK_J):
        column_ranks = column0 + tl.arange(0, BLOCK_J)
        is_column = column_ranks < end
        columns = tl.load(order_image + column_ranks, mask=is_column, other=0)
        scores = tl.zeros((BLOCK_I, BLOCK_J), ACC)  # K_i . Q_j
        for k0 in range(0, Ck, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            keys = load_tile(key_image, k, rows, k < Ck, is_row, N)  # (BLOCK_K, BLOCK_I)
            queries = load_tile(query_image, k, columns, k < Ck, is_column, N)  # (BLOCK_K, BLOCK_J)
            scores += tl.dot(tl.trans(keys), queries, input_precision="ieee")
        scores = tl.where(is_column[None, :], scale * scores, float("inf"))
        tile_min, tile_argmin = tl.min(scores, axis=1, return_indices=True)
        better = tile_min < best  # strict: ties keep the earlier column
        best = tl.where(better, tile_min, best)
        best_rank = tl.where(better, column0 + tile_argmin, best_rank)

    other_group_size = N - (end - start)
    zero_wins = tl.where(other_group_size > 0, best >= 0, False)
    row_min = tl.where(zero_wins, 0.0, best).to(ACC)
    best_column = tl.load(order_image + best_rank, mask=is_row & (best_rank >= 0), other=-1)
    argmin = tl.where(zero_wins, -1, best_column)
    tl.store(row_min_ptr + image * N + rows, row_min, mask=is_row)
    tl.store(argmin_ptr + image * N + rows, argmin.to(tl.int64), mask=is_row)


@triton.autotune(
    configs=configs([dict(BLOCK_I=64, BLOCK_C=64, BLOCK_K=32, num_warps=4, num_stages=3),
                     dict(BLOCK_I=64, BLOCK_C=128, BLOCK_K=32, num_warps=8, num_stages=3),
                     dict(BLOCK_I=128, BLOCK_C=64, BLOCK_K=32, num_warps=8, num_stages=3),
                     dict(BLOCK_I=128, BLOCK_C=128, BLOCK_K=32, num_warps=8, num_stages=3)],
                    dict(BLOCK_I=32, BLOCK_C=16, BLOCK_K=16)),
    key=["C", "Ck"],
    prune_configs_by={"early_config_prune": clamp_blocks_to_sizes({"BLOCK_C": "C", "BLOCK_K": "Ck"})})
@triton.jit(do_not_specialize=["N"])
def output_kernel(x_ptr, key_ptr, order_ptr, background_size_ptr, scalars_ptr,
                  A_ptr, q_sum_ptr, x_sum_ptr, count_ptr, row_min_ptr, argmin_ptr,
                  out_ptr,
                  C, Ck, N,
                  BG_MEAN: tl.constexpr, ACC: tl.constexpr, STAT_PRECISION: tl.constexpr,
                  BLOCK_I: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    """out (B, C, N): E_i = gamma ctx_i + X_i for one tile of BLOCK_I rows (one group) x BLOCK_C channels.

    Attending rows use the centred form (module docstring): ctx_i = xbar_g + (s Atilde_g^T K_i - eps xbar_g)
    / den_i, with the tile of Atilde_g = A_g - q_g xbar_g^T formed as it is loaded. Background rows under
    BG_MEAN take ctx_i = x_g / (n_g + eps) (their K loop runs zero times). A row alone in its group whose
    m_i is the real entry P_ii has the single weight P_ii - m_i = 0, so ctx_i = 0 exactly; the factorised
    sums would leave rounding noise divided by eps there.
    Grid (cdiv(N, BLOCK_I) + 1, cdiv(C, BLOCK_C), B).
    """
    tile, tile_c, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    image = b.to(tl.int64)
    x_image, key_image, order_image = x_ptr + image * C * N, key_ptr + image * Ck * N, order_ptr + image * N
    g, tile_start, _, end, is_row, rows = row_tile_positions(order_image, background_size_ptr, b, tile, N, BLOCK_I)
    attend = group_attends(g, BG_MEAN)
    stats = image * 2 + g
    gamma, scale, eps = tl.load(scalars_ptr + GAMMA), tl.load(scalars_ptr + SCALE), tl.load(scalars_ptr + EPS)
    c = tile_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_valid = c < C
    n_group = tl.load(count_ptr + stats)
    x_group = tl.load(x_sum_ptr + stats * C + c, mask=c_valid, other=0)  # x_g (BLOCK_C,)
    x_mean = x_group / tl.maximum(n_group, 1.0)  # xbar_g
    row_min = tl.load(row_min_ptr + image * N + rows, mask=is_row, other=0)  # m_i (BLOCK_I,)

    key_A = tl.zeros((BLOCK_C, BLOCK_I), ACC)  # (Atilde_g^T K_i)_c
    key_q = tl.zeros((BLOCK_I,), ACC)  # K_i . q_g
    k_end = tl.where(attend & (tile_start < end), Ck, 0)
    for k0 in range(0, k_end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_valid = k < Ck
        keys = load_tile(key_image, k, rows, k_valid, is_row, N).to(ACC)  # (BLOCK_K, BLOCK_I)
        q_group = tl.load(q_sum_ptr + stats * Ck + k, mask=k_valid, other=0)
        A_transposed = load_tile_transposed(A_ptr + stats * Ck * C, k, c, k_valid, c_valid, C)  # (BLOCK_C, BLOCK_K)
        A_centred = A_transposed - x_mean[:, None] * q_group[None, :]
        key_A += tl.dot(A_centred, keys, input_precision=STAT_PRECISION)
        key_q += tl.sum(keys * q_group[:, None], axis=0)

    den = scale * key_q - row_min * n_group + eps
    attended = x_mean[:, None] + (scale * key_A - eps * x_mean[:, None]) / den[None, :]
    argmin = tl.load(argmin_ptr + image * N + rows, mask=is_row, other=-1)
    weightless = tl.where(n_group == 1, argmin >= 0, False)
    mean = x_group / (n_group + eps)
    context = tl.where(attend, tl.where(weightless[None, :], 0.0, attended), mean[:, None])
    values = load_tile(x_image, c, rows, c_valid, is_row, N).to(ACC)  # (BLOCK_C, BLOCK_I)
    store_tile(out_ptr + image * C * N, gamma * context + values, c, rows, c_valid, is_row, N)
