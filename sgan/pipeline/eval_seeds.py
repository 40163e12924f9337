"""Stage 1: per-class precision, recall, IoU and the confusion matrix of the seeds -> metrics/seeds.json."""
import os

import numpy as np

from sgan.data.voc import VOCPaths, read_gray, read_id_list, validate_samples
from sgan.data.voc_classes import SHORT_NAMES
from sgan.metrics import ConfusionMatrix, format_class_table
from sgan.pipeline import work_path
from sgan.utils.io import save_json
from sgan.utils.logging import get_logger
from sgan.utils.progress import progress
from sgan.utils.record import fingerprint, folder_fingerprint, make_record, reusable_json, settings_of

STEP = "eval-seeds"

SECTION = dict(defaults={
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


MEAN_CONVENTIONS = {
    "defined": "mean over the classes whose value is defined (a class never predicted has no precision, "
               "one absent from the ground truth no recall: both are left out)",
    "all21": "the authors' mean over all 21 classes of x / (d + 1e-5): a class never predicted, or absent "
             "from the ground truth, counts 0 (their README's P = 76.38, R = 57.26 are this figure)",
}


def authors_mean(counts, metric, classes=None):
    """The authors' mean precision or recall of (K, K + 1) seed counts: tp / (d + 1e-5) averaged over all K
    classes (or the indices ``classes``), d = the class's labelled seed pixels (precision) or
    ground-truth pixels (recall)."""
    counts = np.asarray(counts, dtype=np.float64)
    true_positive = np.diag(counts[:, :-1])
    totals = counts[:, :-1].sum(0) if metric == "precision" else counts.sum(1)
    values = true_positive / (totals + 1e-5)
    return float(np.mean(values if classes is None else values[list(classes)]))


def evaluate_seeds(paths, ids, seeds_dir, gt_dir):
    """Scores of sgan.metrics.segmentation_scores over ``ids`` with unlabelled seeds as a column,
    plus overall precision (correct / labelled seed pixels) and recall (correct / GT pixels) and
    the mean precision and recall in both conventions of MEAN_CONVENTIONS (``mean_<metric>_defined``,
    ``mean_<metric>_all21``)."""
    validate_samples(paths, ids, seeds_dir=seeds_dir, gt_dir=gt_dir)
    matrix = ConfusionMatrix(unlabelled_column=True)
    for image_id in progress(ids, desc=STEP, unit="img"):
        matrix.update(read_gray(os.path.join(seeds_dir, image_id + ".png")),
                      read_gray(os.path.join(gt_dir, image_id + ".png")), name=image_id)
    scores = matrix.scores(class_names=SHORT_NAMES)
    counts = np.asarray(scores["confusion_matrix"])
    correct = np.trace(counts[:, :-1])
    labelled, total = counts[:, :-1].sum(), counts.sum()
    scores["overall_precision"] = float(correct / labelled) if labelled else None
    scores["overall_recall"] = float(correct / total) if total else None
    for metric in ("precision", "recall"):
        defined = [v for v in scores[metric] if v is not None]
        scores[f"mean_{metric}_defined"] = float(np.mean(defined)) if defined else None
        scores[f"mean_{metric}_all21"] = authors_mean(counts, metric)
    scores["mean_conventions"] = dict(MEAN_CONVENTIONS)
    scores["num_images"] = len(ids)
    scores["classes_without_seeds"] = classes_without_seeds(counts, SHORT_NAMES)
    return scores


def seed_table(scores):
    """Per-class precision / recall / IoU rows (percent) in the paper's column layout, the mean over the
    defined classes as the last column, then one line with the authors' means over all 21 classes."""
    rows = [(name, {"values": scores[key], "mean": scores[mean]})
            for name, key, mean in (("precision", "precision", "mean_precision_defined"),
                                    ("recall", "recall", "mean_recall_defined"), ("IoU", "iou", "miou"))]
    table = format_class_table(rows, metric="values", summary="mean", summary_name="mean(defined)")
    return (f"{table}\nmean over all 21 classes, never-predicted or absent = 0 (the authors'): precision "
            f"{100 * scores['mean_precision_all21']:.2f}, recall {100 * scores['mean_recall_all21']:.2f}")


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
    scores = reusable_json(cfg, STEP, out, record)
    if scores is None:
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
