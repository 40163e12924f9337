"""Stage 2: predict the images of a list with the trained DeepLab -> pred/<id>.png (VOC palette).

Each image is predicted at its original size (logits upsampled before the softmax; optional
``scales`` and ``flip``, probabilities averaged; sgan.predict), then optionally refined by the dense
CRF with s = 1 (docs/design.md §3). The CRF runs in a process pool while the network predicts the next
images; at most ``2 x crf_processes`` images wait for their CRF at any time. A finished folder is
kept when its record (settings, checkpoint, list, images) matches; an interrupted one is continued
only when it was started from the same record (its PNGs are removed otherwise). Under torchrun every rank
predicts its share of the list (ids[rank::world]).
"""
import collections
import os

import numpy as np

from sgan.crf import TEST_SCALE, DenseCRFPool, default_processes
from sgan.data.voc import VOCPaths, load_rgb, normalise, read_id_list, validate_samples
from sgan.models.compute import COMPUTE_CHOICES, COMPUTE_DEFAULTS, apply_memory_format, autocast, check_precision
from sgan.models.deeplab import build_deeplab
from sgan.pipeline import resolve_device, work_path
from sgan.predict import predict_probabilities, save_label_png
from sgan.train import barrier, init_distributed, load_checkpoint
from sgan.utils.io import read_done_marker
from sgan.utils.logging import get_logger
from sgan.utils.progress import progress
from sgan.utils.record import fingerprint, finish_partial, images_fingerprint, make_record, settings_of, start_partial, up_to_date

STEP = "infer"

SECTION = dict(defaults={
    "checkpoint": "ckpt/deeplab.pt",
    "list": None,
    "output_dir": "pred",
    "scales": [1.0],
    "flip": False,
    "crf": True,
    "crf_scale": TEST_SCALE,
    "crf_iterations": 10,
    "crf_processes": None,
    **COMPUTE_DEFAULTS,
}, choices=COMPUTE_CHOICES,
    bounds={"scales": "(0, inf)", "crf_scale": "(0, inf)", "crf_iterations": "[1, inf)", "crf_processes": "[1, inf)"},
    doc="stage-2 inference: list (relative to data.root; null = data.val_list); scales: floats are "
       "factors, ints the longer side in pixels (the authors' 288/385/481); crf: dense CRF with "
       "s = crf_scale; crf_processes: null = all cores of this rank; precision and memory_format of "
       "sgan.models.compute (the probabilities are float32)")


def load_segmentation_model(path, device):
    """(DeepLab in eval mode on ``device``, its input normalisation) from a train-seg checkpoint."""
    state = load_checkpoint(path)
    info = state.get("model_info") or {}
    if "network" not in info or "normalisation" not in info:
        raise ValueError(f"checkpoint: {path} holds no DeepLab network (model_info {sorted(info)}); "
                         "expected the output of the train-seg step")
    model = build_deeplab(**info["network"])
    model.load_state_dict(state["model"])
    return model.to(device).eval(), info["normalisation"]


def run(cfg):
    section = cfg.infer
    logger = get_logger("infer")
    rank, world = init_distributed(cfg)
    paths = VOCPaths(cfg.data.root)
    list_path = paths.resolve(section.list or cfg.data.val_list)
    ids = read_id_list(list_path)
    output_dir = work_path(cfg, section.output_dir)
    checkpoint = work_path(cfg, section.checkpoint)
    record = make_record(STEP, settings_of(cfg, "infer", root_keys=()), {
        "checkpoint": fingerprint(checkpoint), "list": fingerprint(list_path),
        "images": images_fingerprint(paths, ids)})
    if up_to_date(cfg, STEP, output_dir, read_done_marker(output_dir), record):
        return output_dir
    validate_samples(paths, ids)
    device = resolve_device(cfg)
    check_precision(section.precision, device, "infer.precision")
    model, normalisation = load_segmentation_model(checkpoint, device)
    apply_memory_format(model, section.memory_format)
    if rank == 0:
        continuing = start_partial(output_dir, record, cfg.overwrite, ids)
        logger.info("infer: %s %s", "continuing the interrupted predictions in" if continuing else "predicting into",
                    output_dir)
    barrier()
    todo = [i for i in ids[rank::world] if not os.path.isfile(os.path.join(output_dir, i + ".png"))]
    logger.info("infer: %d of %d images to predict on rank %d (scales %s, flip %s, crf %s)", len(todo),
                len(ids), rank, list(section.scales), section.flip, section.crf)
    processes = section.crf_processes or max(1, default_processes() // world)
    pool = DenseCRFPool(processes) if section.crf and todo else None
    pending = collections.deque()   # (id, future of the CRF output)

    def write_oldest():
        image_id, future = pending.popleft()
        save_label_png(os.path.join(output_dir, image_id + ".png"), future.result()[0].argmax(0))

    try:
        for image_id in progress(todo, desc="infer", rank=rank, unit="img"):
            image = load_rgb(paths.image(image_id))
            tensor = normalise(image, normalisation).to(device)
            with autocast(device, section.precision):
                probabilities = predict_probabilities(model, tensor, section.scales, section.flip)
            probabilities = probabilities.float().cpu().numpy()
            if pool is None:
                save_label_png(os.path.join(output_dir, image_id + ".png"), probabilities.argmax(0))
                continue
            pending.append((image_id, pool.submit(np.ascontiguousarray(image[None]), probabilities[None],
                                                  scale=float(section.crf_scale),
                                                  iterations=int(section.crf_iterations))))
            while len(pending) > 2 * processes:
                write_oldest()
        while pending:
            write_oldest()
    finally:
        if pool is not None:
            pool.close()
    barrier()
    if rank == 0:
        finish_partial(output_dir, record)
    return output_dir
