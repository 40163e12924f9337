"""Stage 2's training set (docs/design.md §5): every image of the train list with its seeds
``<seeds_dir>/<id>.png``, resized, cropped, flipped and colour-jittered from the sample's seed.

:class:`SegTrainSet` is what the ``train-seg`` step (sgan.pipeline.train_seg) trains DeepLab on;
:func:`jitter_colours` is its colour jitter.
"""
import os
import random

import numpy as np
import torch
from torch.utils.data import Dataset

from sgan.data.logits_size import resize_images, resize_seeds
from sgan.data.voc import load_rgb, normalise, read_gray, resize


class SegTrainSet(Dataset):
    """Stage-2 training samples, indexed by ``(index, sample_seed)`` pairs (sgan.train.order).

    Returns {"image": float32 (3, crop, crop) normalised, "seeds": int64 (h, w) at the logits'
    size ``output_size``, "crf_image": uint8 (h, w, 3) RGB for the CRF, "index": int}.
    """

    def __init__(self, paths, ids, seeds_dir, *, resize_to, crop, flip, color_jitter, normalisation,
                 output_size):
        if not isinstance(crop, int) or not isinstance(resize_to, int) or not 0 < crop <= resize_to:
            raise ValueError(f"train_seg.crop: expected a positive int <= train_seg.resize ({resize_to!r}), "
                             f"got {crop!r}")
        if not 0 <= color_jitter < 1:
            raise ValueError(f"train_seg.color_jitter: expected a number in [0, 1), got {color_jitter!r}")
        self.paths, self.ids, self.seeds_dir = paths, list(ids), seeds_dir
        self.resize_to, self.crop, self.flip, self.color_jitter = resize_to, crop, flip, color_jitter
        self.normalisation, self.output_size = normalisation, tuple(output_size)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, item):
        index, sample_seed = item
        rng = random.Random(sample_seed)
        image_id = self.ids[index]
        size = (self.resize_to, self.resize_to)
        image = resize(load_rgb(self.paths.image(image_id)), size)
        seeds = resize(read_gray(os.path.join(self.seeds_dir, image_id + ".png")), size, nearest=True)
        top, left = rng.randint(0, self.resize_to - self.crop), rng.randint(0, self.resize_to - self.crop)
        window = (slice(top, top + self.crop), slice(left, left + self.crop))
        image, seeds = image[window], seeds[window]
        if self.flip and rng.random() < 0.5:
            image, seeds = image[:, ::-1], seeds[:, ::-1]
        image = jitter_colours(np.array(image), rng, self.color_jitter)   # np.array: a writable copy
        small_seeds = resize_seeds(torch.from_numpy(np.array(seeds))[None], self.output_size)[0]
        return {"image": normalise(image, self.normalisation), "seeds": small_seeds,
                "crf_image": torch.from_numpy(np.array(resize_images(image[None], self.output_size)[0])),
                "index": index}


def jitter_colours(image, rng, strength):
    """Random brightness, contrast and saturation (factors uniform in 1 ± strength, in random order)
    of a uint8 (H, W, 3) RGB image; returns uint8."""
    if strength == 0:
        return image
    pixels = image.astype(np.float32)
    operations = ["brightness", "contrast", "saturation"]
    rng.shuffle(operations)
    for operation in operations:
        factor = rng.uniform(1 - strength, 1 + strength)
        gray = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if operation == "brightness":
            pixels = pixels * factor
        elif operation == "contrast":
            pixels = (pixels - gray.mean()) * factor + gray.mean()
        else:
            pixels = (pixels - gray[..., None]) * factor + gray[..., None]
        pixels = np.clip(pixels, 0, 255)
    return np.rint(pixels).astype(np.uint8)
