"""Stage-1 figures (the paper's Fig. 4 style), drawn with matplotlib (no pyplot state).

For each image, one PNG ``<out_dir>/<id>.png`` titled with the image's class names, with three rows:

1. the input, the saliency map, the binary saliency mask at feature resolution (as the first
   saliency-guided variant's attention sees it; white = salient), the initial seeds and the final
   seeds (VOC colours, unlabelled in white, with a legend naming the colours);
2. for each variant (name -> checkpoint), the CAM: max over the image's classes of the
   max-normalised class scores, over the image, with a colour bar;
3. for each variant with attention, the attention column of one pixel (how much every position
   attends to it, :func:`sgan.ops.attention_column`), with the pixel marked and a colour bar.

Maps at feature resolution (the mask, the attention columns) are drawn over the image's extent, so
every panel has the image's aspect ratio and positions line up with the input. The pixel is given
as (y, x) fractions of the image, or chosen per image as the CAM peak of the image's first class
under the first variant with attention.
"""
import os

import numpy as np
import torch

from sgan.data.voc import normalise, resize
from sgan.data.voc_classes import CLASS_NAMES, IGNORE_INDEX, voc_palette
from sgan.ops import attention_column
from sgan.seedmaps import class_scores
from sgan.utils.io import atomic_writer

UNLABELLED_COLOUR = (255, 255, 255)


def colour_seeds(seeds):
    """uint8 (H, W) seeds -> uint8 (H, W, 3) RGB with the VOC palette, 255 (unlabelled) in white."""
    palette = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3).copy()
    palette[IGNORE_INDEX] = UNLABELLED_COLOUR
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


def class_names(labels):
    """VOC class names of label indices 1..20 (0 = background)."""
    return [CLASS_NAMES[label - 1] for label in labels]


def draw(image_id, image, saliency, seeds0, seeds, variants, labels, input_size, pixel=None,
         backend="auto", device="cpu"):
    """The matplotlib Figure of one image (see the module doc); :func:`render` saves it.

    image: uint8 (H, W, 3); saliency: uint8 (H, W); seeds0/seeds: uint8 (H, W) or None;
    variants: list of (name, network in eval mode, model_info); labels: class indices 1..20;
    pixel: (y, x) fractions or None (the CAM peak, see the module doc).
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

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

    height, width = image.shape[:2]
    over_image = {"extent": (-0.5, width - 0.5, height - 0.5, -0.5)}  # a feature map drawn over the image
    ncols = max(5, len(variants), len(columns))
    nrows = 2 + bool(columns)
    figure_width, left, right, wspace = 2.4 * ncols, 0.02, 0.95, 0.5  # wspace: room for colour bars
    cell_width = figure_width * (right - left) / (ncols + wspace * (ncols - 1))  # inches
    cell_height = cell_width * min(1.5, max(0.5, height / width))
    row_gap, top_margin, bottom_margin = 0.65, 0.5, 0.1  # inches: titles, the seed legend, the suptitle
    figure_height = nrows * cell_height + (nrows - 1) * row_gap + top_margin + bottom_margin
    figure = Figure(figsize=(figure_width, figure_height))
    axes = figure.subplots(nrows, ncols, squeeze=False, gridspec_kw={
        "left": left, "right": right, "wspace": wspace, "hspace": row_gap / cell_height,
        "top": 1 - top_margin / figure_height, "bottom": bottom_margin / figure_height})
    for axis in axes.ravel():
        axis.axis("off")
    first_row = [("input", image, {}), ("saliency", saliency, {"cmap": "gray", "vmin": 0, "vmax": 255}),
                 ("saliency mask (white: salient)", mask, {"cmap": "gray", "vmin": 0, "vmax": 1, **over_image}),
                 ("initial seeds", colour_seeds(seeds0) if seeds0 is not None else None, {}),
                 ("final seeds", colour_seeds(seeds) if seeds is not None else None, {})]
    for axis, (title, data, options) in zip(axes[0], first_row):
        if data is not None:
            axis.imshow(data, interpolation="nearest", **options)
            axis.set_title(title, fontsize=8)
    if seeds0 is not None or seeds is not None:
        palette = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
        legend = [("background", palette[0])] + [
            (name, palette[label]) for name, label in zip(class_names(labels), labels)] + [
            ("unlabelled", UNLABELLED_COLOUR)]
        axes[0, 4].legend(handles=[Patch(facecolor=np.array(colour) / 255, edgecolor="0.5", label=name)
                                   for name, colour in legend],
                          loc="upper right", bbox_to_anchor=(1.0, 0.0), ncol=min(3, len(legend)), fontsize=7,
                          frameon=False)
    cam_image = None
    for axis, (name, _, _), cam in zip(axes[1], variants, cams):
        axis.imshow(image)
        cam_image = axis.imshow(cam, cmap="jet", alpha=0.5, vmin=0, vmax=1)
        axis.set_title(f"CAM {name}", fontsize=8)
    if cam_image is not None:  # one scale (0..1) for every CAM panel
        _colour_bar(figure, axes[1, len(variants) - 1], cam_image, "CAM / max")
    for axis, (name, column, _, (row, col)) in zip(axes[2] if columns else [], columns):
        shown = axis.imshow(column, cmap="viridis", interpolation="nearest", vmin=min(0.0, float(column.min())),
                            **over_image)
        y = (row + 0.5) * height / column.shape[0] - 0.5
        x = (col + 0.5) * width / column.shape[1] - 0.5
        axis.plot([x], [y], marker="x", color="red", markersize=8, mew=2)
        axis.set_title(f"{name}: attention\nto the marked pixel", fontsize=8)
        _colour_bar(figure, axis, shown, "attention weight")
    figure.suptitle(f"{image_id}: {', '.join(class_names(labels))}", fontsize=10)
    return figure


def _colour_bar(figure, axis, mappable, label):
    """A colour bar just right of ``axis``, leaving the panel's size as it is."""
    from matplotlib.ticker import MaxNLocator

    bar = figure.colorbar(mappable, cax=axis.inset_axes([1.04, 0.0, 0.05, 1.0]))
    bar.locator = MaxNLocator(nbins=4)
    bar.update_ticks()
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=7)


def render(path, image_id, image, saliency, seeds0, seeds, variants, labels, input_size, pixel=None,
           backend="auto", device="cpu"):
    """Draw the figure of one image (:func:`draw`) into ``path`` (PNG, written atomically)."""
    figure = draw(image_id, image, saliency, seeds0, seeds, variants, labels, input_size, pixel, backend, device)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_writer(path, "wb") as stream:
        figure.savefig(stream, format="png", dpi=100)
    return path
