"""Stage 1: figures of inputs, saliency mask, initial/final seeds, CAMs and attention columns -> figures/."""
import os

from sgan.data.voc import load_rgb, read_gray, read_saliency
from sgan.drawing import render
from sgan.pipeline import resolve_device, work_path
from sgan.pipeline._stage1 import load_network, saliency_folder, training_images
from sgan.utils.logging import get_logger

STEP = "figures"

SECTION = dict(defaults={
    "ids": [], "count": 4, "pixel": None, "variants": {}, "initial_seeds_dir": "seeds0",
    "seeds_dir": "seeds", "out_dir": "figures",
}, bounds={"count": "[1, inf)", "pixel": "[0, 1]"},
    doc="ids: image ids (empty: the first `count` of data.train_list); pixel: [y, x] fractions of the "
        "image or null (CAM peak); variants: {name: checkpoint} (empty: Baseline = train_cam.checkpoint "
        "and SGAN = train_sgan.checkpoint); dirs relative to work_dir")


def _variants(cfg):
    chosen = cfg.figures.variants.to_dict() or {"Baseline": cfg.train_cam.checkpoint,
                                                "SGAN": cfg.train_sgan.checkpoint}
    return {name: work_path(cfg, path) for name, path in chosen.items()}


def run(cfg):
    section = cfg.figures
    logger = get_logger("figures")
    paths, train_ids, labels = training_images(cfg)
    ids = list(section.ids) or train_ids[:section.count]
    unknown = [i for i in ids if i not in labels]
    if unknown:
        raise ValueError(f"figures.ids: {unknown} are not in data.train_list")
    if section.pixel is not None and (len(section.pixel) != 2 or not all(0 <= v <= 1 for v in section.pixel)):
        raise ValueError(f"figures.pixel: expected [y, x] fractions in [0, 1] or null, got {section.pixel!r}")
    device = resolve_device(cfg)
    checkpoints = _variants(cfg)
    missing = [f"{name}: {path}" for name, path in checkpoints.items() if not os.path.isfile(path)]
    if missing:
        raise ValueError("figures: checkpoints not found (train them first): " + "; ".join(missing))
    variants = [(name,) + load_network(cfg, path, device) for name, path in checkpoints.items()]
    saliency_dir = saliency_folder(cfg)
    out_dir = work_path(cfg, section.out_dir)

    def optional_seeds(folder, image_id):
        path = os.path.join(work_path(cfg, folder), image_id + ".png")
        return read_gray(path) if os.path.isfile(path) else None

    for image_id in ids:
        path = render(os.path.join(out_dir, image_id + ".png"), image_id, load_rgb(paths.image(image_id)),
                      read_saliency(os.path.join(saliency_dir, image_id + ".png")),
                      optional_seeds(section.initial_seeds_dir, image_id), optional_seeds(section.seeds_dir, image_id),
                      variants, labels[image_id], cfg.data.input_size, section.pixel, cfg.backend, device)
        logger.info("figures: wrote %s", path)
