"""Benchmark ``loaders``: image decoding and resizing as the stage-1 and stage-2 loaders do it, with
PIL (what the loaders use) against OpenCV (issue 12, item 5: would OpenCV be worth it?).

    python -m bench.run loaders --images 64

Inputs: ``--images`` generated 500x375 JPEGs (quality 90; flat colour blocks plus noise) and 8-bit
saliency PNGs, written once to a temporary folder. Per image:

- ``stage1``: decode the JPEG to RGB and the saliency PNG, resize both to 321² (bilinear): what
  VOCTrainSet does for train-cam / train-sgan (``data.resize: pil``);
- ``stage2``: decode the JPEG to RGB, resize to 353² (bilinear) and cut a 321² crop: what
  SegTrainSet does for train-seg.

``pil`` is sgan.data.voc's ``load_rgb`` / ``read_gray`` / ``resize``; ``opencv`` is ``cv2.imread``
(BGR, converted to RGB) and ``cv2.resize(INTER_LINEAR)``; it is skipped when cv2 does not import.
One thread (``cv2.setNumThreads(1)``, as a DataLoader worker would), time per image.
"""
import contextlib
import os
import tempfile

import numpy as np
from PIL import Image

from bench.harness import Column, Skip, positive_int
from bench.registry import Benchmark, Plan, register
from sgan.data.voc import load_rgb, read_gray, resize

BASELINE = "pil"
SOURCE_SIZE = (375, 500)   # (H, W) of a typical VOC image
CROP, STAGE2_RESIZE, STAGE1_SIZE = 321, 353, 321


def add_arguments(parser):
    parser.add_argument("--images", type=positive_int, default=64, help="generated images per pass")


def plan(args, device):
    if device.type != "cpu":
        raise ValueError("loaders: --device cpu only (the loaders run on the CPU)")
    return Plan(config={"images": args.images, "source_size": list(SOURCE_SIZE)},
                cases=[{"loader": "stage1"}, {"loader": "stage2"}], backends=[BASELINE, "opencv"])


def write_images(folder, count, seed=0):
    """``count`` JPEG images and saliency PNGs in ``folder``; returns their (jpg, png) paths."""
    rng = np.random.default_rng(seed)
    height, width = SOURCE_SIZE
    paths = []
    for index in range(count):
        blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = np.kron(blocks, np.ones((height // 4 + 1, width // 4 + 1, 1), np.uint8))[:height, :width]
        image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
        saliency = (rng.random((height, width)) > 0.5).astype(np.uint8) * 255
        jpg, png = os.path.join(folder, f"{index}.jpg"), os.path.join(folder, f"{index}.png")
        Image.fromarray(image).save(jpg, quality=90)
        Image.fromarray(saliency).save(png)
        paths.append((jpg, png))
    return paths


@contextlib.contextmanager
def setup(args, ctx):
    with tempfile.TemporaryDirectory(prefix="sgan-bench-loaders-") as folder:
        yield {"paths": write_images(folder, args.images)}


def _opencv():
    try:
        import cv2
    except ImportError as error:
        raise Skip(f"opencv is not installed ({error}); pip install opencv-python-headless") from None
    cv2.setNumThreads(1)
    return cv2


def _pass(loader, backend, paths):
    """One pass over ``paths`` with ``backend``'s decode and resize."""
    if backend == BASELINE:
        for jpg, png in paths:
            if loader == "stage1":
                resize(load_rgb(jpg), (STAGE1_SIZE, STAGE1_SIZE))
                resize(read_gray(png), (STAGE1_SIZE, STAGE1_SIZE))
            else:
                resize(load_rgb(jpg), (STAGE2_RESIZE, STAGE2_RESIZE))[:CROP, :CROP]
        return
    cv2 = _opencv()
    for jpg, png in paths:
        image = cv2.cvtColor(cv2.imread(jpg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        if loader == "stage1":
            cv2.resize(image, (STAGE1_SIZE, STAGE1_SIZE), interpolation=cv2.INTER_LINEAR)
            cv2.resize(cv2.imread(png, cv2.IMREAD_GRAYSCALE), (STAGE1_SIZE, STAGE1_SIZE),
                       interpolation=cv2.INTER_LINEAR)
        else:
            cv2.resize(image, (STAGE2_RESIZE, STAGE2_RESIZE), interpolation=cv2.INTER_LINEAR)[:CROP, :CROP]


def measure(case, backends, ctx):
    (backend,) = backends
    paths = ctx.state["paths"]
    if backend != BASELINE:
        _opencv()
    timing = ctx.time(lambda: _pass(case["loader"], backend, paths))
    return {backend: {"ms_per_image": timing.median_ms / len(paths),
                      "min_ms_per_image": timing.min_ms / len(paths),
                      "images_per_s": 1000 * len(paths) / timing.median_ms}}


register(Benchmark(
    name="loaders",
    description="JPEG/PNG decoding and resizing of the stage-1 and stage-2 loaders, PIL against OpenCV",
    baseline=BASELINE,
    add_arguments=add_arguments,
    plan=plan,
    measure=measure,
    compare={"ms_per_image": "speedup", "min_ms_per_image": "speedup_min"},
    columns=[Column("loader", "loader"), Column("backend", "backend"),
             Column("ms_per_image", "ms / image", "{:.2f}"), Column("images_per_s", "images/s", "{:.0f}"),
             Column("speedup", "pil / it", "{:.2f}x"), Column("speedup_min", "(min)", "{:.2f}x")],
    status_column="ms_per_image",
    warmup={"cpu": 1, "cuda": 1},
    repeats={"cpu": 5, "cuda": 5},
    memory_method={"cpu": None, "cuda": None},
    output=lambda header: "loaders-cpu.json",
    results_key="loaders",
    setup=setup,
))
