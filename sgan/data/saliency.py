"""Saliency maps to binary masks at feature resolution."""
import numpy as np
import torch
import torch.nn.functional as F

from sgan.data.zoom import zoom_linear

MASK_RESIZES = ("bilinear", "corner_aligned")


def saliency_to_mask(saliency, size, threshold=0.06, zero_border=True, resize="bilinear"):
    """Binarise a saliency map at feature resolution (docs/design.md §5).

    saliency: (H, W), (B, H, W) or (B, 1, H, W) tensor or array, uint8 in 0..255 or float in [0, 1].
    size: (h, w) of the features. The map is resized to ``size``, scaled to [0, 1] (uint8 / 255 in
    float32), compared ``> threshold``; with ``zero_border`` the 1-pixel border is forced non-salient.
    ``resize``: ``bilinear`` scales to [0, 1] first, then ``F.interpolate(align_corners=False)``;
    ``corner_aligned`` (the authors') resizes the map as it is with sgan.data.zoom.zoom_linear
    (scipy's ``zoom(order=1)``, a uint8 map rounded back to uint8), then scales it.
    Returns a bool tensor (h, w) or (B, h, w), matching the input's batch dimension.
    """
    if isinstance(saliency, np.ndarray):
        saliency = torch.from_numpy(saliency if saliency.flags.writeable else saliency.copy())
    if not isinstance(saliency, torch.Tensor):
        raise TypeError(f"saliency: expected a tensor or numpy array, got {type(saliency).__name__}")
    if saliency.dim() not in (2, 3, 4) or (saliency.dim() == 4 and saliency.shape[1] != 1):
        raise ValueError(f"saliency: expected shape (H, W), (B, H, W) or (B, 1, H, W), got {tuple(saliency.shape)}")
    if saliency.numel() == 0:
        raise ValueError(f"saliency: expected a non-empty map, got shape {tuple(saliency.shape)}")
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(v, int) and v > 0 for v in size)):
        raise ValueError(f"size: expected a pair of positive ints (h, w), got {size!r}")
    if not 0.0 <= float(threshold) < 1.0:
        raise ValueError(f"threshold: expected a value in [0, 1), got {threshold!r}")
    if resize not in MASK_RESIZES:
        raise ValueError(f"resize: expected one of {MASK_RESIZES}, got {resize!r}")
    squeeze = saliency.dim() == 2
    maps = saliency.reshape(-1, 1, *saliency.shape[-2:])
    if resize == "corner_aligned" and tuple(maps.shape[-2:]) != tuple(size):
        maps = zoom_linear(maps, tuple(size))
    if maps.dtype == torch.uint8:
        maps = maps.float() / 255.0
    elif maps.is_floating_point():
        lo, hi = float(maps.min()), float(maps.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"saliency: a float map must lie in [0, 1], got values in [{lo}, {hi}]")
        maps = maps.float()
    else:
        raise TypeError(f"saliency: expected uint8 (0..255) or a float map in [0, 1], got {maps.dtype}")
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    mask = maps[:, 0] > threshold
    if zero_border:
        mask[:, 0, :] = False
        mask[:, -1, :] = False
        mask[:, :, 0] = False
        mask[:, :, -1] = False
    return mask[0] if squeeze else mask
