"""The SGAN losses (docs/design.md §3), as the paper writes them: seed (eq. 5), classification
(eq. 6), balanced seed (eq. 8) and boundary (eq. 9), with the dense-CRF targets of eq. 9 and the
constants of the equations.

The seed losses and the KL part of the boundary loss reduce to per-image statistics of the logits,
computed by the operators ``sgan.ops.seed_nll`` and ``sgan.ops.boundary_kl`` (reference and fused
backends, chosen by ``backend=``); what is left here is their combination into each loss, in plain
PyTorch, and the checks of what the losses take.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from sgan.data.logits_size import as_uint8_images, resize_images
from sgan.data.voc_classes import IGNORE_INDEX, NUM_CLASSES
from sgan.ops.boundary_kl import boundary_kl_sums, check_target
from sgan.ops.dispatch import FLOAT_DTYPES, accumulation_dtype, describe, values_checked
from sgan.ops.seed_nll import check_seeds, seed_nll_stats
from sgan.ops.softmax import check_floor, check_logits, floored_softmax, resolve_for_logits

PROB_FLOOR = 1e-5  # softmax probabilities are floored here and renormalised before any log
KL_RATIO_MIN, KL_RATIO_MAX = 0.05, 20.0  # clip of R / Phi in the boundary loss (eq. 9)


# ---------------------------------------------------------------------------------------------
# seed losses (eq. 5 and eq. 8)


def _per_image_mean(sums, counts):
    """Mean over the counted positions of each image, 0 for an image with none."""
    return sums / counts.clamp_min(1)


def seed_loss(logits, seeds, reduction="image", backend="auto", floor=PROB_FLOOR):
    """Seed loss of stage 1 (eq. 5): -log Phi at the foreground seeds, Phi the softmax floored at
    ``floor`` and renormalised (1e-5, the SEC/DSRG convention); ``floor`` 0 is the plain
    cross-entropy of the authors' stage 1 (-log_softmax, finite at any probability).

    logits: (B, 20, h, w), the 20 foreground classes, no background channel.
    seeds: (B, h, w) integer at the logits' size (see ``sgan.data.logits_size.resize_seeds``); a label
    c in 1..20 selects channel c - 1; background (0) and unlabelled (255) positions are ignored.
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
    floor = check_floor(floor, NUM_CLASSES)
    check_logits(logits, NUM_CLASSES)
    seeds = check_seeds(seeds, logits, 1, IGNORE_INDEX)
    backend, logits = resolve_for_logits(backend, logits)
    sums, counts = seed_nll_stats(logits, seeds, 1, floor, IGNORE_INDEX, backend)
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
    check_logits(logits, NUM_CLASSES + 1)
    seeds = check_seeds(seeds, logits, 0, IGNORE_INDEX)
    backend, logits = resolve_for_logits(backend, logits)
    sums, counts = seed_nll_stats(logits, seeds, 0, PROB_FLOOR, IGNORE_INDEX, backend)
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
    resolve_for_logits(backend, cam_logits)
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
        return floored_softmax(logits.detach(), PROB_FLOOR).to(torch.float32).cpu().numpy()


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
    check_logits(logits, NUM_CLASSES + 1)
    if (images is None) == (crf_probs is None):
        raise ValueError("boundary_loss: give exactly one of images= (run the CRF here) and crf_probs= "
                         "(the CRF output computed ahead of time)")
    backend, logits = resolve_for_logits(backend, logits)
    if crf_probs is None:
        crf_probs = boundary_crf_targets(logits, images, scale=crf_scale, iterations=crf_iterations,
                                         processes=crf_processes)
    target = check_target(crf_probs, logits, name="crf_probs")
    sums = boundary_kl_sums(logits, target, PROB_FLOOR, KL_RATIO_MIN, KL_RATIO_MAX, backend)
    B, _, h, w = logits.shape
    return sums.sum() / (B * h * w)

