"""PASCAL VOC 2012 in its own layout (docs/design.md §4): ids, image-level labels, validation, datasets.

Layout under ``data.root`` (the ``VOC2012`` folder)::

    JPEGImages/<id>.jpg   Annotations/<id>.xml   SegmentationClass/<id>.png (palette)
    SegmentationClassAug/<id>.png (grayscale indices)   ImageSets/Segmentation/{train,train_aug,val}.txt

List files hold one id per line; DeepLab-style lines ``/JPEGImages/<id>.jpg /Segmentation.../<id>.png``
are accepted too (the id is taken from the first path). Saliency maps are ``<saliency_dir>/<id>.png``
(8-bit grayscale, the image's size; palette, grey+alpha or bilevel maps are read as the grey they
display: :func:`read_saliency`); seeds are ``<seeds_dir>/<id>.png`` (0 background, 1..20 classes,
255 unlabelled, the image's size).

Labels: class indices 1..20 (VOC order, 0 is background), from the XML ``<object><name>`` entries or
from the ground-truth masks (read as palette indices with PIL: never convert to RGB). A label PNG
in RGB, or one whose values are not classes (0..20, 255) because its palette was misread, is an
error. :func:`validate_samples` checks every file a step will read before it starts and raises one
ValueError naming all bad files, grouped by kind (:func:`raise_problems`). Images are read with
:func:`open_image`: a missing, truncated or undecodable file raises :class:`InputFileError`, a
one-line ValueError naming it (also from a DataLoader worker).

Resizing (``data.resize``): ``pil`` (PIL bilinear, nearest for label maps) or ``corner_aligned`` (the
authors' ``scipy.ndimage.zoom``, order 1 / order 0, value for value: sgan.data.zoom).

Normalisation: ``caffe_bgr`` (the authors': BGR 0..255 minus the mean (104.008, 116.669, 122.675),
for Caffe-converted weights) or ``imagenet_rgb`` (RGB / 255, ImageNet mean and std, for torchvision
weights); ``auto`` picks by the naming of ``model.weights`` (imagenet_rgb without weights).
"""
import os
import random
import struct
import xml.etree.ElementTree as ElementTree

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from sgan.data.voc_classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from sgan.data.zoom import zoom_linear, zoom_nearest
from sgan.utils.io import load_json
from sgan.utils.logging import get_logger

CAFFE_BGR_MEAN = (104.008, 116.669, 122.675)
IMAGENET_RGB_MEAN = (0.485, 0.456, 0.406)
IMAGENET_RGB_STD = (0.229, 0.224, 0.225)
NORMALISATIONS = ("auto", "caffe_bgr", "imagenet_rgb")
LABEL_SOURCES = ("xml", "mask")
PROBLEMS_SHOWN_PER_KIND = 10
# what PIL raises for files it cannot decode (truncated, corrupt, not an image, too large)
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)
RESIZES = ("pil", "corner_aligned")
# saliency map modes read as the grey they display (read_saliency)
SALIENCY_MODES = ("L", "P", "LA", "1")

# the config section `data`, registered by sgan.pipeline.register_sections
DATA_SECTION = dict(defaults={
    "root": None,
    "saliency_dir": None,
    "train_list": "ImageSets/Segmentation/train_aug.txt",
    "val_list": "ImageSets/Segmentation/val.txt",
    "label_source": "xml",
    "label_mask_dir": "SegmentationClassAug",
    "labels_file": "labels.json",
    "input_size": 321,
    "normalisation": "auto",
    "flip": True,
    "resize": "pil",
}, choices={"label_source": LABEL_SOURCES, "normalisation": NORMALISATIONS, "resize": RESIZES},
    bounds={"input_size": "[1, inf)"},
    doc="root: the VOC2012 folder; saliency_dir: folder of <id>.png saliency maps; lists and mask "
        "dirs relative to root; labels_file relative to work_dir; input_size: training resize (square); "
        "resize: how stage 1 brings images, saliency and seeds to input_size, pil or corner_aligned "
        "(the authors' scipy zoom)")


