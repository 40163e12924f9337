"""Group-sorted layout and tile access shared by the attention kernels.

The launch code sorts each image's positions by saliency group, stably (``group_order``):

    order[b, :n_background]   the non-salient positions (group 0), increasing
    order[b, n_background:]   the salient positions (group 1), increasing

so group g of image b is one contiguous rank range of ``order[b]``. Kernels walk ranks and gather
(load) or scatter (store) the positions ``order[b, rank]``: every "sum over j in g" of docs/design.md §2.1
is a loop over one rank range, and no work is spent on masked-out pairs of the other group.

All (channels, N) matrices are row-major per image: element (c, n) of image b at (b * channels + c) * N + n.
Offsets are formed in int64 so that B * C * N may exceed 2**31.
"""
import torch
import triton
import triton.language as tl


def group_order(saliency_mask):
    """(order, background_size) of a (B, N) bool mask: order (B, N) int32 positions sorted by group
    (non-salient first, each group increasing), background_size (B,) int32 = number of non-salient."""
    order = torch.argsort(saliency_mask.to(torch.uint8), dim=1, stable=True).to(torch.int32)
    background_size = (~saliency_mask).sum(dim=1, dtype=torch.int32)
    return order.contiguous(), background_size


@triton.jit
def group_range(background_size_ptr, b, g, N):
    """Rank range [start, end) of group g (0 or 1) of image b."""
    n_background = tl.load(background_size_ptr + b)
    start = tl.where(g == 0, 0, n_background)
    end = tl.where(g == 0, n_background, N)
    return start, end


@triton.jit
def row_tile(background_size_ptr, b, tile, N, BLOCK: tl.constexpr):
    """(g, tile_start) of row tile ``tile`` of image b: its ranks are tile_start + [0, BLOCK), clipped to
    the end of group g (group_range).

    Tiles never straddle the two groups: the first cdiv(n_background, BLOCK) tiles cover group 0 and the
    following ones group 1, so cdiv(N, BLOCK) + 1 tiles per image cover both (the last may be empty).
    """
    n_background = tl.load(background_size_ptr + b)
    background_tiles = tl.cdiv(n_background, BLOCK)
    in_background = tile < background_tiles
    g = tl.where(in_background, 0, 1)
    tile_start = tl.where(in_background, tile * BLOCK, n_background + (tile - background_tiles) * BLOCK)
    return g, tile_start


@triton.jit
def group_channel_tile(background_size_ptr, Ck, C, N, BLOCK_CK: tl.constexpr, BLOCK_C: tl.constexpr):
    """The share of a program of a kernel that sums a (Ck, C) tile over one group's positions, on the grid
    (cdiv(Ck, BLOCK_CK), cdiv(C, BLOCK_C), 2 B): (tile_ck, tile_c, image b as int64, group g, the rank
    range [start, end) of g, the channels ck (BLOCK_CK,) and c (BLOCK_C,), ck_valid, c_valid)."""
    tile_ck, tile_c, image_group = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, g = image_group // 2, image_group % 2
    start, end = group_range(background_size_ptr, b, g, N)
    ck = tile_ck * BLOCK_CK + tl.arange(0, BLOCK_CK)
    c = tile_c * BLOCK_C + tl.arange(0, BLOCK_C)
    return tile_ck, tile_c, b.to(tl.int64), g, start, end, ck, c, ck < Ck, c < C


@triton.jit
def group_attends(g, BG_MEAN: tl.constexpr):
    """Whether the rows of group g attend (weights over their group): all rows, or with BG_MEAN (background
    rows take the plain mean of the background) only the salient group's."""
    attend = g >= 0
    if BG_MEAN:
        attend = g == 1
    return attend


@triton.jit
def row_tile_positions(order_image_ptr, background_size_ptr, b, tile, N, BLOCK: tl.constexpr):
    """Row tile ``tile`` of image b (see row_tile): (g, tile_start, start, end, is_row, positions), with
    [start, end) the rank range of group g, is_row (BLOCK,) the ranks of the tile inside it and positions
    (BLOCK,) their positions (0 where not is_row). order_image_ptr points at order[b]."""
    g, tile_start = row_tile(background_size_ptr, b, tile, N, BLOCK)
    start, end = group_range(background_size_ptr, b, g, N)
    ranks = tile_start + tl.arange(0, BLOCK)
    is_row = ranks < end
    positions = tl.load(order_image_ptr + ranks, mask=is_row, other=0)
    return g, tile_start, start, end, is_row, positions


@triton.jit
def load_tile(base_ptr, channels, positions, channel_mask, position_mask, N):
    """(len(channels), len(positions)) tile of a (channels, N) matrix at base_ptr, 0 where masked."""
    offsets = channels.to(tl.int64)[:, None] * N + positions[None, :]
    return tl.load(base_ptr + offsets, mask=channel_mask[:, None] & position_mask[None, :], other=0)


@triton.jit
def load_tile_transposed(base_ptr, channels, positions, channel_mask, position_mask, N):
    """(len(positions), len(channels)) tile of a (channels, N) matrix at base_ptr, 0 where masked: the
    transpose of load_tile's, loaded in that layout."""
    offsets = channels.to(tl.int64)[None, :] * N + positions[:, None]
    return tl.load(base_ptr + offsets, mask=position_mask[:, None] & channel_mask[None, :], other=0)


@triton.jit
def store_tile(base_ptr, values, channels, positions, channel_mask, position_mask, N):
    """Store a (len(channels), len(positions)) tile into a (channels, N) matrix at base_ptr."""
    offsets = channels.to(tl.int64)[:, None] * N + positions[None, :]
    tl.store(base_ptr + offsets, values.to(base_ptr.dtype.element_ty),
             mask=channel_mask[:, None] & position_mask[None, :])
