"""Stage-2 inference: class probabilities at the original image size (optional multi-scale and flip),
optional dense-CRF post-processing, and predictions written as VOC palette PNGs.

The network's logits are upsampled bilinearly to the image's size before the softmax and the
argmax (docs/design.md §5); with several scales or the flip, the probabilities are averaged.
"""
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sgan.data.voc_classes import voc_palette
from sgan.utils.io import save_png


def scaled_size(height, width, scale):
    """(h, w) of the network input for one test scale: a float multiplies both sides, an int is the
    length of the longer side (the aspect ratio is kept)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
        raise ValueError(f"scale: expected a positive factor (float) or a longer-side length (int), got {scale!r}")
    factor = scale / max(height, width) if isinstance(scale, int) else scale
    return max(1, int(round(height * factor))), max(1, int(round(width * factor)))


@torch.no_grad()
def predict_probabilities(model, image, scales=(1.0,), flip=False):
    """Class probabilities (K, H, W) float32 of one normalised image (3, H, W) at its own size.

    For each scale the image is resized (bilinear), the logits are upsampled to (H, W), softmaxed,
    and the probabilities of all scales (and of the mirrored input with ``flip``) are averaged.
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image: expected a normalised (3, H, W) tensor, got shape {tuple(image.shape)}")
    if not scales:
        raise ValueError("scales: expected at least one scale")
    height, width = image.shape[1:]
    total, count = None, 0
    for scale in scales:
        size = scaled_size(height, width, scale)
        batch = image[None]
        if size != (height, width):
            batch = F.interpolate(batch, size=size, mode="bilinear", align_corners=False)
        if flip:
            batch = torch.cat([batch, batch.flip(-1)])
        logits = F.interpolate(model(batch).float(), size=(height, width), mode="bilinear", align_corners=False)
        if flip:
            logits = torch.stack([logits[0], logits[1].flip(-1)])
        probabilities = logits.softmax(dim=1).sum(dim=0)
        total = probabilities if total is None else total + probabilities
        count += logits.shape[0]
    return total / count


def label_image(labels):
    """(H, W) integer labels in 0..255 -> PIL 'P' image with the VOC palette."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise ValueError(f"labels: expected a 2-d integer array, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"labels: values must fit a palette index 0..255, got [{labels.min()}, {labels.max()}]")
    image = Image.fromarray(labels.astype(np.uint8))   # mode L; putpalette turns it into P
    image.putpalette(voc_palette())
    return image


def save_label_png(path, labels):
    """Write (H, W) labels as a VOC palette PNG, atomically."""
    save_png(path, label_image(labels))


def read_label_png(path, name="label map"):
    """Indices (H, W) uint8 of a palette or grayscale label PNG (never colours: PIL, not cv2)."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(f"{name} {path}: expected a palette (P) or grayscale (L) PNG of class "
                             f"indices, got mode {image.mode}")
        return np.array(image)