class VOCPaths:
    """File paths of a VOC-layout dataset rooted at ``root`` (the VOC2012 folder)."""

    def __init__(self, root):
        if not root:
            raise ValueError("data.root: required; set it to the VOC2012 folder (holding JPEGImages/)")
        if not os.path.isdir(root):
            raise ValueError(f"data.root: {root} is not a folder")
        self.root = root

    def resolve(self, path):
        return path if os.path.isabs(path) else os.path.join(self.root, path)

    def image(self, image_id):
        return os.path.join(self.root, "JPEGImages", image_id + ".jpg")

    def annotation(self, image_id):
        return os.path.join(self.root, "Annotations", image_id + ".xml")

    def mask(self, image_id, folder):
        return os.path.join(self.resolve(folder), image_id + ".png")


def read_id_list(path):
    """Image ids of a list file (one per line, or DeepLab's 'image_path label_path' lines), in order.

    A UTF-8 byte-order mark (written by Windows editors) is not part of the first id. An id listed
    twice is kept once, at its first line, with one warning per list naming the repeated ids:
    otherwise it would be trained on twice per epoch and counted twice.
    """
    if not os.path.isfile(path):
        raise ValueError(f"image list: {path} does not exist")
    ids, seen, repeated = [], set(), []
    with open(path, encoding="utf-8-sig") as stream:
        for line in stream:
            token = line.split()[0] if line.split() else ""
            if not token:
                continue
            image_id = os.path.splitext(os.path.basename(token))[0]
            if image_id in seen:
                repeated.append(image_id)
                continue
            seen.add(image_id)
            ids.append(image_id)
    if not ids:
        raise ValueError(f"image list: {path} holds no image ids")
    if repeated:
        _warn_repeated_ids(path, sorted(set(repeated)))
    return ids


_WARNED_LISTS = set()   # (list file, repeated ids) already reported in this process


def _warn_repeated_ids(path, repeated):
    """Log, once per process for each list file and set of repeated ids, that they were deduplicated."""
    key = (os.path.abspath(path), tuple(repeated))
    if key in _WARNED_LISTS:
        return
    _WARNED_LISTS.add(key)
    shown = ", ".join(repeated[:PROBLEMS_SHOWN_PER_KIND]) + (
        f" and {len(repeated) - PROBLEMS_SHOWN_PER_KIND} more" if len(repeated) > PROBLEMS_SHOWN_PER_KIND else "")
    get_logger("data").warning("image list: %s lists %d id(s) more than once (%s); each is used once, "
                               "at its first line", path, len(repeated), shown)


class InputFileError(ValueError):
    """An input file that is missing or cannot be decoded; the message is ``<path>: <reason>``.

    An exception raised in a DataLoader worker reaches the main process re-created from its
    formatted traceback ("Caught InputFileError in DataLoader worker process 0. Original
    Traceback ..."); this class keeps only the original one-line message, so the CLI still prints
    one line naming the file.
    """

    def __init__(self, message):
        marker = f"{type(self).__name__}: "
        if "\nOriginal Traceback" in message and marker in message:
            message = message.rstrip().rsplit(marker, 1)[1]
        super().__init__(message)


def open_image(path, decode=True):
    """The PIL image of ``path``, its pixels decoded unless ``decode`` is off (header only); use it
    as a context manager. InputFileError naming the file when it is missing, not an image, or
    truncated or corrupt (PIL's own exceptions never name the file)."""
    try:
        image = Image.open(path)
    except FileNotFoundError:
        raise InputFileError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise InputFileError(f"{path}: not an image file (PIL cannot identify its format)") from None
    except DECODE_ERRORS as error:
        raise InputFileError(f"{path}: cannot read the image ({error})") from None
    if decode:
        try:
            image.load()
        except DECODE_ERRORS as error:
            image.close()
            raise InputFileError(f"{path}: cannot decode the image, truncated or corrupt ({error})") from None
    return image


def load_rgb(path):
    """uint8 (H, W, 3) RGB array of an image file; InputFileError naming an unreadable file."""
    with open_image(path) as image:
        return np.asarray(image.convert("RGB"))


def read_gray(path):
    """uint8 (H, W) array of a single-channel PNG of labels (seeds, ground truth), mode L or P
    indices (there the index is the class); InputFileError naming an unreadable or multi-channel file."""
    with open_image(path) as image:
        if image.mode not in ("L", "P"):
            raise InputFileError(f"{path}: expected a single-channel PNG (mode L or P), got mode {image.mode}")
        return np.asarray(image)


