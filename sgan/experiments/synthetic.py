"""A deterministic synthetic weakly-supervised segmentation benchmark in the PASCAL VOC 2012 layout.

Nothing can be downloaded on a fresh machine, so the demo and the pipeline tests run on data made
here. ``generate(root, ...)`` writes, under ``root``::

    VOC2012/JPEGImages/<id>.jpg                 RGB images
    VOC2012/SegmentationClass/<id>.png          VOC palette PNG (indices 0..20, 255 = void band)
    VOC2012/SegmentationClassAug/<id>.png       grayscale indices (0..20, no void band)
    VOC2012/Annotations/<id>.xml                VOC XML, one <object> per visible instance
    VOC2012/ImageSets/Segmentation/{train,train_aug,val}.txt
    saliency/<id>.png                           8-bit grayscale saliency maps (0..255)
    parts/<id>.png                              the discriminative parts (1) of the objects, for the
                                                benchmark's measured properties (no step reads it)
    scenes.json                                 each image's background recipe
    synthetic.json                              the generation parameters, written last

How the data tests the method's claims:

* every object is a large *body* whose shape (ellipse, polygon, star, blob) and texture are drawn
  from one pool shared by all classes, plus a small *part* (about a third of the body's radius,
  typically a tenth of the object's area) whose colour and pattern are specific to the class: a
  classifier needs only the part, so its CAMs favour it over the body, and the saliency-guided
  attention has to spread them over the whole salient object; at the demo's 160x160 an object
  spans tens of positions of the 20x20 feature map, its part a few;
* some classes come with a typical background in most images (aeroplane and bird with sky,
  boat with water, car, bus and train with road, cow, horse and sheep with grass), so CAMs leak
  into that background, as boats with water do in VOC; those backgrounds also appear, less
  often, without the class;
* images hold one or two classes, one to three instances each, of varied sizes, plus
  *distractors* (bodies without a part, ground-truth background) in some images;
* the saliency maps are not the masks: blurred edges, objects partly missed (a dimmed side),
  distractors marked salient, faint false blobs on the background and low-level noise.

Every image is drawn from its own random stream, seeded by (seed, image index), so the output is
byte-for-byte reproducible and the first images do not depend on how many are requested.
"""
import argparse
import colorsys
import json
import os
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image

from sgan.data.voc_classes import CLASS_NAMES, IGNORE_INDEX, voc_palette
from sgan.utils.io import atomic_writer

# The order in which ``classes=k`` picks k classes: the ones with a typical background come first,
# so small synthetic sets keep the co-occurrence effect.
DEFAULT_CLASS_ORDER = (
    "aeroplane", "boat", "cow", "car", "cat", "person", "bird", "sheep", "bus", "dog", "horse",
    "train", "bottle", "chair", "bicycle", "motorbike", "pottedplant", "sofa", "tvmonitor",
    "diningtable",
)

TYPICAL_BACKGROUND = {
    "aeroplane": "sky", "bird": "sky", "boat": "water", "car": "road", "bus": "road",
    "train": "road", "cow": "grass", "horse": "grass", "sheep": "grass",
}
SCENE_BACKGROUNDS = ("sky", "water", "grass", "road")
GENERIC_BACKGROUNDS = ("wall", "bricks", "tiles", "indoor")

PROB_TYPICAL_BACKGROUND = 0.8   # image holding a class with a typical background gets it
PROB_SCENE_BACKGROUND = 0.25    # any other image gets one of the scene backgrounds anyway
# Object sizes, as fractions of min(H, W): body radius with at most two objects / with more;
# the part's radius and its centre's offset from the body's centre, as fractions of the body radius.
BODY_RADIUS = (0.2, 0.34)
BODY_RADIUS_CROWDED = (0.15, 0.26)
PART_RADIUS = (0.28, 0.38)
PART_OFFSET = (0.2, 0.5)
PROB_TWO_CLASSES = 0.35
PROB_DISTRACTORS = 0.45
PART_PATTERNS = ("solid", "stripes", "dots", "checker")
BODY_SHAPES = ("ellipse", "polygon", "star", "blob")
MANIFEST = "synthetic.json"
SCENES = "scenes.json"
FORMAT_VERSION = 3   # bumped whenever the drawn content changes, so stale datasets are redrawn


