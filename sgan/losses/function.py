"""Public API of the SGAN losses (docs/design.md §3): input checks, backend dispatch, autograd.

Every loss reduces to per-image statistics; the backends compute only those (and their gradient),
the small combination into the loss is plain PyTorch, so autograd hands the backends the gradient
of the statistics. Backend contract (``cpp``/``cuda`` in ``torch.ops.sgan_ext``, ``triton`` in
``sgan.kernels.losses``; the custom ops ``torch.ops.sgan.fused_<name>``, with autograd and fake
tensors, take the backend's name as their last argument and call its ``<name>``); tensors are
contiguous and on one device, ``acc`` is float64 for float64 logits, else float32, and Phi is the
softmax over the C channels floored at ``floor`` and renormalised:

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
``boundary_kl_forward(logits, target, floor, ratio_min, ratio_max) -> (sums, stats)``
    logits (B, C, N) float; target (B, C, N) acc, floored at ``floor`` and renormalised inside into
    R; sums (B,) acc, sums[b] = sum over positions of sum_c R_c log clip(R_c / Phi_c, ratio_min,
    ratio_max). stats (B, 7, N) acc: M, 1 / E, S, T, W = sum_c w_c, U = sum_{c: p_c >= floor} w_c
    (w_c = R_c where R_c / Phi_c lies inside the clip range, else 0) and 1 / sum_c max(target_c, floor).
``boundary_kl_backward(grad_sums, logits, target, stats, floor, ratio_min, ratio_max) -> grad_logits``
    grad_sums (B,) acc; the gradient with respect to the logits (R is a constant; clipped terms
    have no gradient).

The forward passes read the logits once; the backward passes read them once more and use the
per-position statistics instead of recomputing the softmax reductions. Nothing of size B x C x N
is materialised besides the gradient.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sgan.data.logits_size import as_uint8_images, resize_images
from sgan.data.voc_classes import IGNORE_INDEX, NUM_CLASSES
from sgan.losses.reference import (
    KL_RATIO_MAX,
    KL_RATIO_MIN,
    PROB_FLOOR,
    boundary_kl_sums_reference,
    floored_softmax,
    seed_nll_stats_reference,
)
from sgan.ops.dispatch import (  # noqa: F401  (BACKENDS re-exported)
    BACKENDS,
    FLOAT_DTYPES,
    Dispatcher,
    accumulation_dtype,
    describe,
    values_checked,
)

SEED_STATS, BOUNDARY_STATS = 4, 7  # per-position statistics rows of the fused forwards (see the contract)
_DISPATCH = Dispatcher("sgan.losses", "losses",
                       ("seed_nll_forward", "seed_nll_backward", "boundary_kl_forward", "boundary_kl_backward"))


# ---------------------------------------------------------------------------------------------
# backend selection


def fused_backends(device_type):
    """Fused loss backends usable for tensors on ``device_type`` ("cpu" or "cuda") here."""
    return _DISPATCH.fused_backends(device_type)


def resolve_backend(backend, logits):
    """The concrete backend for ``logits``: 'auto' picks cpp on CPU, cuda then triton on CUDA."""
    return _DISPATCH.resolve(backend, logits, "logits")


# Backends whose loss kernels read bfloat16 / float16 logits themselves (accumulating in float32); the
# cpp kernels read float32 and float64 only.
_HALF_NATIVE = ("reference", "cuda", "triton")


def _resolve_for_logits(backend, logits):
    """(concrete backend, the logits it computes with). Half-precision (bfloat16 / float16) logits are
    accepted on every backend: the softmax, its log and every sum run in float32 (the accumulation
    dtype) in all of them, and a backend that reads float32 only (cpp) gets the logits cast to
    float32 here, a cast whose backward hands the gradient back in the logits' dtype."""
    acc = accumulation_dtype(logits.dtype)
    backend = resolve_backend(backend, logits.new_empty(0, dtype=acc))
    if logits.dtype != acc and backend not in _HALF_NATIVE:
        logits = logits.to(acc)
    return backend, logits


