"""Stage 1: per-class precision, recall, IoU and the confusion matrix of the seeds -> metrics/seeds.json."""
import os

import numpy as np

from sgan.config import register_section
from sgan.data.voc import VOCPaths, read_gray, read_id_list, validate_samples
from sgan.metrics import VOC_SHORT_NAMES, ConfusionMatrix, format_class_table
from sgan.pipeline import work_path
from sgan.utils.io import load_json, save_json
from sgan.utils.logging import get_logger
from sgan.utils.progress import progress
from sgan.utils.record import fingerprint, folder_fingerprint, make_record, settings_of, up_to_date

STEP = "eval-seeds"

register_section("eval_seeds", {
    "seeds_dir": "seeds", "list": "ImageSets/Segmentation/train.txt", "gt_dir": "SegmentationClass",
    "out": "metrics/seeds.json",
}, doc="seeds_dir and out relative to work_dir; list and gt_dir relative to data.root")


def classes_without_seeds(counts, class_names):
    """Names of the classes that the ground truth holds but no seed pixel is labelled with.

    counts: (K, K + 1) confusion counts, rows ground truth, columns seed labels, the last column
    unlabelled seeds. Such a class usually means the stage-1 network never learnt it (its class
    scores are not positive anywhere), which the averaged classification loss hides.
    """
    counts = np.asarray(counts)
    in_ground_truth = counts.sum(1) > 0
    seeded = counts[:, :-1].sum(0) > 0
    return [name for name, present, has_seeds in zip(class_names, in_ground_truth, seeded)
            if present and not has_seeds]


def evaluate_seeds(paths, ids, seeds_dir, gt_dir):
    """Scores of sgan.metrics.segmentation_scores over ``ids`` with unlabelled seeds as a column,
    plus overall precision (correct / labelled seed pixels) and recall (correct / GT pixels)."""
    validate_samples(paths, ids, seeds_dir=seeds_dir, gt_dir=gt_dir)
    matrix = ConfusionMatrix(unlabelled_column=True)
    for image_id in progress(ids, desc=STEP, unit="img"):
        matrix.update(read_gray(os.path.join(seeds_dir, image_id + ".png")),
                      read_gray(os.path.join(gt_dir, image_id + ".png")), name=image_id)
    scores = matrix.scores(class_names=VOC_SHORT_NAMES)
    counts = np.asarray(scores["confusion_matrix"])
    correct = np.trace(counts[:, :-1])
    labelled, total = counts[:, :-1].sum(), counts.sum()
    scores["overall_precision"] = float(correct / labelled) if labelled else None
    scores["overall_recall"] = float(correct / total) if total else None
    for metric in ("precision", "recall"):
        defined = [v for v in scores[metric] if v is not None]
        scores[f"mean_{metric}"] = float(np.mean(defined)) if defined else None
    scores["num_images"] = len(ids)
    scores["classes_without_seeds"] = classes_without_seeds(counts, VOC_SHORT_NAMES)
    return scores


def seed_table(scores):
    """Per-class precision / recall / IoU rows (percent) in the paper's column layout."""
    rows = [(name, {"values": scores[key], "mean": scores[mean]})
            for name, key, mean in (("precision", "precision", "mean_precision"),
                                    ("recall", "recall", "mean_recall"), ("IoU", "iou", "miou"))]
    return format_class_table(rows, metric="values", summary="mean", summary_name="mean")


def run(cfg):
    """Score the seeds of ``eval_seeds.seeds_dir`` -> ``eval_seeds.out``, and log the table.

    Recomputed whenever the list, the seeds or the ground truth differ from those recorded in the
    output; an up-to-date output is read back and its table logged again.
    """
    section = cfg.eval_seeds
    logger = get_logger("eval")
    paths = VOCPaths(cfg.data.root)
    list_path = paths.resolve(section.list)
    ids = read_id_list(list_path)
    out = work_path(cfg, section.out)
    seeds_dir = work_path(cfg, section.seeds_dir)
    gt_dir = paths.resolve(section.gt_dir)
    record = make_record(STEP, settings_of(cfg, "eval_seeds", root_keys=()), {
        "list": fingerprint(list_path), "seeds": folder_fingerprint(seeds_dir, ids),
        "ground truth": folder_fingerprint(gt_dir, ids)})
    if os.path.isfile(out) and up_to_date(cfg, STEP, out, load_json(out).get("record"), record):
        scores = load_json(out)
    else:
        scores = evaluate_seeds(paths, ids, seeds_dir, gt_dir)
        scores["seeds_dir"] = seeds_dir
        scores["record"] = record
        save_json(out, scores)
    logger.info("seeds in %s on %d images: precision %.1f%%, recall %.1f%% -> %s\n%s",
                seeds_dir, len(ids), 100 * (scores["overall_precision"] or 0),
                100 * (scores["overall_recall"] or 0), out, seed_table(scores))
    if scores["classes_without_seeds"]:
        logger.warning("eval-seeds: no seed pixel at all for %s, although the ground truth has them: the "
                       "stage-1 network has probably not learnt these classes (check its class scores)",
                       ", ".join(scores["classes_without_seeds"]))
