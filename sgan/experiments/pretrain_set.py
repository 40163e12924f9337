"""A synthetic classification set for pretraining the backbone: the demo's stand-in for ImageNet.

``sgan pretrain`` trains the VGG-16 backbone as a multi-label classifier on these images before
any stage of the method sees the demo's benchmark (sgan.experiments.synthetic), as the paper's networks start
from ImageNet weights. The set is *disjoint* from the benchmark: none of its shapes, textures or
backgrounds is one the benchmark draws, and its classes are not VOC classes.

* 24 classes: a shape (ring, cross, crescent, bow tie) times a colour family (six 60° sectors of
  hue, centred between the hues of the benchmark's parts), as ImageNet's classes depend on shape
  and colour; the texture (concentric bands, zigzag, speckle, grid lines) is drawn at random. The
  benchmark's bodies are ellipses, polygons, stars and blobs with solid, striped, checkered or
  blotched textures, its parts solid, striped, dotted or checkered ellipses;
* backgrounds are colour plasma or a two-colour gradient crossed by thin lines (the benchmark's
  are sky, water, grass, road, wall, bricks, tiles and indoor light);
* 1 to 3 objects per image, of 1 or 2 classes, multi-hot labels.

Image ``index`` of a set with seed ``seed`` is drawn from its own stream seeded by (seed, index),
so the set is reproducible and needs no files: :class:`PretrainSet` draws each image when asked.
"""
import numpy as np
import torch

from sgan.data.voc import normalise
from sgan.experiments.synthetic import _blur, _rgb, _smooth_noise

SHAPES = ("ring", "cross", "crescent", "bowtie")
TEXTURES = ("concentric", "zigzag", "speckle", "grid")
HUE_FAMILIES = ("red-orange", "yellow-green", "green-cyan", "cyan-blue", "blue-purple", "magenta-red")
CLASSES = tuple(f"{hue}-{shape}" for shape in SHAPES for hue in HUE_FAMILIES)
NUM_CLASSES = len(CLASSES)
OBJECT_RADIUS = (0.16, 0.34)   # fraction of min(H, W)


def _shape(kind, u, v):
    """Bool mask of a unit-size shape in its own rotated coordinates (u, v in object radii)."""
    rho = np.hypot(u, v)
    if kind == "ring":
        return (rho <= 1.0) & (rho >= 0.55)
    if kind == "cross":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0) & ((np.abs(u) <= 0.3) | (np.abs(v) <= 0.3))
    if kind == "crescent":
        return (rho <= 1.0) & (np.hypot(u - 0.45, v) > 0.8)
    if kind == "bowtie":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.9 * np.abs(u) + 0.08)
    raise ValueError(f"shape: expected one of {SHAPES}, got {kind!r}")


def _texture(kind, rng, u, v, period):
    """A two-tone pattern in [0, 1] over pixel coordinates (u, v) rotated with the object."""
    if kind == "concentric":
        return (np.sin(2 * np.pi * np.hypot(u, v) / period) > 0).astype(np.float64)
    if kind == "zigzag":
        wave = np.abs((u / period) % 2.0 - 1.0) * period
        return (np.sin(2 * np.pi * (v + wave) / period) > 0).astype(np.float64)
    if kind == "speckle":
        return (_blur(rng.random(u.shape), 0.7) > 0.5).astype(np.float64)
    if kind == "grid":
        return (((u / period) % 1.0 < 0.22) | ((v / period) % 1.0 < 0.22)).astype(np.float64)
    raise ValueError(f"texture: expected one of {TEXTURES}, got {kind!r}")


def _background(rng, height, width):
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    first, second = _rgb(rng.random(), 0.2 + 0.6 * rng.random(), 0.3 + 0.6 * rng.random()), \
        _rgb(rng.random(), 0.2 + 0.6 * rng.random(), 0.3 + 0.6 * rng.random())
    if rng.random() < 0.5:   # colour plasma
        t = _smooth_noise(rng, height, width, int(rng.integers(2, 6)))[..., None]
    else:                    # gradient crossed by thin lines
        angle = rng.random() * np.pi
        ramp = xs * np.cos(angle) + ys * np.sin(angle)
        t = ((ramp - ramp.min()) / (np.ptp(ramp) + 1e-9))[..., None]
    image = first * t + second * (1 - t)
    if rng.random() < 0.5:
        for _ in range(int(rng.integers(2, 6))):
            angle, offset = rng.random() * np.pi, rng.random() * max(height, width)
            line = np.abs(xs * np.cos(angle) + ys * np.sin(angle) - offset) < 1.0
            image[line] = _rgb(rng.random(), 0.5, 0.9)
    return image + 0.04 * (rng.random((height, width, 1)) - 0.5)


def draw(seed, index, image_size):
    """Image ``index`` of the set: (uint8 RGB (H, W, 3), float32 multi-hot labels (NUM_CLASSES,)).
    Hue sector k spans [k/6, (k+1)/6) (k/6 + 1/12 at its centre; the benchmark's parts have hues k/6)."""
    height, width = image_size
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    image = _background(rng, height, width)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    scale = float(min(height, width))
    classes = rng.choice(NUM_CLASSES, size=1 + int(rng.random() < 0.4), replace=False)
    labels = np.zeros(NUM_CLASSES, np.float32)
    for label in list(classes) + list(rng.choice(classes, size=int(rng.integers(0, 2)))):
        radius = scale * rng.uniform(*OBJECT_RADIUS)
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        angle = rng.random() * 2 * np.pi
        du, dv = xs - cx, ys - cy
        u = du * np.cos(angle) + dv * np.sin(angle)
        v = -du * np.sin(angle) + dv * np.cos(angle)
        shape = _shape(SHAPES[label // len(HUE_FAMILIES)], u / radius, v / radius)
        if shape.sum() < 0.02 * height * width:
            continue
        pattern = _texture(TEXTURES[int(rng.integers(len(TEXTURES)))], rng, u, v, (0.06 + 0.04 * rng.random()) * scale)
        hue = (label % len(HUE_FAMILIES) + rng.random()) / len(HUE_FAMILIES)   # the family's 60° sector
        light, dark = _rgb(hue, 0.3 + 0.6 * rng.random(), 0.85), _rgb(hue + 0.05, 0.6, 0.35)
        texture = light * pattern[..., None] + dark * (1 - pattern[..., None])
        image = np.where(shape[..., None], texture, image)
        labels[label] = 1.0
    if not labels.any():   # every object too small: redraw under another index of the same stream
        return draw(seed, index + 1_000_003, image_size)
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), labels


class PretrainSet(torch.utils.data.Dataset):
    """``num_images`` images of the set drawn with ``seed`` at ``image_size`` (H, W), normalised in
    ``normalisation`` (sgan.data.voc.normalise). Item: {"image": (3, H, W) float32, "labels": (24,)}."""

    def __init__(self, num_images, image_size, seed, normalisation="imagenet_rgb"):
        self.num_images, self.image_size, self.seed = int(num_images), tuple(image_size), int(seed)
        self.normalisation = normalisation

    def __len__(self):
        return self.num_images

    def __getitem__(self, index):
        image, labels = draw(self.seed, index, self.image_size)
        return {"image": normalise(image, self.normalisation),
                "labels": torch.from_numpy(labels)}