def _backend_module(backend):
    if backend == "triton":
        from sgan.kernels import losses as triton_losses
        return triton_losses
    return torch.ops.sgan_ext


# ---------------------------------------------------------------------------------------------
# custom ops (fused backends) with fake implementations and autograd


@torch.library.custom_op("sgan::fused_seed_nll_forward", mutates_args=())
def _seed_nll_forward_op(logits: Tensor, seeds: Tensor, label_offset: int, floor: float, backend: str
                         ) -> tuple[Tensor, Tensor, Tensor]:
    sums, counts, stats = _backend_module(backend).seed_nll_forward(logits, seeds, label_offset, floor)
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
    return _backend_module(backend).seed_nll_backward(grad_sums, logits, seeds, stats, label_offset, floor)


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


@torch.library.custom_op("sgan::fused_boundary_kl_forward", mutates_args=())
def _boundary_kl_forward_op(logits: Tensor, target: Tensor, floor: float, ratio_min: float, ratio_max: float,
                            backend: str) -> tuple[Tensor, Tensor]:
    sums, stats = _backend_module(backend).boundary_kl_forward(logits, target, floor, ratio_min, ratio_max)
    return sums, stats


@_boundary_kl_forward_op.register_fake
def _boundary_kl_forward_fake(logits, target, floor, ratio_min, ratio_max, backend):
    acc = accumulation_dtype(logits.dtype)
    B, _, N = logits.shape
    return logits.new_empty((B,), dtype=acc), logits.new_empty((B, BOUNDARY_STATS, N), dtype=acc)


@torch.library.custom_op("sgan::fused_boundary_kl_backward", mutates_args=())
def _boundary_kl_backward_op(grad_sums: Tensor, logits: Tensor, target: Tensor, stats: Tensor, floor: float,
                             ratio_min: float, ratio_max: float, backend: str) -> Tensor:
    return _backend_module(backend).boundary_kl_backward(grad_sums, logits, target, stats, floor, ratio_min,
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
# input checks


def _check_logits(logits, num_channels, name="logits"):
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 4 or logits.shape[1] != num_channels:
        raise ValueError(f"{name}: expected shape (B, {num_channels}, h, w), got {describe(logits)}")
    if logits.shape[0] == 0 or logits.shape[2] * logits.shape[3] == 0:
        raise ValueError(f"{name}: expected a non-empty batch and spatial size, got {describe(logits)}")
    if logits.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating dtype in {[str(d) for d in FLOAT_DTYPES]}, "
                        f"got {logits.dtype}")


def _check_seeds(seeds, logits, max_label):
    """Seeds as contiguous int64 (B, h, w) on the logits' device, labels in 0..max_label or 255."""
    if not isinstance(seeds, Tensor):
        raise TypeError(f"seeds: expected a torch.Tensor, got {type(seeds).__name__}")
    B, _, h, w = logits.shape
    if seeds.shape != (B, h, w):
        raise ValueError(f"seeds: expected shape (B={B}, h={h}, w={w}), the batch and spatial size of the "
                         f"logits, got {describe(seeds)}; resize seeds to the logits' size first with "
                         f"sgan.losses.resize_seeds (nearest neighbour)")
    if seeds.dtype.is_floating_point or seeds.dtype.is_complex or seeds.dtype == torch.bool:
        raise TypeError(f"seeds: expected an integer tensor (labels 0..{max_label}, 255 unlabelled), "
                        f"got {seeds.dtype}")
    if seeds.device != logits.device:
        raise ValueError(f"seeds: expected device {logits.device} (the device of the logits), got {seeds.device}")
    seeds = seeds.to(torch.int64).contiguous()
    if values_checked(seeds):
        bad = (seeds < 0) | ((seeds > max_label) & (seeds != IGNORE_INDEX))
        if bool(bad.any()):
            found = sorted(set(seeds[bad].unique().tolist()))[:10]
            raise ValueError(f"seeds: expected labels in 0..{max_label} or {IGNORE_INDEX} (unlabelled), "
                             f"found {found}")
    return seeds


# ---------------------------------------------------------------------------------------------
# seed losses (eq. 5 and eq. 8)


