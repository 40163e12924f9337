"""Stage 2: evaluate the predictions against the ground truth -> metrics/seg.json + Table II row.

The 21-class confusion matrix over every image of the list (ground truth 255 ignored), per-class
IoU, precision and recall and the mIoU over all classes (sgan.metrics), printed as one row of the
paper's per-class table. Ground truth: ``<data.root>/<gt_dir>/<id>.png`` read as palette indices
(``SegmentationClass`` for VOC val). Every missing, misread or wrongly sized file is reported in one
error before anything is written.
"""
import os

from sgan.data.voc import VOCPaths, raise_problems, read_id_list, validate_samples
from sgan.data.voc_classes import CLASS_NAMES_WITH_BACKGROUND, NUM_CLASSES_WITH_BACKGROUND, SHORT_NAMES
from sgan.metrics import ConfusionMatrix, format_class_table
from sgan.pipeline import work_path
from sgan.predict import read_label_png
from sgan.utils.io import save_json
from sgan.utils.logging import get_logger, print_and_log
from sgan.utils.progress import progress
from sgan.utils.record import fingerprint, folder_fingerprint, make_record, reusable_json, settings_of

STEP = "eval"

SECTION = dict(defaults={
    "predictions": "pred",
    "list": None,
    "gt_dir": "SegmentationClass",
    "output": "metrics/seg.json",
    "name": "DeepLab-ASPP",
}, doc="stage-2 evaluation: predictions folder (relative to work_dir), list and gt_dir (relative to "
       "data.root; list null = data.val_list), output JSON (relative to work_dir), name of the table row")


def evaluate_folder(prediction_dir, gt_dir, ids, num_classes=NUM_CLASSES_WITH_BACKGROUND):
    """ConfusionMatrix over ``ids``; one ValueError naming every missing or bad prediction."""
    meter, problems = ConfusionMatrix(num_classes), []
    for image_id in progress(ids, desc="eval", unit="img"):
        path = os.path.join(prediction_dir, image_id + ".png")
        if not os.path.isfile(path):
            problems.append(f"missing prediction: {path}")
            continue
        try:
            meter.update(read_label_png(path, "prediction"),
                         read_label_png(os.path.join(gt_dir, image_id + ".png"), "ground truth"),
                         name=image_id)
        except ValueError as error:
            problems.append(f"{path}: {error}")
    raise_problems(problems, f"predictions of {len(ids)} images in {prediction_dir}")
    return meter


def run(cfg):
    """Score the predictions -> ``eval.output`` and print the Table II row. Recomputed whenever the
    list, the predictions or the ground truth differ from those recorded in the output."""
    section = cfg.eval
    logger = get_logger("eval")
    output = work_path(cfg, section.output)
    paths = VOCPaths(cfg.data.root)
    list_path = paths.resolve(section.list or cfg.data.val_list)
    ids = read_id_list(list_path)
    gt_dir = paths.resolve(section.gt_dir)
    prediction_dir = work_path(cfg, section.predictions)
    record = make_record(STEP, settings_of(cfg, "eval", root_keys=()), {
        "list": fingerprint(list_path), "predictions": folder_fingerprint(prediction_dir, ids),
        "ground truth": folder_fingerprint(gt_dir, ids)})
    result = reusable_json(cfg, STEP, output, record)
    if result is None:
        validate_samples(paths, ids, gt_dir=gt_dir)
        scores = evaluate_folder(prediction_dir, gt_dir, ids).scores(CLASS_NAMES_WITH_BACKGROUND)
        result = {"name": section.name, "num_images": len(ids), "list": list_path,
                  "predictions": prediction_dir, "ground_truth": gt_dir, **scores, "record": record}
        save_json(output, result)
    table = format_class_table([(result["name"], result)], SHORT_NAMES)
    logger.info("eval: mIoU %.2f%% over %d images, per-class IoU in %s", 100 * result["miou"],
                result["num_images"], output)
    print_and_log(table, "eval")
    return output
