"""Seeds from CAMs and saliency (DESIGN.md §5): class scores at image resolution, thresholds, conflicts.

:func:`class_scores` runs a stage-0/1 network on one image (optionally at several scales and
flipped, averaged) and returns per-class scores (20, H, W) at the image's size, zero for classes
the image does not hold: ReLU of the CAM, each class divided by its maximum; with
``use_seed_branch`` (authors) the seed branch's ReLU-ed, max-normalised map is added.

:func:`make_seeds` turns scores and the saliency map into a seed map (uint8 (H, W): 0 background,
1..20 classes, 255 unlabelled). Foreground of class c: score_c >= alpha * max(score_c);
background: saliency / 255 < beta. Conflicts:

- ``paper``: a pixel claimed by exactly one label gets it; pixels claimed by several labels
  (two classes, or a class and background) stay unlabelled (255);
- ``authors``: background first, then classes by descending foreground area, each overwriting
  what is there (small objects win over large ones); finally pixels of boat (4) and train (19)
  that are background by saliency go back to background (these classes' CAMs spread onto water and
  rails).
"""
import numpy as np
import torch
import torch.nn.functional as F

from sgan.data.voc import NUM_CLASSES, normalise, resize

SEED_RULES = ("paper", "authors")
BACKGROUND_WINS_CLASSES = (4, 19)  # boat, train (VOC indices)


def _max_normalised(maps):
    """(K, H, W) non-negative maps, each divided by its maximum (all-zero maps stay zero)."""
    peak = maps.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return maps / peak


@torch.no_grad()
def class_scores(network, image, saliency, labels, input_size, normalisation, scales=(1.0,), flip=False,
                 use_seed_branch=False, device="cpu"):
    """Per-class scores (20, H, W) float32 at the image's size; see the module doc.

    image: uint8 (H, W, 3) RGB; saliency: uint8 (H, W) or None; labels: class indices 1..20.
    Each scale s runs the network on the image resized to round(input_size * s) squared.
    """
    if not scales:
        raise ValueError("scales: expected at least one scale")
    height, width = image.shape[:2]
    cam_sum = torch.zeros(NUM_CLASSES, height, width, device=device)
    seed_sum = torch.zeros_like(cam_sum)
    has_seed_branch = False
    for scale in scales:
        side = max(8, int(round(input_size * scale)))
        batch = normalise(resize(image, (side, side)), normalisation)[None].to(device)
        sal = None
        if saliency is not None:
            sal = torch.from_numpy(resize(saliency, (side, side)).copy())[None].to(device)
        if flip:
            batch = torch.cat([batch, batch.flip(-1)])
            sal = torch.cat([sal, sal.flip(-1)]) if sal is not None else None
        out = network(batch, sal)
        for key, total in (("cam", cam_sum), ("seed", seed_sum)):
            if key not in out:
                continue
            has_seed_branch |= key == "seed"
            maps = torch.relu(out[key].float())
            if flip:
                maps = maps[:1] + maps[1:].flip(-1)
            total += F.interpolate(maps[:1], size=(height, width), mode="bilinear", align_corners=False)[0]
    present = torch.zeros(NUM_CLASSES, 1, 1, device=device)
    present[[c - 1 for c in labels]] = 1.0
    scores = _max_normalised(cam_sum * present)
    if use_seed_branch:
        if not has_seed_branch:
            raise ValueError("use_seed_branch: the network has no seed branch (variant sgan-seed, "
                             "sgan-sal-seed or the baseline); set use_seed_branch=false")
        scores = scores + _max_normalised(seed_sum * present)
    return scores.cpu()


def make_seeds(scores, saliency, labels, alpha, beta, rule="paper"):
    """uint8 (H, W) seeds from scores (20, H, W) (tensor or array), saliency uint8 (H, W), labels 1..20."""
    if rule not in SEED_RULES:
        raise ValueError(f"rule: expected one of {SEED_RULES}, got {rule!r}")
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha: expected a value in (0, 1], got {alpha!r}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta: expected a value in [0, 1], got {beta!r}")
    scores = np.asarray(scores, dtype=np.float32)
    if scores.shape[0] != NUM_CLASSES or scores.shape[1:] != saliency.shape:
        raise ValueError(f"scores: expected shape ({NUM_CLASSES}, H, W) with (H, W) = saliency's "
                         f"{saliency.shape}, got {scores.shape}")
    background = saliency.astype(np.float32) / 255.0 < beta
    foreground = {}
    for c in labels:
        peak = scores[c - 1].max()
        if peak > 0:
            foreground[c] = scores[c - 1] >= alpha * peak
    seeds = np.full(saliency.shape, 255, dtype=np.uint8)
    if rule == "paper":
        claims = background.astype(np.int32)
        for mask in foreground.values():
            claims += mask
        seeds[background & (claims == 1)] = 0
        for c, mask in foreground.items():
            seeds[mask & (claims == 1)] = c
        return seeds
    seeds[background] = 0
    for c in sorted(foreground, key=lambda k: -int(foreground[k].sum())):
        seeds[foreground[c]] = c
    for c in BACKGROUND_WINS_CLASSES:
        seeds[(seeds == c) & background] = 0
    return seeds
