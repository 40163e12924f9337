"""Dense PyTorch reference of the saliency-guided attention (docs/design.md §2).

It materialises the N×N weights per image, so it is the definition every fused backend is tested
against, not a path for large inputs. Autograd differentiates it directly; the row minimum's
gradient goes to the selected column, as torch.min(dim) does.
"""
import torch


def attention_weights_reference(key, query, saliency_mask, *, shift, background, scale, eps):
    """D of docs/design.md §2: (B, N, N), D[b, i, j] = weight of column j in row i.

    key, query: (B, Ck, N); saliency_mask: (B, N) bool.
    """
    dtype = key.dtype
    scores = scale * torch.bmm(key.transpose(1, 2), query)  # P_ij = s K_i . Q_j
    same_group = (saliency_mask[:, :, None] == saliency_mask[:, None, :]).to(dtype)  # S_ij
    masked = scores * same_group  # Z_ij
    if shift:
        row_min = masked.min(dim=2, keepdim=True).values  # over all N columns, zeros included
        weights = (masked - row_min) * same_group
    else:
        weights = masked
    weights = weights / (weights.sum(dim=2, keepdim=True) + eps)
    if background == "mean":
        background_cols = (~saliency_mask).to(dtype)  # (B, N)
        n_background = background_cols.sum(dim=1)
        mean_weights = background_cols[:, None, :] / (n_background[:, None, None] + eps)
        weights = torch.where(saliency_mask[:, :, None], weights, mean_weights.expand_as(weights))
    return weights


def saliency_attention_reference(x, key, query, saliency_mask, gamma, *, shift, background, scale, eps):
    """E = gamma * (D X) + X.

    x: (B, C, N); key, query: (B, Ck, N); saliency_mask: (B, N) bool; gamma: 0-dim tensor.
    Returns (B, C, N) in x's dtype.
    """
    weights = attention_weights_reference(
        key, query, saliency_mask, shift=shift, background=background, scale=scale, eps=eps)
    context = torch.bmm(x, weights.transpose(1, 2))  # context[:, :, i] = sum_j D_ij X_j
    return gamma.to(x.dtype) * context + x
