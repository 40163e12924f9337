"""Stage 1: image-level labels of the training list from XML annotations or GT masks -> labels.json."""
import os

from sgan.data.voc import VOCPaths, image_level_labels, read_id_list
from sgan.pipeline import work_path
from sgan.utils.io import load_json, save_json
from sgan.utils.logging import get_logger

STEP = "labels"


def run(cfg):
    """Write ``<work_dir>/<data.labels_file>``: {"source", "labels": {id: [classes 1..20]}}."""
    logger = get_logger("labels")
    paths = VOCPaths(cfg.data.root)
    ids = read_id_list(paths.resolve(cfg.data.train_list))
    out = work_path(cfg, cfg.data.labels_file)
    if os.path.isfile(out) and not cfg.overwrite:
        cached = load_json(out)
        missing = [i for i in ids if i not in cached.get("labels", {})]
        if cached.get("source") == cfg.data.label_source and not missing:
            logger.info("labels: %s already holds the %d images (overwrite=true to redo)", out, len(ids))
            return
        logger.info("labels: %s is stale (source %s, %d ids missing); recomputing", out,
                    cached.get("source"), len(missing))
    labels = image_level_labels(paths, ids, cfg.data.label_source, cfg.data.label_mask_dir)
    save_json(out, {"source": cfg.data.label_source, "labels": labels})
    counts = {}
    for classes in labels.values():
        for c in classes:
            counts[c] = counts.get(c, 0) + 1
    logger.info("labels: %d images, images per class %s -> %s", len(labels), dict(sorted(counts.items())), out)
