"""Stage-1 figures (the paper's Fig. 4 style), drawn with matplotlib's Agg backend.

For each image, one PNG ``<out_dir>/<id>.png`` with three rows:

1. the input, the saliency map, the binary saliency mask at feature resolution (as the first
   saliency-guided variant's attention sees it; white = salient), the initial seeds and the final seeds (VOC colours, unlabelled in white);
2. for each variant (name -> checkpoint), the CAM: max over the image's classes of the
   max-normalised class scores, over the image;
3. for each variant with attention, the attention column of one pixel (how much every position
   attends to it, :func:`sgan.ops.attention_column`), with the pixel marked.

The pixel is given as (y, x) fractions of the image, or chosen per image as the CAM peak of the
image's first class under the first variant with attention.
"""
import os

import numpy as np
import torch

from sgan.data.voc import normalise, resize
from sgan.ops import attention_column
from sgan.seeds import class_scores
from sgan.synthetic import voc_palette
from sgan.utils.io import atomic_writer

UNLABELLED_COLOUR = (255, 255, 255)


def colour_seeds(seeds):
    """uint8 (H, W) seeds -> uint8 (H, W, 3) RGB with the VOC palette, 255 in light grey."""
    palette = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3).copy()
    palette[255] = UNLABELLED_COLOUR
    return palette[seeds]


@torch.no_grad()
def attention_map(network, image, saliency, input_size, normalisation, pixel, backend, device):
    """(column (h, w) numpy, mask (h, w) numpy bool, feature pixel (r, c)) for an SGAN network.

    pixel: (y, x) fractions of the image.
    """
    batch = normalise(resize(image, (input_size, input_size)), normalisation)[None].to(device)
    sal = torch.from_numpy(resize(saliency, (input_size, input_size)).copy())[None].to(device)
    features, key, query, mask = network.attention_inputs(batch, sal)
    h, w = features.shape[-2:]
    row = min(h - 1, max(0, int(pixel[0] * h)))
    col = min(w - 1, max(0, int(pixel[1] * w)))
    module = network.attention
    column = attention_column(features, key, query, mask, (row, col), shift=module.shift,
                              background=module.background, scale=module.scale, eps=module.eps,
                              backend=backend)
    return column[0].float().cpu().numpy(), mask[0].cpu().numpy(), (row, col)


def render(path, image_id, image, saliency, seeds0, seeds, variants, labels, input_size, pixel=None,
           backend="auto", device="cpu"):
    """Draw the figure of one image into ``path`` (PNG, written atomically).

    variants: list of (name, network in eval mode, model_info); seeds0/seeds: uint8 (H, W) or None.
    pixel: (y, x) fractions or None (the CAM peak, see the module doc).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cams = []
    for name, network, info in variants:
        scores = class_scores(network, image, saliency, labels, input_size, info["normalisation"], device=device)
        cams.append(scores[[c - 1 for c in labels]].amax(0).numpy())
    attention_variants = [(i, v) for i, v in enumerate(variants) if hasattr(v[1], "attention")]
    if pixel is None and attention_variants:
        first = cams[attention_variants[0][0]]
        peak = np.unravel_index(int(np.argmax(first)), first.shape)
        pixel = ((peak[0] + 0.5) / first.shape[0], (peak[1] + 0.5) / first.shape[1])
    columns, mask = [], None
    for _, (name, network, info) in attention_variants:
        columns.append((name,) + attention_map(network, image, saliency, input_size, info["normalisation"],
                                               pixel, backend, device))
        if mask is None and getattr(network, "uses_saliency", False):  # SGAN-SAL-SEED's mask is all True
            mask = columns[-1][2]

    ncols = max(5, len(variants), len(columns))
    nrows = 2 + bool(columns)
    figure, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.3 * nrows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    first_row = [("input", image, None), ("saliency", saliency, "gray"),
                 ("saliency mask", mask, "gray"),
                 ("initial seeds", colour_seeds(seeds0) if seeds0 is not None else None, None),
                 ("final seeds", colour_seeds(seeds) if seeds is not None else None, None)]
    for axis, (title, data, cmap) in zip(axes[0], first_row):
        if data is not None:
            bounds = {"vmin": 0, "vmax": 1} if data is mask else {}  # an all-False mask must show black
            axis.imshow(data, cmap=cmap, interpolation="nearest", **bounds)
            axis.set_title(title, fontsize=8)
    for axis, (name, _, _), cam in zip(axes[1], variants, cams):
        axis.imshow(image)
        axis.imshow(cam, cmap="jet", alpha=0.5, vmin=0, vmax=1)
        axis.set_title(f"CAM {name}", fontsize=8)
    for axis, (name, column, _, (row, col)) in zip(axes[2] if columns else [], columns):
        axis.imshow(column, cmap="viridis", interpolation="nearest", vmin=min(0.0, float(column.min())))
        axis.plot([col], [row], marker="x", color="red", markersize=8, mew=2)
        axis.set_title(f"attention to pixel {name}", fontsize=8)
    figure.suptitle(f"{image_id} (classes {labels})", fontsize=9)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_writer(path, "wb") as stream:
        figure.savefig(stream, format="png", dpi=100)
    plt.close(figure)
    return path