def read_saliency(path):
    """uint8 (H, W) array of a saliency map: the grey levels it displays.

    Mode L as it is; a palette (P), grey with alpha (LA) or bilevel (1) map converted to L as PIL
    displays it (a palette index is not a grey level unless the palette is the identity). Any other
    mode (colour, 16-bit, float) is an InputFileError naming the file and the mode.
    """
    with open_image(path) as image:
        if image.mode not in SALIENCY_MODES:
            raise InputFileError(f"{path}: {saliency_mode_problem(image.mode)}")
        return np.asarray(image if image.mode == "L" else image.convert("L"))


def saliency_mode_problem(mode):
    """Why a saliency map of PIL mode ``mode`` is refused (for a mode outside SALIENCY_MODES)."""
    return (f"has mode {mode}, expected an 8-bit grey map: mode L, or P, LA or 1, which are read as the grey "
            "they display; save it as 8-bit grayscale (L)")


def read_index_png(path, num_classes=NUM_CLASSES):
    """(uint8 (H, W) class indices, None) of a label PNG (mode P or L, values 0..num_classes or
    255), or (None, the reason it is not one: unreadable, RGB colours, a misread palette)."""
    try:
        with open_image(path) as image:
            mode, indices = image.mode, np.asarray(image)
    except InputFileError as error:
        return None, str(error)
    if mode not in ("P", "L"):
        return None, (f"{path}: mode {mode} — an RGB colour image, not class indices; use the palette PNG "
                      "as VOC ships it (PIL reads its indices), never a colour conversion")
    bad = [int(v) for v in np.unique(indices) if v > num_classes and v != IGNORE_INDEX]
    if bad:
        return None, (f"{path}: values {bad[:10]} are not classes 0..{num_classes} or {IGNORE_INDEX} — the "
                      "palette was probably misread (colours saved as indices)")
    return indices, None


def read_label_mask(path, num_classes=NUM_CLASSES):
    """uint8 (H, W) class indices of a ground-truth PNG; ValueError on RGB / misread palettes."""
    indices, problem = read_index_png(path, num_classes)
    if problem:
        raise ValueError(problem)
    return indices


def labels_from_xml(path):
    """Sorted class indices (1..20) of the ``<object><name>`` entries of a VOC annotation."""
    root = ElementTree.parse(path).getroot()
    names = [(obj.findtext("name") or "").strip() for obj in root.iter("object")]
    unknown = sorted({n for n in names if n not in CLASS_NAMES})
    if unknown:
        raise ValueError(f"{path}: unknown class names {unknown}; expected names from {list(CLASS_NAMES)}")
    return sorted({CLASS_NAMES.index(n) + 1 for n in names})


def image_labels(paths, image_id, source="xml", mask_dir="SegmentationClassAug"):
    """(sorted class indices 1..20, []) of one image from its XML annotation or label mask, or
    (None, [(kind, detail)]) naming the missing, unreadable or empty file."""
    if source == "xml":
        path = paths.annotation(image_id)
        if not os.path.isfile(path):
            return None, [("missing annotation", path)]
        try:
            classes = labels_from_xml(path)
        except ValueError as error:
            return None, [("bad annotation", str(error))]
        except ElementTree.ParseError as error:
            return None, [("bad annotation", f"{path}: {error}")]
    else:
        path = paths.mask(image_id, mask_dir)
        if not os.path.isfile(path):
            return None, [("missing label mask", path)]
        indices, problem = read_index_png(path)
        if problem:
            return None, [("bad label mask", problem)]
        classes = sorted(int(v) for v in np.unique(indices) if 1 <= v <= NUM_CLASSES)
    if not classes:
        return None, [("image with no labels", f"{image_id} ({path})")]
    return classes, []


def image_level_labels(paths, ids, source="xml", mask_dir="SegmentationClassAug"):
    """{id: sorted class indices 1..20}; every unreadable or empty file is named in one ValueError."""
    if source not in LABEL_SOURCES:
        raise ValueError(f"data.label_source: expected one of {LABEL_SOURCES}, got {source!r}")
    labels, problems = {}, []
    for image_id in ids:
        classes, found = image_labels(paths, image_id, source, mask_dir)
        problems += found
        if classes:
            labels[image_id] = classes
    raise_problems(problems, f"image-level labels from {source}")
    return labels


