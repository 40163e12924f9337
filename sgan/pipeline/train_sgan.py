"""Stage 1: SGAN (or a Table II variant) with L = L_cls + lambda L_seed on seeds0 -> ckpt/sgan.pt."""
from sgan.data.logits_size import resize_seeds
from sgan.data.voc import VOCTrainSet, validate_samples
from sgan.data.zoom import zoom_nearest
from sgan.data.voc_classes import NUM_CLASSES
from sgan.losses import PROB_FLOOR, classification_loss, seed_loss
from sgan.models.compute import COMPUTE_CHOICES, TRAINING_COMPUTE_DEFAULTS
from sgan.models.sgan_net import VARIANTS, build_network
from sgan.pipeline import resolve_device, work_path
from sgan.pipeline._stage1 import TRAINING_DATA_KEYS, saliency_folder, training_images
from sgan.train import OPTIM_BOUNDS, OPTIM_CHOICES, OPTIM_DEFAULTS, train
from sgan.utils.record import (folder_fingerprint, images_fingerprint, labels_fingerprint, make_record,
                               optional_file, settings_of)
from sgan.utils.seeding import derive_seed, seed_everything

STEP = "train-sgan"

SECTION = dict(defaults={
    **OPTIM_DEFAULTS, **TRAINING_COMPUTE_DEFAULTS,
    "checkpoint": "ckpt/sgan.pt", "variant": "sgan", "seeds_dir": "seeds0",
    "seed_loss_weight": 0.15, "seed_loss_reduction": "image", "seed_loss_floor": PROB_FLOOR,
}, choices={**OPTIM_CHOICES, **COMPUTE_CHOICES, "variant": VARIANTS, "seed_loss_reduction": ("image", "batch")},
    bounds={**OPTIM_BOUNDS, "seed_loss_weight": "[0, inf)", "seed_loss_floor": f"[0, {1 / NUM_CLASSES})"},
    doc="SGAN training: variant sgan | sgan-seed | sgan-sal-seed; seeds_dir (work_dir-relative) holds "
        "the initial seeds; seed_loss_reduction image (eq. 5) or batch (authors); seed_loss_floor: the "
        "softmax floor before the log of the seed loss (1e-5, SEC/DSRG), 0 or null for none (authors); "
        "precision, memory_format and checkpointing of sgan.models.compute")


def run(cfg):
    section = cfg.train_sgan
    paths, ids, labels = training_images(cfg)
    needs_seeds = section.variant == "sgan"
    seeds_dir = work_path(cfg, section.seeds_dir) if needs_seeds else None
    saliency_dir = saliency_folder(cfg) if section.variant != "sgan-sal-seed" else None
    validate_samples(paths, ids, labels, saliency_dir=saliency_dir, seeds_dir=seeds_dir)
    device = resolve_device(cfg)
    seed_everything(derive_seed(cfg.seed, STEP, "init"))
    inputs = {"images": images_fingerprint(paths, ids), "labels": labels_fingerprint(labels, ids),
              "model.weights": optional_file(cfg.model.weights)}
    if saliency_dir is not None:
        inputs["saliency"] = folder_fingerprint(saliency_dir, ids)
    if seeds_dir is not None:
        inputs["initial seeds"] = folder_fingerprint(seeds_dir, ids)
    record = make_record(STEP, settings_of(cfg, "train_sgan", "model", *TRAINING_DATA_KEYS), inputs)
    network, info = build_network(cfg, "sgan", section.variant, checkpointing=section.checkpointing)
    dataset = VOCTrainSet(paths, ids, labels, cfg.data.input_size, info["normalisation"], cfg.data.flip,
                          saliency_dir=saliency_dir, seeds_dir=seeds_dir, resize=cfg.data.resize)
    # seeds at input size -> the logits' size: torch's nearest, or the authors' corner-aligned zoom
    to_logits = zoom_nearest if cfg.data.resize == "corner_aligned" else resize_seeds

    def loss_fn(net, batch, device):
        saliency = batch["saliency"].to(device) if "saliency" in batch else None
        out = net(batch["image"].to(device), saliency)
        cls = classification_loss(out["cam"], batch["labels"].to(device), backend=cfg.backend)
        terms = {"cls": cls.item()}
        if "seed" not in out:
            return cls, terms
        seeds = to_logits(batch["seeds"].to(device), tuple(out["seed"].shape[-2:]))
        seed = seed_loss(out["seed"], seeds, reduction=section.seed_loss_reduction, backend=cfg.backend,
                         floor=section.seed_loss_floor or 0.0)
        terms["seed"] = seed.item()
        total = cls + section.seed_loss_weight * seed.to(cls.dtype)
        terms["total"] = total.item()
        return total, terms

    train(cfg, "train_sgan", name=STEP, model=network, dataset=dataset, loss_fn=loss_fn,
          checkpoint_path=work_path(cfg, section.checkpoint), model_info=info, device=device,
          record=record)