def _seed_stats(logits, seeds, label_offset, backend, floor=PROB_FLOOR):
    """(sums, counts), (B, 2) each: group 0 background, group 1 foreground (see the contract)."""
    if backend == "reference":
        return seed_nll_stats_reference(logits, seeds, label_offset, floor)
    B, C, h, w = logits.shape
    sums, counts, _ = _seed_nll_forward_op(logits.reshape(B, C, h * w).contiguous(), seeds.reshape(B, h * w),
                                           label_offset, floor, backend)
    return sums, counts


def check_floor(floor, num_channels=NUM_CLASSES, name="floor"):
    """``floor`` as a float in [0, 1 / num_channels): 0 is no floor; at 1 / num_channels or above every
    probability would be floored and Phi uniform."""
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor < 1 / num_channels:
        raise ValueError(f"{name}: expected a number in [0, {1 / num_channels:g}) (0 = no floor), got {floor!r}")
    return float(floor)


def _per_image_mean(sums, counts):
    """Mean over the counted positions of each image, 0 for an image with none."""
    return sums / counts.clamp_min(1)


def seed_loss(logits, seeds, reduction="image", backend="auto", floor=PROB_FLOOR):
    """Seed loss of stage 1 (eq. 5): -log Phi at the foreground seeds, Phi the softmax floored at
    ``floor`` and renormalised (1e-5, the SEC/DSRG convention); ``floor`` 0 is the plain
    cross-entropy of the authors' stage 1 (-log_softmax, finite at any probability).

    logits: (B, 20, h, w), the 20 foreground classes, no background channel.
    seeds: (B, h, w) integer at the logits' size (see ``resize_seeds``); a label c in 1..20 selects
    channel c - 1; background (0) and unlabelled (255) positions are ignored.
    reduction: "image" normalises by each image's seed count then averages over the batch (the
    equation); "batch" normalises by all seeds of the batch (the authors' cross-entropy). An image
    without seeds contributes 0 (and a batch without seeds gives 0).
    Returns a 0-dim tensor, float64 for float64 logits, else float32 (bfloat16 / float16 logits are
    computed in float32 on every backend; their gradient comes back in their dtype).

    Example::

        >>> logits = torch.randn(2, 20, 41, 41, requires_grad=True)
        >>> seeds = torch.full((2, 41, 41), 255)
        >>> seeds[:, :5, :5] = 3; seeds[:, 30:, 30:] = 0          # class 3 (channel 2); background
        >>> loss = seed_loss(logits, seeds, reduction="batch", floor=0.0)  # the authors' cross-entropy
        >>> loss.backward(); loss.shape, logits.grad.shape
        (torch.Size([]), torch.Size([2, 20, 41, 41]))
    """
    if reduction not in ("image", "batch"):
        raise ValueError(f"reduction: expected 'image' or 'batch', got {reduction!r}")
    floor = check_floor(floor)
    _check_logits(logits, NUM_CLASSES)
    seeds = _check_seeds(seeds, logits, NUM_CLASSES)
    backend, logits = _resolve_for_logits(backend, logits)
    sums, counts = _seed_stats(logits, seeds, 1, backend, floor)
    if reduction == "image":
        return _per_image_mean(sums[:, 1], counts[:, 1]).mean()
    return sums[:, 1].sum() / counts[:, 1].sum().clamp_min(1)


def balanced_seed_loss(logits, seeds, backend="auto"):
    """Balanced seed loss of stage 2 (eq. 8): foreground and background terms, each the mean of
    -log Phi over that image's seeds of its kind, averaged over the batch, then summed.

    logits: (B, 21, h, w), channel 0 background; seeds (B, h, w) integer at the logits' size,
    0 background, 1..20 classes, 255 ignored. A term without seeds in an image contributes 0.
    Returns a 0-dim tensor, float64 for float64 logits, else float32 (bfloat16 / float16 logits are
    computed in float32 on every backend; their gradient comes back in their dtype).

    Example::

        >>> logits = torch.randn(2, 21, 41, 41, requires_grad=True)
        >>> seeds = torch.full((2, 41, 41), 255)
        >>> seeds[:, :10] = 0; seeds[:, 20:, 20:] = 15             # background; person
        >>> balanced_seed_loss(logits, seeds).backward()
    """
    _check_logits(logits, NUM_CLASSES + 1)
    seeds = _check_seeds(seeds, logits, NUM_CLASSES)
    backend, logits = _resolve_for_logits(backend, logits)
    sums, counts = _seed_stats(logits, seeds, 0, backend)
    return _per_image_mean(sums, counts).mean(0).sum()