def format_problems(problems, shown_per_kind=PROBLEMS_SHOWN_PER_KIND):
    """Lines listing ``problems`` grouped by kind, in order of first appearance, at most
    ``shown_per_kind`` of each kind. A problem is a (kind, detail) pair or a plain string (listed
    as is, ungrouped)."""
    groups = {}
    for problem in problems:
        kind, detail = problem if isinstance(problem, tuple) else (None, problem)
        groups.setdefault(kind, []).append(detail)
    lines = []
    for kind, details in groups.items():
        indent = "  " if kind is None else "    "
        if kind is not None:
            lines.append(f"  {kind} ({len(details)}):")
        lines += [indent + detail for detail in details[:shown_per_kind]]
        if len(details) > shown_per_kind:
            lines.append(f"{indent}... and {len(details) - shown_per_kind} more")
    return lines


def raise_problems(problems, what):
    """One ValueError listing every problem, grouped by kind (:func:`format_problems`), if any."""
    if problems:
        kinds = len({p[0] if isinstance(p, tuple) else None for p in problems})
        raise ValueError(f"{what}: {len(problems)} problem(s) of {kinds} kind(s), fix them before training:\n"
                         + "\n".join(format_problems(problems)))


def load_labels(path, ids):
    """{id: classes} for ``ids`` from labels.json; names every id without labels."""
    if not os.path.isfile(path):
        raise ValueError(f"labels: {path} does not exist; run the `labels` step first")
    table = load_json(path)["labels"]
    raise_problems([("image with no labels", f"{i} (not in {path}, or empty)") for i in ids if not table.get(i)],
                   f"labels of {len(ids)} images")
    return {i: table[i] for i in ids}


def sample_problems(paths, image_id, labels=None, pngs=(), decode=False):
    """[(kind, detail)] of one image's files.

    The image exists and opens (with ``decode``: its pixels decode completely); with ``labels``
    ({id: classes}) the id has a class; for each (kind, folder) of ``pngs``, kind one of
    ``saliency map``, ``seed file``, ``ground truth``, ``<folder>/<id>.png`` exists, opens
    (seeds and ground truth are always decoded: their values are checked), has the image's size,
    is single-channel (saliency), holds only 0..20 and 255 (seeds) or passes
    :func:`read_index_png` (ground truth).
    """
    problems, size = [], None
    image_path = paths.image(image_id)
    if not os.path.isfile(image_path):
        problems.append(("missing image", image_path))
    else:
        try:
            with open_image(image_path, decode) as image:
                size = image.size  # (W, H)
        except InputFileError as error:
            problems.append(("unreadable image", str(error)))
    if labels is not None and not labels.get(image_id):
        problems.append(("image with no labels", image_id))
    for kind, folder in pngs:
        path = os.path.join(folder, image_id + ".png")
        if not os.path.isfile(path):
            problems.append((f"missing {kind}", path))
            continue
        if kind == "ground truth":
            indices, problem = read_index_png(path)
            if problem:
                problems.append(("bad ground truth", problem))
                continue
            found = indices.shape[::-1]
        else:
            try:
                with open_image(path, decode or kind == "seed file") as image:
                    mode, found = image.mode, image.size
                    values = np.unique(np.asarray(image)) if kind == "seed file" and mode in ("L", "P") else None
            except InputFileError as error:
                problems.append((f"unreadable {kind}", str(error)))
                continue
            if kind == "saliency map" and mode not in SALIENCY_MODES:
                problems.append((f"{kind} not single-channel", f"{path} {saliency_mode_problem(mode)}"))
                continue
            if kind != "saliency map" and mode not in ("L", "P"):
                problems.append((f"{kind} not single-channel",
                                 f"{path} has mode {mode}, expected 8-bit grayscale (L)"))
                continue
            bad = [] if values is None else [int(v) for v in values if v > NUM_CLASSES and v != IGNORE_INDEX]
            if bad:
                problems.append(("bad seed values",
                                 f"{path} holds {bad[:10]}, expected 0..{NUM_CLASSES} or {IGNORE_INDEX}"))
        if size is not None and tuple(found) != tuple(size):
            problems.append(("size mismatch", f"{path} is {found[0]}x{found[1]}, its image {image_path} "
                                              f"is {size[0]}x{size[1]} (W x H)"))
    return problems


def validate_samples(paths, ids, labels=None, saliency_dir=None, seeds_dir=None, gt_dir=None):
    """Check every file a step will read (:func:`sample_problems`, images by their header); one
    ValueError naming all problems."""
    pngs = [(kind, folder) for kind, folder in (("saliency map", saliency_dir), ("seed file", seeds_dir),
                                                ("ground truth", gt_dir)) if folder is not None]
    problems = [problem for image_id in ids for problem in sample_problems(paths, image_id, labels, pngs)]
    raise_problems(problems, f"input files of {len(ids)} images")


