"""Seeds from CAMs and saliency (docs/design.md §5): class scores, thresholds, conflicts, resolution.

:func:`class_scores` runs a stage-0/1 network on one image (optionally at several scales and
flipped, summed) and returns per-class scores (20, ·, ·), zero for classes the image does not hold.
:func:`make_seeds` turns scores and the saliency map into a seed map at the image's size (uint8:
0 background, 1..20 classes, 255 unlabelled). Two choices, each for the whole step:

``rule`` — how scores are formed, thresholded and how conflicts are settled:

- ``paper``: scores are the ReLU of the CAM, each class divided by its maximum (with
  ``use_seed_branch`` the seed branch's map, treated alike, is added). Foreground of class c:
  score_c >= alpha * max(score_c) (a class whose maximum is not positive has none); background:
  saliency / 255 < beta. A position claimed by exactly one label gets it; one claimed by several
  (two classes, or a class and background) stays unlabelled.
- ``authors``: scores are the raw logits, CAM plus seed branch with ``use_seed_branch``, without
  ReLU or normalisation. Foreground of class c: score_c > alpha * max(score_c) (strictly, the
  product in float32); background: saliency / 255 < beta. Then every label, background included,
  is written onto an unlabelled map in order of decreasing area (number of positions it claims),
  labels without positions skipped, so where regions overlap the smaller one wins whatever its
  class. Equal areas are an unstable sort's choice in the authors' code; here the higher index is
  written first, so the lower one (background before any class) wins. Finally positions labelled
  boat (4) or train (19) that are also background go back to background.

``resolution`` — where the decision is taken:

- ``image``: scores are upsampled bilinearly to the image's size and thresholded against the
  full-resolution saliency;
- ``feature`` (the authors'): everything happens at the network's output size (41 x 41 for a 321²
  input): the saliency / 255 (float32) is resized to it with the corner-aligned bilinear zoom, the
  label map is decided there and enlarged to the image's size with the corner-aligned
  nearest-neighbour zoom (sgan.data.zoom: scipy's ``zoom(order=1)`` and ``zoom(order=0)``).
"""
import numpy as np
import torch
import torch.nn.functional as F

from sgan.data.voc import RESIZES, normalise, resize_as
from sgan.data.voc_classes import IGNORE_INDEX, NUM_CLASSES
from sgan.data.zoom import zoom_linear, zoom_nearest

SEED_RULES = ("paper", "authors")
SEED_RESOLUTIONS = ("image", "feature")
BACKGROUND_WINS_CLASSES = (4, 19)  # boat, train (VOC indices)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


def _max_normalised(maps):
    """(K, H, W) non-negative maps, each divided by its maximum (all-zero maps stay zero)."""
    peak = maps.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return maps / peak


