"""Stage 1: image-level labels of the training list from XML annotations or GT masks -> labels.json."""
from sgan.data.voc import VOCPaths, image_level_labels, read_id_list
from sgan.pipeline import work_path
from sgan.utils.io import save_json
from sgan.utils.logging import get_logger
from sgan.utils.record import files_fingerprint, fingerprint, make_record, reusable_json, settings_of

STEP = "labels"


def run(cfg):
    """Write ``<work_dir>/<data.labels_file>``: {"source", "labels": {id: [classes 1..20]}, "record"}.

    Redone whenever the list file, the annotation files it reads (XMLs or label masks) or the label
    settings differ from those recorded in the file.
    """
    logger = get_logger("labels")
    paths = VOCPaths(cfg.data.root)
    list_path = paths.resolve(cfg.data.train_list)
    ids = read_id_list(list_path)
    out = work_path(cfg, cfg.data.labels_file)
    if cfg.data.label_source == "xml":
        sources = [paths.annotation(i) for i in ids]
    else:
        sources = [paths.mask(i, cfg.data.label_mask_dir) for i in ids]
    record = make_record(STEP, settings_of(cfg, "data.label_source", "data.label_mask_dir", root_keys=()),
                         {"list": fingerprint(list_path), "annotations": files_fingerprint(sources)})
    if reusable_json(cfg, STEP, out, record) is not None:
        return
    labels = image_level_labels(paths, ids, cfg.data.label_source, cfg.data.label_mask_dir)
    save_json(out, {"source": cfg.data.label_source, "labels": labels, "record": record})
    counts = {}
    for classes in labels.values():
        for c in classes:
            counts[c] = counts.get(c, 0) + 1
    logger.info("labels: %d images, images per class %s -> %s", len(labels), dict(sorted(counts.items())), out)
