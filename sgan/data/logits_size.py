"""Seeds and images brought to the logits' size: nearest-neighbour seeds (both stages) and the
antialiased uint8 image that the dense CRF of the boundary loss sees (stage 2)."""
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sgan.ops.dispatch import describe


def resize_seeds(seeds, size):
    """Seeds (B, H, W) integer resized to ``size`` = (h, w) by nearest neighbour (torch's
    ``F.interpolate(mode="nearest")``: source index floor(i * H / h)), the way the pipeline brings
    image-resolution seeds to the logits' resolution. Returns int64."""
    if not isinstance(seeds, Tensor) or seeds.dim() != 3:
        raise ValueError(f"seeds: expected a (B, H, W) tensor, got "
                         f"{describe(seeds) if isinstance(seeds, Tensor) else type(seeds).__name__}")
    if seeds.dtype.is_floating_point or seeds.dtype.is_complex or seeds.dtype == torch.bool:
        raise TypeError(f"seeds: expected an integer tensor, got {seeds.dtype}")
    size = tuple(int(s) for s in size)
    if tuple(seeds.shape[1:]) == size:
        return seeds.to(torch.int64)
    resized = F.interpolate(seeds[:, None].to(torch.float32), size=size, mode="nearest")
    return resized[:, 0].round().to(torch.int64)


def as_uint8_images(images, batch=None, name="images"):
    """A C-contiguous uint8 (B, H, W, 3) numpy array from a tensor or an array (B = ``batch`` if given)."""
    if isinstance(images, Tensor):
        if images.dtype != torch.uint8:
            raise TypeError(f"{name}: expected uint8 RGB images (B, H, W, 3), got dtype {images.dtype}")
        images = images.detach().cpu().numpy()
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{name}: expected a uint8 tensor or numpy array (B, H, W, 3), got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise TypeError(f"{name}: expected uint8 RGB images (B, H, W, 3), got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[3] != 3 or (batch is not None and images.shape[0] != batch):
        raise ValueError(f"{name}: expected shape (B={batch if batch is not None else 'B'}, H, W, 3) RGB, "
                         f"got {tuple(images.shape)}")
    return np.ascontiguousarray(images)


def resize_images(images, size):
    """uint8 RGB images (B, H, W, 3) resized to ``size`` = (h, w) with antialiased bilinear
    interpolation, rounded back to uint8: the image the CRF of the boundary loss sees."""
    images = as_uint8_images(images)
    size = tuple(int(s) for s in size)
    if images.shape[1:3] == size:
        return images
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).to(torch.float32)
    resized = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