@torch.no_grad()
def class_scores(network, image, saliency, labels, input_size, normalisation, scales=(1.0,), flip=False,
                 use_seed_branch=False, device="cpu", rule="paper", resolution="image", resize="pil"):
    """Per-class scores (20, h, w) float32 for :func:`make_seeds`; ``rule``/``resolution`` as in the module doc.

    image: uint8 (H, W, 3) RGB; saliency: uint8 (H, W) or None; labels: class indices 1..20.
    Each scale s runs the network on the image (and saliency) resized to round(input_size * s)
    squared with ``resize`` (sgan.data.voc.resize_as); a flipped copy's maps are flipped back and
    added. (h, w) is the image's (H, W) for resolution ``image``, else the network's output size
    at the first scale (maps of other scales are resized to it bilinearly).
    """
    if not scales:
        raise ValueError("scales: expected at least one scale")
    _check_choice("rule", rule, SEED_RULES)
    _check_choice("resolution", resolution, SEED_RESOLUTIONS)
    _check_choice("resize", resize, RESIZES)
    size = tuple(image.shape[:2]) if resolution == "image" else None
    sums = {}
    for scale in scales:
        side = max(8, int(round(input_size * scale)))
        batch = normalise(resize_as(image, (side, side), resize), normalisation)[None].to(device)
        sal = None
        if saliency is not None:
            sal = torch.from_numpy(np.array(resize_as(saliency, (side, side), resize)))[None].to(device)
        if flip:
            batch = torch.cat([batch, batch.flip(-1)])
            sal = torch.cat([sal, sal.flip(-1)]) if sal is not None else None
        out = network(batch, sal)
        for key in ("cam", "seed"):
            if key not in out:
                continue
            maps = out[key].float()
            if rule == "paper":
                maps = torch.relu(maps)
            maps = maps[:1] + maps[1:].flip(-1) if flip else maps[:1]
            size = size or tuple(maps.shape[-2:])
            if tuple(maps.shape[-2:]) != size:
                maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
            sums[key] = maps[0] + sums[key] if key in sums else maps[0]
    if use_seed_branch and "seed" not in sums:
        raise ValueError("use_seed_branch: the network has no seed branch (variant sgan-seed, "
                         "sgan-sal-seed or the baseline); set use_seed_branch=false")
    present = torch.zeros(NUM_CLASSES, 1, 1, device=device)
    present[[c - 1 for c in labels]] = 1.0
    if rule == "paper":
        scores = _max_normalised(sums["cam"] * present)
        if use_seed_branch:
            scores = scores + _max_normalised(sums["seed"] * present)
    else:
        scores = (sums["cam"] + sums["seed"] if use_seed_branch else sums["cam"]) * present
    return scores.cpu()


def _foreground(scores, labels, alpha, rule):
    """{class: bool map} of the classes in ``labels`` that claim at least one position."""
    foreground = {}
    for c in labels:
        score = scores[c - 1]
        peak = score.max()
        if rule == "paper":
            mask = score >= alpha * peak if peak > 0 else None
        else:
            mask = score > np.float32(alpha) * peak
        if mask is not None and mask.any():
            foreground[c] = mask
    return foreground


def _settle(background, foreground, rule):
    """uint8 label map from the background and foreground claims (module doc, ``rule``)."""
    seeds = np.full(background.shape, IGNORE_INDEX, dtype=np.uint8)
    if rule == "paper":
        claims = background.astype(np.int32)
        for mask in foreground.values():
            claims += mask
        seeds[background & (claims == 1)] = 0
        for c, mask in foreground.items():
            seeds[mask & (claims == 1)] = c
        return seeds
    regions = dict(foreground)
    if background.any():
        regions[0] = background
    for label in sorted(regions, key=lambda k: (-int(regions[k].sum()), -k)):
        seeds[regions[label]] = label
    for c in BACKGROUND_WINS_CLASSES:
        seeds[(seeds == c) & background] = 0
    return seeds


def make_seeds(scores, saliency, labels, alpha, beta, rule="paper", resolution="image"):
    """uint8 (H, W) seeds at the saliency's size (module doc).

    scores: (20, H, W) for resolution ``image``, (20, h, w) for ``feature`` (tensor or array, from
    :func:`class_scores` with the same rule); saliency: uint8 (H, W); labels: class indices 1..20.
    """
    _check_choice("rule", rule, SEED_RULES)
    _check_choice("resolution", resolution, SEED_RESOLUTIONS)
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha: expected a value in (0, 1], got {alpha!r}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta: expected a value in [0, 1], got {beta!r}")
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 3 or scores.shape[0] != NUM_CLASSES or (
            resolution == "image" and scores.shape[1:] != saliency.shape):
        where = f"(H, W) = saliency's {saliency.shape}" if resolution == "image" else "the feature size (h, w)"
        raise ValueError(f"scores: expected shape ({NUM_CLASSES}, H, W) with {where}, got {scores.shape}")
    image_size = saliency.shape
    saliency = saliency.astype(np.float32) / np.float32(255.0)
    if resolution == "feature":
        saliency = zoom_linear(saliency, scores.shape[1:])
    seeds = _settle(saliency < np.float32(beta), _foreground(scores, labels, alpha, rule), rule)
    return zoom_nearest(seeds, image_size) if resolution == "feature" else seeds
