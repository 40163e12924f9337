"""Stage 2: train DeepLab-ASPP on the dense seeds (balanced seed loss + boundary loss) -> ckpt/deeplab.pt.

Data (docs/design.md §5): every image of ``data.train_list`` with its seeds ``<seeds_dir>/<id>.png``
(0 background, 1..20 classes, 255 unlabelled), resized to ``resize``² (bilinear; seeds nearest),
a random ``crop``² window, a horizontal flip (p = 0.5) and a colour jitter (brightness, contrast
and saturation factors drawn uniformly in 1 ± ``color_jitter``), all drawn from the sample's seed,
so a resumed run sees the same samples. The seeds are brought to the logits' size by nearest
neighbour; the image the CRF sees is the jittered crop resized to the logits' size.

Loss: ``seed_loss_weight`` · balanced seed loss (eq. 8) + w · boundary loss (eq. 9), where w is
``boundary_loss_weight`` from the first iteration (``boundary_loss_warmup`` 0, the paper) or ramps
linearly from 0 at iteration 0 to ``boundary_loss_weight`` at iteration ``boundary_loss_warmup``
(the demo's setting; docs/study.md says why).

The CRF of the boundary loss takes the current prediction as its unary, so it cannot be
computed before the forward pass of its own images, and the backward pass cannot start before it
is done. What can be prepared ahead is: the DataLoader workers make the small uint8 CRF images of
the next batches, and each image's CRF goes to its own worker of a ``sgan.crf.DenseCRFPool``
(``crf_processes`` workers, default min(per-rank batch, cores per rank)) as soon as the forward pass
is done. The time the step still waits for the CRF is measured (``crf_wait_ms`` in the log and
history) and its share of the step time is written to ``metrics/train_seg_timing.json``.
bench/README.md (`seg_train`) has the measured wait.

Optimisation: SGD, momentum 0.9, weight decay 5e-4, batch 15, lr 1e-3 x 0.33 every 2000
iterations, 12000 iterations; lr x1/x2 (weights/biases) for the layers loaded from
``train_seg.weights`` and x10/x20 for the layers it does not provide, as in DeepLab's prototxt:
VGG-16's fc8 (fc6/fc7 come from ImageNet's fc layers), ResNet-101's ASPP, and fc6/fc7 too when
the file has only convolutions (the demo's pretrained weights); without weights, x10/x20 for
everything outside the backbone (sgan.train.optim). Checkpoints, exact resume and DDP: sgan.train.loop.
"""
import os
import time

import numpy as np
import torch

from sgan.crf import DenseCRFPool, default_processes
from sgan.data.seg_dataset import SegTrainSet
from sgan.data.voc import VOCPaths, read_id_list, validate_samples
from sgan.data.voc_classes import NUM_CLASSES_WITH_BACKGROUND
from sgan.losses import balanced_seed_loss, boundary_loss, crf_unary_probs
from sgan.models.compute import COMPUTE_CHOICES, TRAINING_COMPUTE_DEFAULTS
from sgan.models.deeplab import ARCHS, NAMINGS, build_deeplab, detect_naming, load_pretrained, read_state_dict
from sgan.models.resnet import RESNET101_BLOCKS
from sgan.models.sgan_net import resolve_normalisation
from sgan.pipeline import resolve_device, work_path
from sgan.train import OPTIM_BOUNDS, OPTIM_CHOICES, OPTIM_DEFAULTS, train
from sgan.train.distributed import init_distributed
from sgan.train.loop import checkpoint_up_to_date, last_checkpoint_path
from sgan.utils.io import save_json
from sgan.utils.logging import get_logger
from sgan.utils.record import folder_fingerprint, images_fingerprint, make_record, optional_file, settings_of
from sgan.utils.seeding import derive_seed, seed_everything

STEP = "train-seg"

