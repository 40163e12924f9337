"""Segmentation metrics: the 21-class confusion matrix, per-class IoU / precision / recall, mIoU,
and the per-class table in the layout of the paper's Table II.

Conventions (docs/design.md §5): ground-truth value 255 is ignored; rows of the matrix are the ground
truth, columns the prediction; IoU_c = diag / (row + col − diag); mIoU is the mean over all
classes. The only classes left out of the mean are those whose IoU is undefined (0/0: absent from
both the ground truth and the predictions, which never happens on VOC val); they are listed in
``undefined_classes``. A class present in the ground truth but never predicted counts with IoU 0.

Seeds (stage 1) leave pixels unlabelled (255 in the prediction): with ``unlabelled_column=True``
those pixels go to an extra last column, so recall counts them as missed while precision only
looks at labelled pixels.
"""
import math

import numpy as np

from sgan.data.voc_classes import IGNORE_INDEX, NUM_CLASSES_WITH_BACKGROUND, SHORT_NAMES


def _as_label_array(name, value):
    array = np.asarray(value)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d label map (H, W), got shape {array.shape}")
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer labels, got dtype {array.dtype}")
    return array


def confusion_matrix(prediction, target, num_classes=NUM_CLASSES_WITH_BACKGROUND, unlabelled_column=False,
                     prediction_name="prediction", target_name="target"):
    """Confusion matrix of one label map: int64 (num_classes, num_classes [+1]), rows = target.

    prediction, target: integer (H, W) arrays (or tensors) of the same shape. target values lie in
    0..num_classes-1 or are 255 (ignored); prediction values lie in 0..num_classes-1, or may be
    255 when ``unlabelled_column`` (counted in the extra last column). Any other value raises a
    ValueError that names the map and the offending values.
    """
    prediction = _as_label_array(prediction_name, prediction)
    target = _as_label_array(target_name, target)
    if prediction.shape != target.shape:
        raise ValueError(f"{prediction_name}: shape {prediction.shape} differs from {target_name} "
                         f"shape {target.shape}; predictions must be at the ground truth's size")
    target = target.astype(np.int64).ravel()
    prediction = prediction.astype(np.int64).ravel()
    bad_target = (target != IGNORE_INDEX) & ((target < 0) | (target >= num_classes))
    if bad_target.any():
        raise ValueError(f"{target_name}: values {np.unique(target[bad_target]).tolist()[:10]} "
                         f"are neither a class in 0..{num_classes - 1} nor {IGNORE_INDEX} (ignored)")
    keep = target != IGNORE_INDEX
    target, prediction = target[keep], prediction[keep]
    unlabelled = (prediction == IGNORE_INDEX) if unlabelled_column else np.zeros_like(keep[keep])
    bad_prediction = ~unlabelled & ((prediction < 0) | (prediction >= num_classes))
    if bad_prediction.any():
        allowed = f"0..{num_classes - 1}" + (f" or {IGNORE_INDEX} (unlabelled)" if unlabelled_column else "")
        raise ValueError(f"{prediction_name}: values {np.unique(prediction[bad_prediction]).tolist()[:10]} "
                         f"outside {allowed}")
    columns = num_classes + 1 if unlabelled_column else num_classes
    prediction = np.where(unlabelled, num_classes, prediction)
    counts = np.bincount(target * columns + prediction, minlength=num_classes * columns)
    return counts.reshape(num_classes, columns)


class ConfusionMatrix:
    """Accumulates :func:`confusion_matrix` over images; ``scores()`` gives the metrics."""

    def __init__(self, num_classes=NUM_CLASSES_WITH_BACKGROUND, unlabelled_column=False):
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes: expected an int >= 2, got {num_classes!r}")
        self.num_classes, self.unlabelled_column = num_classes, unlabelled_column
        self.matrix = np.zeros((num_classes, num_classes + int(unlabelled_column)), dtype=np.int64)

    def update(self, prediction, target, name=None):
        """Add one image; ``name`` (e.g. the image id) is used in error messages."""
        label = f" of {name}" if name else ""
        self.matrix += confusion_matrix(prediction, target, self.num_classes, self.unlabelled_column,
                                        f"prediction{label}", f"ground truth{label}")

    def add(self, matrix):
        """Add a matrix computed elsewhere (e.g. by a worker process)."""
        matrix = np.asarray(matrix)
        if matrix.shape != self.matrix.shape:
            raise ValueError(f"matrix: expected shape {self.matrix.shape}, got {matrix.shape}")
        self.matrix += matrix.astype(np.int64)

    def scores(self, class_names=None):
        return segmentation_scores(self.matrix, class_names)


