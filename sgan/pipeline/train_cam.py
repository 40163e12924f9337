"""Stage 1: the baseline CAM network (Table II "Baseline") on image-level labels -> ckpt/cam.pt."""
from sgan.data.voc import VOCTrainSet, validate_samples
from sgan.losses import classification_loss
from sgan.models.compute import COMPUTE_CHOICES, TRAINING_COMPUTE_DEFAULTS
from sgan.models.sgan_net import build_network
from sgan.pipeline import resolve_device, work_path
from sgan.pipeline._stage1 import TRAINING_DATA_KEYS, training_images
from sgan.train import OPTIM_BOUNDS, OPTIM_CHOICES, OPTIM_DEFAULTS, train
from sgan.utils.record import images_fingerprint, labels_fingerprint, make_record, optional_file, settings_of
from sgan.utils.seeding import derive_seed, seed_everything

STEP = "train-cam"

SECTION = dict(defaults={**OPTIM_DEFAULTS, **TRAINING_COMPUTE_DEFAULTS, "checkpoint": "ckpt/cam.pt"},
               choices={**OPTIM_CHOICES, **COMPUTE_CHOICES}, bounds=OPTIM_BOUNDS,
               doc="baseline CAM training: SGD schedule keys of sgan.train.optim; precision, memory_format and "
                   "checkpointing of sgan.models.compute; checkpoint path in work_dir")


def run(cfg):
    section = cfg.train_cam
    paths, ids, labels = training_images(cfg)
    validate_samples(paths, ids, labels)
    device = resolve_device(cfg)
    seed_everything(derive_seed(cfg.seed, STEP, "init"))
    record = make_record(STEP, settings_of(cfg, "train_cam", "model", *TRAINING_DATA_KEYS), {
        "images": images_fingerprint(paths, ids), "labels": labels_fingerprint(labels, ids),
        "model.weights": optional_file(cfg.model.weights)})
    network, info = build_network(cfg, "cam", checkpointing=section.checkpointing)
    dataset = VOCTrainSet(paths, ids, labels, cfg.data.input_size, info["normalisation"], cfg.data.flip,
                          resize=cfg.data.resize)

    def loss_fn(net, batch, device):
        loss = classification_loss(net(batch["image"].to(device))["cam"], batch["labels"].to(device),
                                   backend=cfg.backend)
        return loss, {"cls": loss.item()}

    train(cfg, "train_cam", name=STEP, model=network, dataset=dataset, loss_fn=loss_fn,
          checkpoint_path=work_path(cfg, section.checkpoint), model_info=info, device=device,
          record=record)
