"""Confusion matrix, IoU/mIoU, precision/recall and the Table II layout against independent formulas."""
import numpy as np
import pytest
import torch

from sgan.data.voc_classes import SHORT_NAMES
from sgan.metrics import (
    ConfusionMatrix,
    confusion_matrix,
    format_class_table,
    segmentation_scores,
)


def mask_iou(predictions, targets, num_classes):
    """Per-class IoU from boolean masks (intersection / union over non-ignored pixels), None for 0/0."""
    ious = []
    for c in range(num_classes):
        inter = union = 0
        for prediction, target in zip(predictions, targets):
            valid = target != 255
            inter += int(((prediction == c) & (target == c) & valid).sum())
            union += int((((prediction == c) | (target == c)) & valid).sum())
        ious.append(inter / union if union else None)
    return ious


def random_pair(rng, shape, num_classes, ignore_fraction=0.1):
    target = rng.integers(0, num_classes, shape)
    # correlated prediction: right most of the time, so IoUs are spread over (0, 1)
    prediction = np.where(rng.random(shape) < 0.6, target, rng.integers(0, num_classes, shape))
    target[rng.random(shape) < ignore_fraction] = 255
    return prediction.astype(np.uint8), target.astype(np.uint8)


def test_iou_and_miou_match_mask_formula_over_several_images():
    rng = np.random.default_rng(0)
    pairs = [random_pair(rng, (17 + i, 23 - i), 21) for i in range(4)]
    meter = ConfusionMatrix(21)
    for i, (prediction, target) in enumerate(pairs):
        meter.update(prediction, target, name=f"img{i}")
    scores = meter.scores(SHORT_NAMES)
    expected = mask_iou([p for p, _ in pairs], [t for _, t in pairs], 21)
    assert all(e is not None for e in expected)
    assert scores["iou"] == pytest.approx(expected, rel=1e-12)
    assert scores["miou"] == pytest.approx(sum(expected) / 21, rel=1e-12)
    total_valid = sum(int((t != 255).sum()) for _, t in pairs)
    assert int(np.asarray(scores["confusion_matrix"]).sum()) == total_valid


def test_tensor_inputs_give_the_same_matrix_as_arrays():
    rng = np.random.default_rng(1)
    prediction, target = random_pair(rng, (9, 11), 21)
    from_arrays = confusion_matrix(prediction, target)
    from_tensors = confusion_matrix(torch.from_numpy(prediction.astype(np.int64)), torch.from_numpy(target))
    np.testing.assert_array_equal(from_arrays, from_tensors)


def test_mean_covers_missed_classes_and_leaves_out_only_undefined_ones():
    # class 0: tp 1, gt 1, predicted 3 -> IoU 1/3; class 1: tp 2, gt 3, predicted 2 -> 2/3;
    # class 2: in the ground truth once, never predicted -> 0, and it counts in the mean;
    # class 3: predicted only where the ground truth is 255 -> 0/0, left out of the mean.
    target = np.array([[0, 1, 1], [1, 2, 255]])
    prediction = np.array([[0, 0, 1], [1, 0, 3]])
    scores = segmentation_scores(confusion_matrix(prediction, target, num_classes=4))
    assert scores["iou"][:3] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert scores["iou"][3] is None and scores["undefined_classes"] == ["3"]
    assert scores["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0.0) / 3)
    assert scores["precision"][:2] == pytest.approx([1 / 3, 1.0])
    assert scores["precision"][2:] == [None, None]
    assert scores["recall"][:3] == pytest.approx([1.0, 2 / 3, 0.0])


def test_unlabelled_predictions_count_against_recall_not_precision():
    target = np.array([[1, 1, 1, 0]])
    seeds = np.array([[1, 255, 255, 0]])   # two pixels of class 1 left unlabelled
    meter = ConfusionMatrix(num_classes=2, unlabelled_column=True)
    meter.update(seeds, target)
    scores = meter.scores()
    assert meter.matrix.shape == (2, 3)
    assert scores["precision"] == pytest.approx([1.0, 1.0])
    assert scores["recall"] == pytest.approx([1.0, 1 / 3])
    assert scores["iou"] == pytest.approx([1.0, 1 / 3])
    assert scores["labelled_fraction"] == pytest.approx(2 / 4)


@pytest.mark.parametrize("bad, message", [
    (dict(target=np.array([[0, 21]])), "ground truth of img7: values [21]"),
    (dict(target=np.array([[0, 128]])), "ground truth of img7: values [128]"),
    (dict(prediction=np.array([[0, 255]])), "prediction of img7: values [255] outside 0..20"),
    (dict(prediction=np.array([[0, 1, 2]])), "predictions must be at the ground truth's size"),
    (dict(prediction=np.array([[0.0, 1.0]])), "expected integer labels"),
])
def test_bad_label_values_and_sizes_are_named(bad, message):
    args = dict(prediction=np.array([[0, 1]]), target=np.array([[0, 1]]))
    args.update(bad)
    with pytest.raises((ValueError, TypeError)) as error:
        ConfusionMatrix(21).update(args["prediction"], args["target"], name="img7")
    assert message in str(error.value)


def test_table_has_one_column_per_class_and_the_mean_in_percent():
    rng = np.random.default_rng(2)
    prediction, target = random_pair(rng, (20, 20), 21)
    scores = segmentation_scores(confusion_matrix(prediction, target), SHORT_NAMES)
    table = format_class_table([("SGAN", scores)])
    header, row = table.splitlines()
    assert header.split() == ["method", *SHORT_NAMES, "mIoU"]
    values = [float(v) for v in row.split()[1:]]
    assert values == pytest.approx([round(100 * v, 1) for v in scores["iou"]] + [round(100 * scores["miou"], 1)],
                                   abs=0.051)