def resolve_classes(classes):
    """``classes``: an int k (the first k of DEFAULT_CLASS_ORDER) or a sequence of VOC class names.

    Returns the chosen names as a tuple, in VOC index order.
    """
    if isinstance(classes, bool) or not isinstance(classes, (int, list, tuple)):
        raise TypeError(f"classes: expected an int or a sequence of VOC class names, got {classes!r}")
    if isinstance(classes, int):
        if not 1 <= classes <= len(CLASS_NAMES):
            raise ValueError(f"classes: expected a count in 1..{len(CLASS_NAMES)}, got {classes}")
        names = DEFAULT_CLASS_ORDER[:classes]
    else:
        unknown = [name for name in classes if name not in CLASS_NAMES]
        if unknown or not classes:
            raise ValueError(f"classes: expected VOC class names from {CLASS_NAMES}, got {list(classes)}")
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes: names must be distinct, got {list(classes)}")
        names = tuple(classes)
    return tuple(sorted(names, key=CLASS_NAMES.index))


# --------------------------------------------------------------------------------------------
# Pixel fields (all vectorised over the whole image)
# --------------------------------------------------------------------------------------------

def _upsample_bilinear(grid, height, width):
    """Bilinear upsampling of a (h, w) float grid to (height, width), corners aligned."""
    gh, gw = grid.shape
    ys = np.linspace(0.0, gh - 1.0, height)
    xs = np.linspace(0.0, gw - 1.0, width)
    y0 = np.minimum(ys.astype(np.int64), gh - 2)
    x0 = np.minimum(xs.astype(np.int64), gw - 2)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _smooth_noise(rng, height, width, cells):
    """Low-frequency noise in [0, 1], (height, width): a (cells + 1)² random grid, upsampled."""
    grid = rng.random((cells + 1, cells + 1))
    return _upsample_bilinear(grid, height, width)


def _box_blur(field, radius):
    """Mean over a (2·radius + 1)² window with edge replication, (H, W) float -> (H, W)."""
    if radius <= 0:
        return field
    padded = np.pad(field, radius, mode="edge")
    size = 2 * radius + 1
    rows = np.cumsum(np.pad(padded, ((1, 0), (0, 0))), axis=0)
    rows = (rows[size:] - rows[:-size]) / size
    cols = np.cumsum(np.pad(rows, ((0, 0), (1, 0))), axis=1)
    return (cols[:, size:] - cols[:, :-size]) / size


def _blur(field, sigma):
    """Approximate Gaussian blur: three box blurs whose combined variance is about sigma²."""
    radius = int(round((np.sqrt(4.0 * sigma * sigma + 1.0) - 1.0) / 2.0))
    for _ in range(3):
        field = _box_blur(field, radius)
    return field


def _rgb(hue, saturation, value):
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value))


def _pattern(kind, ys, xs, period, angle):
    """A pattern in [0, 1] over the coordinate grids: 'solid', 'stripes', 'dots' or 'checker'."""
    u = xs * np.cos(angle) + ys * np.sin(angle)
    v = -xs * np.sin(angle) + ys * np.cos(angle)
    if kind == "solid":
        return np.zeros_like(u)
    if kind == "stripes":
        return (np.sin(2 * np.pi * u / period) > 0).astype(np.float64)
    if kind == "dots":
        du = (u / period) % 1.0 - 0.5
        dv = (v / period) % 1.0 - 0.5
        return (du * du + dv * dv < 0.09).astype(np.float64)
    if kind == "checker":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float64)
    raise ValueError(f"pattern kind: expected one of {PART_PATTERNS}, got {kind!r}")


# --------------------------------------------------------------------------------------------
# Backgrounds
# --------------------------------------------------------------------------------------------