def segmentation_scores(matrix, class_names=None):
    """Metrics of a confusion matrix (num_classes, num_classes [+1 unlabelled column]).

    Returns a JSON-able dict: ``iou``, ``precision``, ``recall`` (lists over classes, None where
    0/0), ``miou`` (mean IoU over classes with a defined IoU, i.e. all classes except those absent
    from both ground truth and prediction), ``undefined_classes``, ``pixel_accuracy`` (over
    labelled pixels), ``labelled_fraction`` (share of ground-truth pixels with a prediction),
    ``class_names``, ``confusion_matrix``.
    """
    matrix = np.asarray(matrix, dtype=np.int64)
    num_classes = matrix.shape[0]
    if matrix.ndim != 2 or matrix.shape[1] not in (num_classes, num_classes + 1):
        raise ValueError(f"matrix: expected shape (K, K) or (K, K + 1), got {matrix.shape}")
    class_names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"class_names: expected {num_classes} names, got {len(class_names)}")
    square = matrix[:, :num_classes]
    true_positive = np.diag(square).astype(np.float64)
    row = matrix.sum(axis=1).astype(np.float64)          # all ground-truth pixels of the class
    column = square.sum(axis=0).astype(np.float64)       # labelled predictions of the class
    union = row + column - true_positive

    def ratio(numerator, denominator):
        return [float(n / d) if d > 0 else None for n, d in zip(numerator, denominator)]

    iou = ratio(true_positive, union)
    defined = [value for value in iou if value is not None]
    labelled = square.sum()
    return {
        "class_names": class_names,
        "iou": iou,
        "precision": ratio(true_positive, column),
        "recall": ratio(true_positive, row),
        "miou": float(np.mean(defined)) if defined else None,
        "undefined_classes": [name for name, value in zip(class_names, iou) if value is None],
        "pixel_accuracy": float(true_positive.sum() / labelled) if labelled else None,
        "labelled_fraction": float(labelled / matrix.sum()) if matrix.sum() else None,
        "confusion_matrix": matrix.tolist(),
    }


def _percent(value, digits=1):
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.{digits}f}"


def format_class_table(rows, column_names=SHORT_NAMES, metric="iou", summary="miou",
                       summary_name="mIoU"):
    """Per-class table in the paper's Table II layout: one column per class, then the mean.

    rows: list of (row name, scores dict from :func:`segmentation_scores`). Values are printed in
    percent with one decimal; '-' marks an undefined value. Returns the table as a string.
    """
    if not rows:
        raise ValueError("rows: expected at least one (name, scores) pair")
    names = list(column_names)
    for row_name, scores in rows:
        if len(scores[metric]) != len(names):
            raise ValueError(f"rows: {row_name!r} has {len(scores[metric])} classes, the table "
                             f"has {len(names)} columns")
    label_width = max(len("method"), *(len(str(name)) for name, _ in rows))
    cells = [[str(name) for name in names] + [summary_name]]
    for _, scores in rows:
        summary_value = scores.get(summary) if summary else None
        cells.append([_percent(v) for v in scores[metric]] + [_percent(summary_value)])
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    lines = ["method".ljust(label_width) + " " + " ".join(c.rjust(w) for c, w in zip(cells[0], widths))]
    for (row_name, _), line in zip(rows, cells[1:]):
        lines.append(str(row_name).ljust(label_width) + " " + " ".join(c.rjust(w) for c, w in zip(line, widths)))
    return "\n".join(lines)