SECTION = dict(defaults={
    **OPTIM_DEFAULTS,
    **TRAINING_COMPUTE_DEFAULTS,
    "iterations": 12000,
    "step_size": 2000,
    "step_gamma": 0.33,
    "arch": "vgg16",
    "width": 1.0,
    "blocks": list(RESNET101_BLOCKS),
    "weights": None,
    "weights_naming": "auto",
    "seeds_dir": "seeds",
    "resize": 353,
    "crop": 321,
    "flip": True,
    "color_jitter": 0.3,
    "seed_loss_weight": 1.0,
    "boundary_loss_weight": 1.0,
    "boundary_loss_warmup": 0,
    "crf_scale": 12.0,
    "crf_iterations": 10,
    "crf_processes": None,
    "checkpoint": "ckpt/deeplab.pt",
    "timing_file": "metrics/train_seg_timing.json",
}, choices={**OPTIM_CHOICES, **COMPUTE_CHOICES, "arch": ARCHS, "weights_naming": NAMINGS},
    bounds={**OPTIM_BOUNDS, "width": "(0, inf)", "blocks": "[1, inf)", "resize": "[1, inf)", "crop": "[1, inf)",
            "color_jitter": "[0, 1)", "seed_loss_weight": "[0, inf)", "boundary_loss_weight": "[0, inf)",
            "boundary_loss_warmup": "[0, inf)",
            "crf_scale": "(0, inf)", "crf_iterations": "[1, inf)", "crf_processes": "[1, inf)"},
    doc="stage 2: DeepLab-ASPP (arch vgg16|resnet101; width/blocks shrink it for tests) trained on "
        "the seeds of seeds_dir (relative to work_dir); weights: local ImageNet file; boundary_loss_warmup: "
        "iterations over which the boundary loss weight ramps in from 0 (0 = the paper); crf_processes: "
        "CRF workers per rank (null = min(batch per rank, cores per rank)); precision, memory_format and "
        "checkpointing (backbone blocks and ASPP branches) of sgan.models.compute")


def build_model(section, normalisation_setting, logger):
    """(DeepLab network with its ImageNet weights, the resolved input normalisation, the names of
    the parameters the weights did not provide or None without weights: the new layers)."""
    naming, state, new_names = None, None, None
    if section.weights:
        state = read_state_dict(section.weights, "train_seg.weights")
        naming = detect_naming(state) if section.weights_naming == "auto" else section.weights_naming
    options = {"num_classes": NUM_CLASSES_WITH_BACKGROUND, "width": section.width}
    if section.arch == "resnet101":
        options.update(blocks=list(section.blocks), stride_in_1x1=naming == "caffe")
    model = build_deeplab(section.arch, **options, checkpointing=section.checkpointing)
    if state is not None:
        report = load_pretrained(model, state, naming, width_option=("train_seg.width", section.width))
        logger.info("train-seg: %s", report.summary().replace("\n", "; "))
        new_names = set(report.initialised)
    else:
        logger.warning("train_seg.weights is not set: DeepLab (%s) starts from random weights", section.arch)
    return model, resolve_normalisation(normalisation_setting, naming), new_names


@torch.no_grad()
def logits_size(model, crop, device):
    """(h, w) of the logits for a crop x crop input (one dummy forward)."""
    was_training = model.training
    model.eval()
    size = tuple(model(torch.zeros(1, 3, crop, crop, device=device)).shape[2:])
    model.train(was_training)
    return size


def boundary_weight(section, iteration):
    """The boundary loss weight at ``iteration`` (0-based): ``boundary_loss_weight``, ramped
    linearly from 0 over the first ``boundary_loss_warmup`` iterations."""
    warmup = section.boundary_loss_warmup
    return section.boundary_loss_weight * (min(1.0, iteration / warmup) if warmup > 0 else 1.0)