def _background(kind, rng, height, width):
    """A textured background, (height, width, 3) float in [0, 1]."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    scale = min(height, width)
    fine = rng.random((height, width))
    if kind == "sky":
        top, bottom = _rgb(0.58 + 0.03 * rng.random(), 0.6, 0.75), _rgb(0.56, 0.25, 0.97)
        t = (ys / (height - 1))[..., None]
        image = top * (1 - t) + bottom * t
        clouds = np.clip(_smooth_noise(rng, height, width, 4) * 2.2 - 1.2, 0, 1)[..., None]
        image = image * (1 - 0.8 * clouds) + 0.8 * clouds
        return image + 0.02 * (fine[..., None] - 0.5)
    if kind == "water":
        base = _rgb(0.52 + 0.06 * rng.random(), 0.65, 0.55)
        phase = 6.0 * _smooth_noise(rng, height, width, 3)
        waves = np.sin(2 * np.pi * ys / (0.07 * scale) + phase)
        glints = (waves > 0.93).astype(np.float64) * (rng.random((height, width)) > 0.5)
        image = base * (0.8 + 0.15 * waves[..., None]) + 0.35 * glints[..., None]
        return image + 0.03 * (fine[..., None] - 0.5)
    if kind == "grass":
        base = _rgb(0.25 + 0.08 * rng.random(), 0.7, 0.5)
        blades = _blur(rng.random((height, width)), 0.6)
        streaks = np.sin(2 * np.pi * xs / (0.03 * scale) + 3 * _smooth_noise(rng, height, width, 5))
        shade = 0.7 + 0.5 * (blades - 0.5) * 3 + 0.1 * streaks
        return base * shade[..., None] * (0.85 + 0.3 * _smooth_noise(rng, height, width, 2))[..., None]
    if kind == "road":
        gray = 0.3 + 0.15 * rng.random()
        image = np.full((height, width, 3), gray) + 0.12 * (fine[..., None] - 0.5)
        lane = np.abs(ys - height * (0.55 + 0.3 * rng.random())) < 0.015 * scale
        dashes = (xs % (0.25 * scale)) < 0.14 * scale
        image[lane & dashes] = _rgb(0.14, 0.8, 0.9)
        return image
    if kind == "wall":
        color = _rgb(rng.random(), 0.15 + 0.2 * rng.random(), 0.55 + 0.3 * rng.random())
        shade = 0.8 + 0.3 * _smooth_noise(rng, height, width, 3)
        return color * shade[..., None] + 0.05 * (fine[..., None] - 0.5)
    if kind == "bricks":
        brick_h = (0.08 + 0.04 * rng.random()) * scale
        brick_w = 2.2 * brick_h
        row = np.floor(ys / brick_h)
        offset = (row % 2) * brick_w / 2
        mortar = ((ys % brick_h) < 0.15 * brick_h) | (((xs + offset) % brick_w) < 0.1 * brick_w)
        color = _rgb(0.02 + 0.06 * rng.random(), 0.55, 0.55)
        image = color * (0.85 + 0.3 * rng.random((height, width)))[..., None] * 0.9
        image[mortar] = 0.75
        return image
    if kind == "tiles":
        period = (0.1 + 0.08 * rng.random()) * scale
        check = _pattern("checker", ys, xs, period, rng.random() * np.pi / 4)
        first, second = _rgb(rng.random(), 0.2, 0.7), _rgb(rng.random(), 0.2, 0.45)
        image = first * check[..., None] + second * (1 - check[..., None])
        return image + 0.04 * (fine[..., None] - 0.5)
    if kind == "indoor":
        warm = _rgb(0.05 + 0.1 * rng.random(), 0.35, 0.65)
        cool = _rgb(0.6 * rng.random(), 0.2, 0.4)
        t = _smooth_noise(rng, height, width, 2)[..., None]
        return warm * t + cool * (1 - t) + 0.04 * (fine[..., None] - 0.5)
    raise ValueError(f"background kind: expected one of {SCENE_BACKGROUNDS + GENERIC_BACKGROUNDS}, got {kind!r}")


# --------------------------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------------------------

def _shape_mask(kind, rng, ys, xs, center, radius):
    """A filled shape of the given kind around center (cy, cx) with outer radius ~radius: bool (H, W)."""
    angle = rng.random() * 2 * np.pi
    aspect = 0.6 + 0.4 * rng.random()
    dy, dx = ys - center[0], xs - center[1]
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / radius
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / (radius * aspect)
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    if kind == "ellipse":
        limit = 1.0
    elif kind == "polygon":
        sides = int(rng.integers(3, 8))
        sector = 2 * np.pi / sides
        limit = np.cos(np.pi / sides) / np.cos((phi % sector) - np.pi / sides)
    elif kind == "star":
        points = int(rng.integers(4, 8))
        inner = 0.5 + 0.2 * rng.random()
        tri = np.abs(((phi * points / (2 * np.pi)) % 1.0) * 2 - 1)   # 1 at the tips, 0 between
        limit = inner + (1 - inner) * tri
    elif kind == "blob":
        limit = np.full_like(phi, 0.8)
        for harmonic in range(2, 5):
            limit += 0.18 * rng.random() * np.cos(harmonic * phi + 2 * np.pi * rng.random())
    else:
        raise ValueError(f"shape kind: expected one of {BODY_SHAPES}, got {kind!r}")
    return rho <= limit


def _class_part_style(label):
    """Colour (RGB) and pattern of the class's discriminative part, fixed per VOC index 1..20.

    Hues follow DEFAULT_CLASS_ORDER: the first 6 classes are 60° apart, the next 6 fill the gaps
    between them, the last 8 are offset again, so any default subset has well separated parts.
    """
    position = DEFAULT_CLASS_ORDER.index(CLASS_NAMES[label - 1])
    if position < 6:
        hue = position / 6
    elif position < 12:
        hue = (position - 6) / 6 + 1 / 12
    else:
        hue = (position - 12) / 8 + 1 / 24
    value = 0.95 if position % 2 == 0 else 0.8
    return _rgb(hue, 0.9, value), PART_PATTERNS[position % len(PART_PATTERNS)]


def _body_appearance(rng, ys, xs, scale):
    """A body texture from the pool shared by all classes (muted colours), (H, W, 3)."""
    color = _rgb(rng.random(), 0.1 + 0.3 * rng.random(), 0.35 + 0.5 * rng.random())
    kind = ("solid", "stripes", "checker", "blotches")[int(rng.integers(4))]
    if kind == "blotches":
        pattern = (_smooth_noise(rng, *ys.shape, 6) > 0.55).astype(np.float64)
    else:
        pattern = _pattern(kind, ys, xs, (0.05 + 0.05 * rng.random()) * scale, rng.random() * np.pi)
    other = color * (0.55 + 0.2 * rng.random())
    texture = color * (1 - pattern[..., None]) + other * pattern[..., None]
    return texture * (0.9 + 0.2 * rng.random(ys.shape))[..., None]


def _part_appearance(label, ys, xs, scale, rng):
    color, kind = _class_part_style(label)
    pattern = _pattern(kind, ys, xs, 0.035 * scale, (label * 0.7) % np.pi)
    texture = color * (1 - 0.6 * pattern[..., None]) + 0.1 * pattern[..., None]
    return texture * (0.92 + 0.16 * rng.random(ys.shape))[..., None]


def _place(rng, ys, xs, visible, radius_range, scale, attempts=12):
    """Centre and radius of a new object whose disc covers at most 30% of its area with earlier
    objects and at most half of any earlier object's visible pixels (`visible`: bool masks)."""
    height, width = ys.shape
    occupied = np.logical_or.reduce(visible) if visible else np.zeros(ys.shape, bool)
    for _ in range(attempts):
        radius = scale * rng.uniform(*radius_range)
        cy = rng.uniform(0.15 * height, 0.85 * height)
        cx = rng.uniform(0.15 * width, 0.85 * width)
        disc = np.hypot(ys - cy, xs - cx) <= radius
        if ((disc & occupied).sum() <= 0.3 * disc.sum()
                and all((disc & shape).sum() <= 0.5 * shape.sum() for shape in visible)):
            return (cy, cx), radius
    return None


