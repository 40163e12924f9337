"""Public API of the saliency-guided attention: input checks, options, backend dispatch, autograd.

Backend contract (``cpp``/``cuda`` in ``torch.ops.sgan_ext``, ``triton`` in ``sgan.kernels.attention``).
The custom ops ``torch.ops.sgan.fused_saliency_attention_forward/backward`` (autograd, fake tensors for
torch.compile) take the backend's name as their last argument and call its functions below. All
tensors are contiguous and on one device; ``acc`` is float64 for float64 inputs, else float32.

``saliency_attention_forward(x, key, query, saliency_mask, gamma, scale, eps, shift, bg_mean)``
    x (B, C, N); key, query (B, Ck, N), x's dtype; saliency_mask (B, N) bool; gamma 0-dim, acc.
    Returns (out, A, q_sum, x_sum, count, row_min, argmin):
      out (B, C, N) x's dtype                   E = gamma * ctx + x
      A (B, 2, Ck, C) acc                       A[b, g] = sum_{j in g} Q_j X_j^T for the attending
                                                groups; A[b, 0] = 0 when bg_mean (nothing reads it)
      q_sum (B, 2, Ck), x_sum (B, 2, C), count (B, 2), all acc
      row_min (B, N) acc                        m_i (0 where there is no shift, or for background
                                                rows when bg_mean)
      argmin (B, N) int64                       column of m_i, -1 when m_i is not a real entry
    Group g = 0 holds the non-salient positions, g = 1 the salient ones.
``saliency_attention_backward(grad_out, x, key, query, saliency_mask, gamma, A, q_sum, x_sum, count,
                              row_min, argmin, scale, eps, shift, bg_mean)``
    Returns (grad_x, grad_key, grad_query, grad_gamma): shapes and dtypes of x, key, query, gamma.
"""
import torch
from torch import Tensor

from sgan.ops.dispatch import FLOAT_DTYPES, Dispatcher, accumulation_dtype, describe, values_checked
from sgan.ops.attention.reference import attention_weights_reference, saliency_attention_reference

PRESETS = {
    "official": {"shift": True, "background": "mean"},
    "paper": {"shift": False, "background": "attend"},
}
# the C++ CPU backend takes bfloat16/float16 too (computed in float32), e.g. under CPU autocast
_DISPATCH = Dispatcher("saliency_attention", "attention",
                       ("saliency_attention_forward", "saliency_attention_backward"),
                       dtypes={"cpp": FLOAT_DTYPES})


def resolve_options(preset="official", shift=None, background=None):
    """(shift, background) from a preset name and optional overrides."""
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    options = dict(PRESETS[preset])
    if shift is not None:
        if not isinstance(shift, bool):
            raise TypeError(f"shift: expected a bool or None, got {type(shift).__name__} {shift!r}")
        options["shift"] = shift
    if background is not None:
        if background not in ("attend", "mean"):
            raise ValueError(f"background: expected 'attend', 'mean' or None, got {background!r}")
        options["background"] = background
    return options["shift"], options["background"]