def normalise(image, mode):
    """uint8 RGB (H, W, 3) array -> float32 (3, H, W) network input in ``mode`` (not ``auto``)."""
    pixels = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)
    if mode == "caffe_bgr":   # x - mean in float64, rounded once to float32: the authors' numpy arithmetic
        bgr = pixels.flip(0).double() - torch.tensor(CAFFE_BGR_MEAN, dtype=torch.float64).view(3, 1, 1)
        return bgr.float()
    if mode == "imagenet_rgb":
        return (pixels / 255.0 - torch.tensor(IMAGENET_RGB_MEAN).view(3, 1, 1)) / torch.tensor(
            IMAGENET_RGB_STD).view(3, 1, 1)
    raise ValueError(f"data.normalisation: expected 'caffe_bgr' or 'imagenet_rgb', got {mode!r}")


def resize(array, size, nearest=False):
    """Resize a uint8 (H, W[, 3]) array to ``size`` = (h, w) with PIL (bilinear, or nearest for labels)."""
    h, w = size
    if array.shape[:2] == (h, w):
        return array
    resample = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(array).resize((w, h), resample))


def resize_as(array, size, mode, nearest=False):
    """:func:`resize` (``mode="pil"``) or the authors' corner-aligned zoom (``"corner_aligned"``) of a
    uint8 (H, W[, 3]) array to ``size`` = (h, w); nearest for label maps."""
    if mode == "pil":
        return resize(array, size, nearest)
    if mode != "corner_aligned":
        raise ValueError(f"data.resize: expected one of {RESIZES}, got {mode!r}")
    size = tuple(int(v) for v in size)
    zoom = zoom_nearest if nearest else zoom_linear
    if array.ndim == 3:   # (H, W, C): zoomed channel by channel, as scipy does with a zoom of 1 on C
        return np.ascontiguousarray(zoom(np.moveaxis(array, -1, 0), size).transpose(1, 2, 0))
    return zoom(array, size)


class VOCTrainSet(Dataset):
    """Training samples indexed by ``(index, sample_seed)`` (see sgan.train.order).

    Returns {"image": float32 (3, S, S), "labels": float32 (20,) multi-hot, "index": int} plus
    "saliency": uint8 (S, S) with ``saliency_dir`` and "seeds": int64 (S, S) with ``seeds_dir``.
    The resize is to S x S (``size``) with :func:`resize_as` in mode ``resize``; the horizontal
    flip (p = 0.5, drawn from the sample seed) applies to every field alike.
    """

    def __init__(self, paths, ids, labels, size, normalisation, flip=True, saliency_dir=None, seeds_dir=None,
                 resize="pil"):
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"data.input_size: expected a positive int, got {size!r}")
        if resize not in RESIZES:
            raise ValueError(f"data.resize: expected one of {RESIZES}, got {resize!r}")
        self.paths, self.ids, self.labels = paths, list(ids), labels
        self.size, self.normalisation, self.flip, self.resize = size, normalisation, flip, resize
        self.saliency_dir, self.seeds_dir = saliency_dir, seeds_dir

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, item):
        index, sample_seed = item
        image_id = self.ids[index]
        flip = self.flip and random.Random(sample_seed).random() < 0.5
        size = (self.size, self.size)

        def prepare(array, nearest=False):
            array = resize_as(array, size, self.resize, nearest)
            return np.ascontiguousarray(array[:, ::-1]) if flip else array

        multi_hot = torch.zeros(NUM_CLASSES)
        multi_hot[[c - 1 for c in self.labels[image_id]]] = 1.0
        sample = {"image": normalise(prepare(load_rgb(self.paths.image(image_id))), self.normalisation),
                  "labels": multi_hot, "index": index}
        if self.saliency_dir is not None:
            saliency = read_saliency(os.path.join(self.saliency_dir, image_id + ".png"))
            sample["saliency"] = torch.from_numpy(prepare(saliency).copy())
        if self.seeds_dir is not None:
            seeds = read_gray(os.path.join(self.seeds_dir, image_id + ".png"))
            sample["seeds"] = torch.from_numpy(prepare(seeds, nearest=True).astype(np.int64))
        return sample