def _draw_scene(rng, height, width, labels):
    """One image: returns image (H, W, 3) float, mask (H, W) uint8, instances, distractor masks and
    the background's kind.

    Each instance is a dict with 'label', 'mask' (visible pixels, bool) and 'part' (bool).
    """
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    scale = float(min(height, width))
    typical = [TYPICAL_BACKGROUND[CLASS_NAMES[k - 1]] for k in labels
               if CLASS_NAMES[k - 1] in TYPICAL_BACKGROUND]
    if typical and rng.random() < PROB_TYPICAL_BACKGROUND:
        kind = typical[int(rng.integers(len(typical)))]
    elif rng.random() < PROB_SCENE_BACKGROUND:
        kind = SCENE_BACKGROUNDS[int(rng.integers(len(SCENE_BACKGROUNDS)))]
    else:
        kind = GENERIC_BACKGROUNDS[int(rng.integers(len(GENERIC_BACKGROUNDS)))]
    image = _background(kind, rng, height, width)

    # Objects of the image's classes, then distractors; a class whose first instance does not fit
    # is retried smaller (the image's labels are those of the instances actually drawn).
    plans = []
    for label in labels:
        count = 1 + int(rng.choice(3, p=(0.6, 0.3, 0.1)))
        plans.extend([label] * count)
    radius_range = BODY_RADIUS if len(plans) <= 2 else BODY_RADIUS_CROWDED
    if rng.random() < PROB_DISTRACTORS:
        plans.extend([0] * (1 + int(rng.integers(2))))
    mask = np.zeros((height, width), np.uint8)
    instances, distractors = [], []
    seen = set()
    for label in plans:
        visible = [inst["mask"] for inst in instances] + distractors
        placed = _place(rng, ys, xs, visible, radius_range, scale)
        if placed is None and label and label not in seen:
            placed = _place(rng, ys, xs, visible, (0.08, 0.12), scale, attempts=50)
        if placed is None:
            continue
        center, radius = placed
        body = _shape_mask(BODY_SHAPES[int(rng.integers(len(BODY_SHAPES)))], rng, ys, xs, center, radius)
        texture = _body_appearance(rng, ys, xs, scale)
        shape = body
        part = np.zeros_like(body)
        if label:
            direction = rng.random() * 2 * np.pi
            offset = radius * rng.uniform(*PART_OFFSET)
            part_center = (center[0] + offset * np.sin(direction), center[1] + offset * np.cos(direction))
            part = _shape_mask("ellipse", rng, ys, xs, part_center, radius * rng.uniform(*PART_RADIUS)) & body
            texture = np.where(part[..., None], _part_appearance(label, ys, xs, scale, rng), texture)
        image = np.where(shape[..., None], texture, image)
        for other in instances:          # a later object occludes earlier ones
            other["mask"] &= ~shape
            other["part"] &= ~shape
        for other in distractors:
            other &= ~shape
        mask[shape] = label
        if label:
            instances.append({"label": label, "mask": shape.copy(), "part": part})
            seen.add(label)
        else:
            distractors.append(shape.copy())
    return np.clip(image, 0, 1), mask, instances, distractors, kind