# ---------------------------------------------------------------------------------------------
# classification loss (eq. 6)


def classification_loss(cam_logits, labels, backend="auto"):
    """Multi-label sigmoid cross-entropy on the global average of the CAM logits (eq. 6), the same as
    ``F.multilabel_soft_margin_loss``: mean over classes, then over the batch.

    cam_logits: (B, 20, h, w) or already pooled (B, 20); labels: (B, 20) multi-hot (bool, integer
    or float 0/1). The loss is tiny, so every backend computes it with the same PyTorch math;
    ``backend`` is only validated. Returns a 0-dim tensor in the accumulation dtype.

    Example::

        >>> cams = torch.randn(2, 20, 41, 41, requires_grad=True)
        >>> labels = torch.zeros(2, 20); labels[0, 14] = 1; labels[1, [2, 7]] = 1
        >>> torch.allclose(classification_loss(cams, labels),
        ...                torch.nn.functional.multilabel_soft_margin_loss(cams.mean((2, 3)), labels))
        True
    """
    if not isinstance(cam_logits, Tensor):
        raise TypeError(f"cam_logits: expected a torch.Tensor, got {type(cam_logits).__name__}")
    if cam_logits.dim() not in (2, 4) or cam_logits.shape[1] != NUM_CLASSES or cam_logits.shape[0] == 0:
        raise ValueError(f"cam_logits: expected shape (B, {NUM_CLASSES}, h, w) or (B, {NUM_CLASSES}), "
                         f"got {describe(cam_logits)}")
    if cam_logits.dtype not in FLOAT_DTYPES:
        raise TypeError(f"cam_logits: expected a floating dtype, got {cam_logits.dtype}")
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels: expected a torch.Tensor, got {type(labels).__name__}")
    if labels.shape != cam_logits.shape[:2]:
        raise ValueError(f"labels: expected shape {tuple(cam_logits.shape[:2])}, got {describe(labels)}")
    if labels.device != cam_logits.device:
        raise ValueError(f"labels: expected device {cam_logits.device}, got {labels.device}")
    if values_checked(labels) and not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError("labels: expected multi-hot values 0 or 1")
    _resolve_for_logits(backend, cam_logits)
    acc = accumulation_dtype(cam_logits.dtype)
    pooled = cam_logits.to(acc)
    if pooled.dim() == 4:
        pooled = pooled.mean((2, 3))
    return F.binary_cross_entropy_with_logits(pooled, labels.to(acc), reduction="mean")


# ---------------------------------------------------------------------------------------------
# boundary loss (eq. 9)


def crf_unary_probs(logits):
    """The floored softmax of the logits, detached, as a float32 numpy array (B, C, h, w): what the
    CRF of the boundary loss takes as its unary (-log p) term."""
    with torch.no_grad():
        return floored_softmax(logits.detach()).to(torch.float32).cpu().numpy()


def boundary_crf_targets(logits, images, *, scale=12.0, iterations=10, processes=None, pool=None):
    """The dense-CRF output R for the boundary loss, (B, C, h, w) float32 numpy.

    images: uint8 RGB (B, H, W, 3), resized to the logits' size (h, w) with ``resize_images``;
    the unary is ``crf_unary_probs(logits)``. With ``pool`` (a ``sgan.crf.DenseCRFPool``) the work
    goes to that pool; else ``sgan.crf.dense_crf`` runs it with ``processes`` workers. To keep the
    CRF ahead of the training loop, call ``pool.submit(resize_images(images, (h, w)),
    crf_unary_probs(logits))`` yourself and pass the future's result as ``crf_probs``.
    """
    from sgan import crf

    if not isinstance(logits, Tensor) or logits.dim() != 4:
        raise ValueError(f"logits: expected a (B, C, h, w) tensor, got "
                         f"{describe(logits) if isinstance(logits, Tensor) else type(logits).__name__}")
    small = resize_images(as_uint8_images(images, logits.shape[0]), logits.shape[2:])
    probs = crf_unary_probs(logits)
    if pool is not None:
        return pool.submit(small, probs, scale=scale, iterations=iterations).result()
    return crf.dense_crf(small, probs, scale=scale, iterations=iterations, processes=processes)