class StageTwoLoss:
    """loss_fn of sgan.train.train for stage 2: the weighted balanced seed loss plus, when the
    boundary weight (:func:`boundary_weight`) is > 0 and a CRF ``pool`` is given, the weighted
    boundary loss, whose CRF targets ``pool`` computes from the batch's own logits (each image in
    its own worker).

    Records the time each step waits for the CRF (``waits``) and the time between calls (``steps``).
    """

    def __init__(self, section, backend, pool):
        self.section, self.backend, self.pool = section, backend, pool
        self.waits, self.steps = [], []
        self._last_start = None

    def __call__(self, net, batch, device):
        start = time.perf_counter()
        if self._last_start is not None:
            self.steps.append(start - self._last_start)
        self._last_start = start
        section = self.section
        logits = net(batch["image"].to(device, non_blocking=True))
        crf_future = None
        weight = boundary_weight(section, batch["iteration"])
        if self.pool is not None and weight > 0:
            crf_future = self.pool.submit(batch["crf_image"].numpy(), crf_unary_probs(logits),
                                          scale=float(section.crf_scale), iterations=int(section.crf_iterations))
        seed_term = balanced_seed_loss(logits, batch["seeds"].to(device, non_blocking=True), backend=self.backend)
        loss = section.seed_loss_weight * seed_term
        terms = {"seed": float(seed_term.detach())}
        if crf_future is not None:
            wait_start = time.perf_counter()
            crf_probs = crf_future.result()
            self.waits.append(time.perf_counter() - wait_start)
            terms["crf_wait_ms"] = 1000.0 * self.waits[-1]
            boundary_term = boundary_loss(logits, crf_probs=crf_probs, backend=self.backend)
            loss = loss + weight * boundary_term
            terms["boundary"] = float(boundary_term.detach())
        return loss, terms

    def timing(self):
        """Mean step time, mean CRF wait and the wait's share of the step time. The first step
        (start-up of the data workers) is left out; steps[i] runs from call i's start to call i+1's."""
        steps, waits = self.steps[1:], self.waits[1:len(self.steps)]
        total = sum(steps)
        return {"steps_measured": len(steps),
                "mean_step_ms": 1000.0 * total / len(steps) if steps else None,
                "mean_crf_wait_ms": 1000.0 * sum(waits) / len(waits) if waits else None,
                "crf_wait_fraction": sum(waits) / total if steps and waits else None}


def run(cfg):
    section = cfg.train_seg
    logger = get_logger("train_seg")
    checkpoint = work_path(cfg, section.checkpoint)
    rank, world = init_distributed(cfg)
    paths = VOCPaths(cfg.data.root)
    ids = read_id_list(paths.resolve(cfg.data.train_list))
    seeds_dir = work_path(cfg, section.seeds_dir)
    record = make_record(STEP, settings_of(cfg, "train_seg", "data.normalisation"), {
        "images": images_fingerprint(paths, ids), "seeds": folder_fingerprint(seeds_dir, ids),
        "train_seg.weights": optional_file(section.weights)})
    # a finished checkpoint of the same settings and inputs: nothing is read or started for it here
    # (sgan.train.train then skips as well)
    if not os.path.isfile(last_checkpoint_path(checkpoint)) and checkpoint_up_to_date(cfg, STEP, checkpoint, record):
        return checkpoint
    validate_samples(paths, ids, seeds_dir=seeds_dir)
    device = resolve_device(cfg)
    seed_everything(derive_seed(cfg.seed, STEP, "init"))
    model, normalisation, new_names = build_model(section, cfg.data.normalisation, logger)
    model.to(device)
    output_size = logits_size(model, section.crop, device)
    dataset = SegTrainSet(paths, ids, seeds_dir, resize_to=section.resize, crop=section.crop,
                          flip=section.flip, color_jitter=section.color_jitter,
                          normalisation=normalisation, output_size=output_size)
    model_info = {"network": model.model_info(), "normalisation": normalisation}
    processes = section.crf_processes
    if processes is None:
        processes = max(1, min(section.batch_size // world, default_processes() // world))
    pool = DenseCRFPool(processes) if section.boundary_loss_weight > 0 else None
    loss_fn = StageTwoLoss(section, cfg.backend, pool)
    try:
        if pool is not None:  # start the workers now, so their start-up is not counted as waiting
            warm = np.zeros((processes, *output_size, 3), np.uint8)
            uniform = np.full((processes, NUM_CLASSES_WITH_BACKGROUND, *output_size),
                              1.0 / NUM_CLASSES_WITH_BACKGROUND, np.float32)
            pool.submit(warm, uniform).result()
        train(cfg, "train_seg", name=STEP, model=model, dataset=dataset, loss_fn=loss_fn,
              checkpoint_path=checkpoint, model_info=model_info, device=device, record=record, checked=True,
              new_parameters=new_names)
    finally:
        if pool is not None:
            pool.close()
    timing = loss_fn.timing()
    if timing["steps_measured"] == 0:
        return checkpoint
    if pool is not None:
        logger.info("train-seg: waited %.1f ms for the CRF per step of %.1f ms (%.1f%% of the step time, "
                    "%d CRF workers)", timing["mean_crf_wait_ms"], timing["mean_step_ms"],
                    100 * timing["crf_wait_fraction"], processes)
    if rank == 0:
        save_json(work_path(cfg, section.timing_file),
                  {**timing, "crf_processes": processes if pool is not None else 0, "world_size": world,
                   "batch_size": section.batch_size, "device": str(device)})
    return checkpoint