def _saliency(rng, instances, distractors, height, width):
    """A saliency map with realistic errors, (H, W) uint8."""
    scale = min(height, width)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    field = np.zeros((height, width))
    for inst in instances:
        strength = np.full((height, width), rng.uniform(0.75, 1.0))
        if rng.random() < 0.35:                         # a side of the object is missed
            rows, cols = np.nonzero(inst["mask"])
            cy, cx = rows.mean(), cols.mean()
            direction = rng.random() * 2 * np.pi
            side = (ys - cy) * np.sin(direction) + (xs - cx) * np.cos(direction)
            cut = side > rng.uniform(0.0, 0.5) * np.sqrt(inst["mask"].sum() / np.pi)
            strength[cut] *= rng.uniform(0.0, 0.3)
        field = np.maximum(field, inst["mask"] * strength)
    for shape in distractors:                           # distractors look salient
        if rng.random() < 0.7:
            field = np.maximum(field, shape * rng.uniform(0.4, 0.9))
    if rng.random() < 0.3:                              # a faint false blob on the background
        blob = np.clip(_smooth_noise(rng, height, width, 3) * 3 - 2, 0, 1)
        field = np.maximum(field, blob * rng.uniform(0.3, 0.6))
    field = _blur(field, rng.uniform(0.015, 0.035) * scale)
    field += 0.04 * _smooth_noise(rng, height, width, 5)
    return np.round(np.clip(field, 0, 1) * 255).astype(np.uint8)