def boundary_loss(logits, images=None, *, crf_probs=None, crf_scale=12.0, crf_iterations=10, crf_processes=None,
                  backend="auto"):
    """Boundary-constraint loss (eq. 9): mean over all positions of sum_c R log clip(R / Phi, 0.05, 20).

    logits: (B, 21, h, w). Give exactly one of
      images: uint8 RGB (B, H, W, 3) tensor or array; the CRF (``boundary_crf_targets``, scale
        ``crf_scale`` = 12 for 41x41 training outputs, ``crf_iterations``, ``crf_processes``
        workers) then runs here, synchronously;
      crf_probs: the CRF output R (B, 21, h, w), tensor or array, computed ahead of time (e.g. in a
        ``sgan.crf.DenseCRFPool``).
    R is floored at 1e-5, renormalised and treated as a constant (no gradient through the CRF).
    Returns a 0-dim tensor, float64 for float64 logits, else float32 (bfloat16 / float16 logits are
    computed in float32 on every backend; their gradient comes back in their dtype).

    Example::

        >>> logits = torch.randn(2, 21, 41, 41, requires_grad=True)
        >>> images = torch.randint(0, 256, (2, 41, 41, 3), dtype=torch.uint8)  # already at 41x41
        >>> loss = boundary_loss(logits, images, crf_processes=1)
        >>> loss.backward(); bool(loss >= 0)
        True
    """
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits: expected a torch.Tensor, got {type(logits).__name__}")
    _check_logits(logits, NUM_CLASSES + 1)
    if (images is None) == (crf_probs is None):
        raise ValueError("boundary_loss: give exactly one of images= (run the CRF here) and crf_probs= "
                         "(the CRF output computed ahead of time)")
    backend, logits = _resolve_for_logits(backend, logits)
    if crf_probs is None:
        crf_probs = boundary_crf_targets(logits, images, scale=crf_scale, iterations=crf_iterations,
                                         processes=crf_processes)
    target = _check_crf_probs(crf_probs, logits)
    B, C, h, w = logits.shape
    if backend == "reference":
        sums = boundary_kl_sums_reference(logits, target)
    else:
        sums, _ = _boundary_kl_forward_op(logits.reshape(B, C, h * w).contiguous(), target.reshape(B, C, h * w),
                                          PROB_FLOOR, KL_RATIO_MIN, KL_RATIO_MAX, backend)
    return sums.sum() / (B * h * w)


def _check_crf_probs(crf_probs, logits):
    """crf_probs as a contiguous tensor in the accumulation dtype on the logits' device."""
    if isinstance(crf_probs, np.ndarray):
        crf_probs = torch.from_numpy(crf_probs)
    if not isinstance(crf_probs, Tensor):
        raise TypeError(f"crf_probs: expected a tensor or numpy array, got {type(crf_probs).__name__}")
    if crf_probs.shape != logits.shape:
        raise ValueError(f"crf_probs: expected the shape of the logits {tuple(logits.shape)}, "
                         f"got {describe(crf_probs)}")
    if not crf_probs.is_floating_point():
        raise TypeError(f"crf_probs: expected floating probabilities, got {crf_probs.dtype}")
    if values_checked(crf_probs) and not bool(((crf_probs >= 0) & torch.isfinite(crf_probs)).all()):
        raise ValueError("crf_probs: expected finite, non-negative probabilities")
    return crf_probs.detach().to(device=logits.device, dtype=accumulation_dtype(logits.dtype)).contiguous()