def _check_inputs(x, key, query, saliency_mask, gamma):
    """Validate and return (x, key, query, saliency_mask as bool, gamma as a tensor)."""
    for name, t in (("x", x), ("key", key), ("query", query), ("saliency_mask", saliency_mask)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x: expected 4 dimensions (B, C, H, W), got {describe(x)}")
    B, C, H, W = x.shape
    if H * W == 0 or B == 0 or C == 0:
        raise ValueError(f"x: expected non-empty batch, channels and spatial size, got {describe(x)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x: expected a floating dtype in {[str(d) for d in FLOAT_DTYPES]}, got {x.dtype}")
    for name, t in (("key", key), ("query", query)):
        if t.dim() != 4 or t.shape[0] != B or t.shape[2:] != x.shape[2:] or t.shape[1] == 0:
            raise ValueError(f"{name}: expected shape (B={B}, Ck, H={H}, W={W}) with Ck > 0, "
                             f"got {describe(t)}")
        if t.dtype != x.dtype:
            raise TypeError(f"{name}: expected dtype {x.dtype} (the dtype of x), got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name}: expected device {x.device} (the device of x), got {t.device}")
    if key.shape != query.shape:
        raise ValueError(f"query: expected the shape of key {tuple(key.shape)}, got {tuple(query.shape)}")
    if saliency_mask.shape != (B, H, W):
        raise ValueError(f"saliency_mask: expected shape (B={B}, H={H}, W={W}), got {describe(saliency_mask)}")
    if saliency_mask.device != x.device:
        raise ValueError(f"saliency_mask: expected device {x.device} (the device of x), "
                         f"got {saliency_mask.device}")
    if saliency_mask.dtype != torch.bool:
        if saliency_mask.is_complex() or (values_checked(saliency_mask) and
                                          not bool(((saliency_mask == 0) | (saliency_mask == 1)).all())):
            raise ValueError("saliency_mask: expected a bool tensor or one holding only 0 and 1, got "
                             f"{describe(saliency_mask)} with other values")
        saliency_mask = saliency_mask != 0
    if isinstance(gamma, Tensor):
        if gamma.numel() != 1:
            raise ValueError(f"gamma: expected a scalar or a 1-element tensor, got {describe(gamma)}")
        if gamma.device != x.device:
            raise ValueError(f"gamma: expected device {x.device} (the device of x), got {gamma.device}")
        if not gamma.is_floating_point():
            raise TypeError(f"gamma: expected a floating tensor, got {gamma.dtype}")
    elif isinstance(gamma, (int, float)) and not isinstance(gamma, bool):
        gamma = torch.tensor(float(gamma), dtype=torch.float64, device=x.device)
    else:
        raise TypeError(f"gamma: expected a float or a 1-element tensor, got {type(gamma).__name__}")
    return x, key, query, saliency_mask, gamma


def fused_backends(device_type):
    """Fused attention backends usable for tensors on ``device_type`` ("cpu" or "cuda") here."""
    return _DISPATCH.fused_backends(device_type)


def _backend_functions(backend):
    """(forward, backward) callables that follow the contract in this module's docstring."""
    if backend == "triton":
        from sgan.kernels import attention as triton_attention
        return triton_attention.saliency_attention_forward, triton_attention.saliency_attention_backward
    ops = torch.ops.sgan_ext
    return ops.saliency_attention_forward, ops.saliency_attention_backward


@torch.library.custom_op("sgan::fused_saliency_attention_forward", mutates_args=())
def _forward_op(x: Tensor, key: Tensor, query: Tensor, saliency_mask: Tensor, gamma: Tensor,
                scale: float, eps: float, shift: bool, bg_mean: bool, backend: str
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    forward, _ = _backend_functions(backend)
    return tuple(forward(x, key, query, saliency_mask, gamma, scale, eps, shift, bg_mean))


@_forward_op.register_fake
def _forward_fake(x, key, query, saliency_mask, gamma, scale, eps, shift, bg_mean, backend):
    B, C, N = x.shape
    Ck = key.shape[1]
    acc = accumulation_dtype(x.dtype)
    return (torch.empty_like(x), x.new_empty((B, 2, Ck, C), dtype=acc), x.new_empty((B, 2, Ck), dtype=acc),
            x.new_empty((B, 2, C), dtype=acc), x.new_empty((B, 2), dtype=acc),
            x.new_empty((B, N), dtype=acc), x.new_empty((B, N), dtype=torch.int64))


@torch.library.custom_op("sgan::fused_saliency_attention_backward", mutates_args=())
def _backward_op(grad_out: Tensor, x: Tensor, key: Tensor, query: Tensor, saliency_mask: Tensor,
                 gamma: Tensor, A: Tensor, q_sum: Tensor, x_sum: Tensor, count: Tensor, row_min: Tensor,
                 argmin: Tensor, scale: float, eps: float, shift: bool, bg_mean: bool, backend: str
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _, backward = _backend_functions(backend)
    return tuple(backward(grad_out, x, key, query, saliency_mask, gamma, A, q_sum, x_sum, count,
                          row_min, argmin, scale, eps, shift, bg_mean))


@_backward_op.register_fake
def _backward_fake(grad_out, x, key, query, saliency_mask, gamma, *rest):
    return torch.empty_like(x), torch.empty_like(key), torch.empty_like(query), torch.empty_like(gamma)


def _setup_context(ctx, inputs, output):
    x, key, query, saliency_mask, gamma, scale, eps, shift, bg_mean, backend = inputs
    stats = output[1:]
    ctx.mark_non_differentiable(*stats)
    # the statistics get no gradient: without this autograd would fill zero tensors for them
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, key, query, saliency_mask, gamma, *stats)
    ctx.options = (scale, eps, shift, bg_mean, backend)


def _backward(ctx, grad_out, *unused_stat_grads):
    if grad_out is None:  # only the statistics were used: nothing flows back
        return (None,) * 10
    saved = ctx.saved_tensors
    grad_x, grad_key, grad_query, grad_gamma = _backward_op(grad_out.contiguous(), *saved, *ctx.options)
    return grad_x, grad_key, grad_query, None, grad_gamma, None, None, None, None, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def _prepare(x, key, query, saliency_mask, gamma, preset, shift, background, scale, backend):
    """Checked, flattened inputs: (x, key, query, mask) as (B, ., N), gamma 0-dim acc, options."""
    x, key, query, saliency_mask, gamma = _check_inputs(x, key, query, saliency_mask, gamma)
    shift, background = resolve_options(preset, shift, background)
    B, C, H, W = x.shape
    Ck = key.shape[1]
    if scale is None:
        scale = Ck ** -0.5
    elif not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise TypeError(f"scale: expected a float or None, got {type(scale).__name__}")
    backend = _DISPATCH.resolve(backend, x, "x")
    flat = (x.reshape(B, C, H * W), key.reshape(B, Ck, H * W), query.reshape(B, Ck, H * W),
            saliency_mask.reshape(B, H * W))
    gamma = gamma.reshape(()).to(accumulation_dtype(x.dtype))
    return flat, gamma, float(scale), shift, background, backend


def saliency_attention(x, key, query, saliency_mask, gamma, *, preset="official", shift=None,
                       background=None, scale=None, eps=1e-5, backend="auto"):
    """Saliency-guided self-attention E = gamma * D X + X (docs/design.md §2).

    x: (B, C, H, W) values; key, query: (B, Ck, H, W); saliency_mask: (B, H, W) bool (or 0/1);
    gamma: float or 1-element tensor. ``preset`` "official" (shift, background mean) or "paper"
    (no shift, background attends); ``shift`` and ``background`` override it. ``scale`` defaults to
    Ck^-1/2. Returns E with the shape and dtype of x.

    Example::

        >>> x = torch.randn(2, 64, 9, 11, dtype=torch.float64, requires_grad=True)
        >>> key, query = torch.randn(2, 2, 32, 9, 11, dtype=torch.float64).unbind(0)
        >>> mask = torch.rand(2, 9, 11) > 0.5
        >>> fused = saliency_attention(x, key, query, mask, 0.5, backend="cpp")
        >>> dense = saliency_attention(x, key, query, mask, 0.5, backend="reference")
        >>> fused.shape, torch.allclose(fused, dense, rtol=1e-10, atol=1e-12)
        (torch.Size([2, 64, 9, 11]), True)
    """
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps < 0:
        raise ValueError(f"eps: expected a non-negative float, got {eps!r}")
    (xf, kf, qf, mf), gamma, scale, shift, background, backend = _prepare(
        x, key, query, saliency_mask, gamma, preset, shift, background, scale, backend)
    if backend == "reference":
        out = saliency_attention_reference(xf, kf, qf, mf, gamma, shift=shift, background=background,
                                           scale=scale, eps=float(eps))
    else:
        out = _forward_op(xf.contiguous(), kf.contiguous(), qf.contiguous(), mf.contiguous(), gamma,
                          scale, float(eps), shift, background == "mean", backend)[0]
    return out.reshape(x.shape)


def attention_column(x, key, query, saliency_mask, index, *, preset="official", shift=None,
                     background=None, scale=None, eps=1e-5, backend="auto"):
    """Column ``index`` of D, (B, H, W): how much every position attends to position ``index``.

    ``index`` is a flat position h * W + w or a pair (h, w). Fused backends compute it from the
    factorised statistics in O(N * Ck) memory; the reference slices its dense D.

    Example::

        >>> x = torch.randn(1, 64, 9, 11)
        >>> key, query = torch.randn(2, 1, 32, 9, 11).unbind(0)
        >>> mask = torch.zeros(1, 9, 11, dtype=torch.bool); mask[:, 2:7, 3:9] = True
        >>> column = attention_column(x, key, query, mask, (4, 5), backend="cpp")  # a salient position
        >>> column.shape, bool(column[~mask].abs().max() == 0)       # only salient rows attend to it
        (torch.Size([1, 9, 11]), True)
    """
    B, _, H, W = x.shape if isinstance(x, Tensor) and x.dim() == 4 else (None, None, None, None)
    if H is None:
        _check_inputs(x, key, query, saliency_mask, 0.0)  # raises the shape error
    if isinstance(index, (tuple, list)) and len(index) == 2:
        h, w = (int(v) for v in index)
        if not (0 <= h < H and 0 <= w < W):
            raise ValueError(f"index: expected (h, w) within ({H}, {W}), got {tuple(index)}")
        index = h * W + w
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < H * W:
        raise ValueError(f"index: expected a flat position in [0, {H * W}) or a pair (h, w), got {index!r}")
    (xf, kf, qf, mf), gamma, scale, shift, background, backend = _prepare(
        x, key, query, saliency_mask, 0.0, preset, shift, background, scale, backend)
    with torch.no_grad():
        if backend == "reference":
            weights = attention_weights_reference(kf, qf, mf, shift=shift, background=background,
                                                  scale=scale, eps=float(eps))
            return weights[:, :, index].reshape(B, H, W)
        _, _, q_sum, _, count, row_min, argmin = _forward_op(
            xf.contiguous(), kf.contiguous(), qf.contiguous(), mf.contiguous(), gamma, scale,
            float(eps), shift, background == "mean", backend)
        acc = q_sum.dtype
        key_acc, query_acc = kf.to(acc), qf.to(acc)
        group = mf.long()  # (B, N)
        group_q = q_sum.gather(1, group[:, :, None].expand(-1, -1, q_sum.shape[2]))  # (B, N, Ck)
        group_n = count.gather(1, group)  # (B, N)
        denominator = scale * (key_acc.transpose(1, 2) * group_q).sum(-1) - row_min * group_n + eps
        numerator = scale * (key_acc * query_acc[:, :, index:index + 1]).sum(1) - row_min
        if shift:
            # w_ij = P_ij - m_i >= 0, and exactly 0 where j is row i's minimum: recomputing P_ij here
            # and subtracting the m_i of the forward pass would leave rounding noise of either sign
            numerator = torch.where(argmin == index, torch.zeros_like(numerator), numerator.clamp_min(0))
        same_group = mf == mf[:, index:index + 1]
        column = torch.where(same_group, numerator / denominator, torch.zeros_like(numerator))
        if background == "mean":
            target_is_background = (~mf[:, index]).to(acc)[:, None]  # (B, 1)
            mean_weight = target_is_background / (count[:, 0:1] + eps)
            column = torch.where(mf, column, mean_weight.expand_as(column))
        return column.reshape(B, H, W)