def _void_band(mask):
    """Pixels on an object boundary (a 4-neighbour has another label), as VOC marks with 255."""
    band = np.zeros(mask.shape, bool)
    vertical = mask[1:] != mask[:-1]
    horizontal = mask[:, 1:] != mask[:, :-1]
    band[1:] |= vertical
    band[:-1] |= vertical
    band[:, 1:] |= horizontal
    band[:, :-1] |= horizontal
    return band & (mask > 0)


def _annotation_xml(image_id, height, width, instances):
    objects = []
    for inst in instances:
        rows, cols = np.nonzero(inst["mask"])
        objects.append(
            "  <object>\n"
            f"    <name>{escape(CLASS_NAMES[inst['label'] - 1])}</name>\n"
            "    <pose>Unspecified</pose>\n    <truncated>0</truncated>\n    <difficult>0</difficult>\n"
            f"    <bndbox><xmin>{cols.min() + 1}</xmin><ymin>{rows.min() + 1}</ymin>"
            f"<xmax>{cols.max() + 1}</xmax><ymax>{rows.max() + 1}</ymax></bndbox>\n"
            "  </object>\n")
    return ("<annotation>\n  <folder>VOC2012</folder>\n"
            f"  <filename>{image_id}.jpg</filename>\n"
            "  <source><database>SGAN synthetic</database></source>\n"
            f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>\n"
            "  <segmented>1</segmented>\n" + "".join(objects) + "</annotation>\n")


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

def _save_image(path, image, fmt, **options):
    """Save a PIL image atomically (temporary file, then rename)."""
    with atomic_writer(path, "wb") as stream:
        image.save(stream, format=fmt, **options)


def _save_text(path, text):
    with atomic_writer(path, "wb") as stream:
        stream.write(text.encode())


def layout(root):
    """The paths of a dataset under root (no I/O): a dict of str."""
    voc = os.path.join(root, "VOC2012")
    return {
        "root": root,
        "voc": voc,
        "images": os.path.join(voc, "JPEGImages"),
        "segmentation_class": os.path.join(voc, "SegmentationClass"),
        "segmentation_class_aug": os.path.join(voc, "SegmentationClassAug"),
        "annotations": os.path.join(voc, "Annotations"),
        "image_sets": os.path.join(voc, "ImageSets", "Segmentation"),
        "saliency": os.path.join(root, "saliency"),
        "parts": os.path.join(root, "parts"),
        "scenes": os.path.join(root, SCENES),
        "manifest": os.path.join(root, MANIFEST),
    }


def _check_args(num_train, num_val, image_size, seed, jpeg_quality):
    for name, value, low in (("num_train", num_train, 1), ("num_val", num_val, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2
            or not all(isinstance(v, (int, np.integer)) and v >= 32 for v in image_size)):
        raise ValueError(f"image_size: expected a pair of ints >= 32 (height, width), got {image_size!r}")
    if not isinstance(jpeg_quality, int) or not 50 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality: expected an int in 50..100, got {jpeg_quality!r}")


def _image_labels(rng, labels):
    """One class, or two distinct classes with probability PROB_TWO_CLASSES (sorted VOC indices)."""
    count = 2 if len(labels) > 1 and rng.random() < PROB_TWO_CLASSES else 1
    return sorted(int(v) for v in rng.choice(labels, size=count, replace=False))


def generate(root, num_train=64, num_val=32, image_size=(96, 96), seed=0, classes=6, jpeg_quality=90):
    """Write a synthetic VOC-layout dataset under root and return its paths (see ``layout``).

    num_train, num_val: image counts of the splits (train.txt and train_aug.txt both list the
    training images; val.txt the others). image_size: (H, W), each >= 32. seed: an int >= 0.
    classes: an int k (the first k of DEFAULT_CLASS_ORDER) or VOC class names; labels are VOC
    indices 1..20 whatever the subset. The returned dict also holds 'train_ids', 'val_ids' and
    'classes' (names). ``synthetic.json`` is written last, so a dataset with it is complete.
    """
    _check_args(num_train, num_val, image_size, seed, jpeg_quality)
    names = resolve_classes(classes)
    label_pool = np.array([CLASS_NAMES.index(name) + 1 for name in names])
    height, width = int(image_size[0]), int(image_size[1])
    paths = layout(os.fspath(root))
    for key in ("images", "segmentation_class", "segmentation_class_aug", "annotations",
                "image_sets", "saliency", "parts"):
        os.makedirs(paths[key], exist_ok=True)
    palette = voc_palette()
    ids = [f"2012_{index:06d}" for index in range(1, num_train + num_val + 1)]
    scenes = {}
    for index, image_id in enumerate(ids):
        rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
        labels = _image_labels(rng, label_pool)
        image, mask, instances, distractors, scenes[image_id] = _draw_scene(rng, height, width, labels)
        saliency = _saliency(rng, instances, distractors, height, width)
        rgb = Image.fromarray(np.round(image * 255).astype(np.uint8), "RGB")
        _save_image(os.path.join(paths["images"], image_id + ".jpg"), rgb, "JPEG", quality=jpeg_quality)
        with_void = np.where(_void_band(mask), IGNORE_INDEX, mask).astype(np.uint8)
        indexed = Image.fromarray(with_void, "L").convert("P")
        indexed.putpalette(palette)
        _save_image(os.path.join(paths["segmentation_class"], image_id + ".png"), indexed, "PNG")
        _save_image(os.path.join(paths["segmentation_class_aug"], image_id + ".png"),
                    Image.fromarray(mask, "L"), "PNG")
        _save_image(os.path.join(paths["saliency"], image_id + ".png"), Image.fromarray(saliency, "L"), "PNG")
        parts = np.logical_or.reduce([inst["part"] for inst in instances]) if instances else np.zeros_like(mask, bool)
        _save_image(os.path.join(paths["parts"], image_id + ".png"), Image.fromarray(parts.astype(np.uint8), "L"), "PNG")
        _save_text(os.path.join(paths["annotations"], image_id + ".xml"),
                   _annotation_xml(image_id, height, width, instances))
    train_ids, val_ids = ids[:num_train], ids[num_train:]
    _save_text(paths["scenes"], json.dumps(scenes, indent=0) + "\n")
    for split, split_ids in (("train", train_ids), ("train_aug", train_ids), ("val", val_ids)):
        _save_text(os.path.join(paths["image_sets"], split + ".txt"), "".join(i + "\n" for i in split_ids))
    manifest = {"format_version": FORMAT_VERSION, "num_train": num_train, "num_val": num_val,
                "image_size": [height, width], "seed": seed, "classes": list(names),
                "jpeg_quality": jpeg_quality}
    _save_text(paths["manifest"], json.dumps(manifest, indent=1) + "\n")
    return dict(paths, train_ids=train_ids, val_ids=val_ids, classes=list(names))


def is_generated(root, **params):
    """True when root holds a complete dataset made by ``generate`` with these parameters.

    params: any of generate's keyword arguments (defaults are filled in the same way).
    """
    manifest_path = layout(os.fspath(root))["manifest"]
    if not os.path.isfile(manifest_path):
        return False
    with open(manifest_path) as stream:
        found = json.load(stream)
    wanted = {"num_train": 64, "num_val": 32, "image_size": (96, 96), "seed": 0, "classes": 6,
              "jpeg_quality": 90}
    wanted.update(params)
    expected = {"format_version": FORMAT_VERSION, "num_train": wanted["num_train"],
                "num_val": wanted["num_val"], "image_size": [int(v) for v in wanted["image_size"]],
                "seed": wanted["seed"], "classes": list(resolve_classes(wanted["classes"])),
                "jpeg_quality": wanted["jpeg_quality"]}
    return found == expected


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sgan.experiments.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("root", help="output folder (VOC2012/ and saliency/ are created in it)")
    parser.add_argument("--num-train", type=int, default=64)
    parser.add_argument("--num-val", type=int, default=32)
    parser.add_argument("--size", type=int, nargs=2, default=(96, 96), metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", type=int, default=6, help="how many classes (first of DEFAULT_CLASS_ORDER)")
    args = parser.parse_args(argv)
    paths = generate(args.root, args.num_train, args.num_val, tuple(args.size), args.seed, args.classes)
    print(f"wrote {args.num_train} train and {args.num_val} val images under {paths['root']}")


if __name__ == "__main__":
    main()
