"""Pretrain the backbone on a synthetic classification set (the demo's stand-in for ImageNet weights).

Trains :class:`sgan.models.vgg.PretrainClassifier` (the VGG-16 backbone of ``model.width`` and
``model.convs_per_block``, batch normalisation after each convolution, a 1×1 classifier and global
average pooling) with the softmax cross-entropy against the image's classes (uniform over them) on ``pretrain.num_images`` images of
sgan.experiments.pretrain_set (24 classes of shapes and colours, disjoint from the demo's benchmark),
drawn with ``pretrain.seed`` (which also seeds the initialisation and the batch order, in place of
the root ``seed``: like ImageNet weights, one pretraining serves runs of every training seed), then writes ``pretrain.weights``: plain VGG-16 weights in
torchvision naming (``features.{i}.weight|bias``, batch normalisation folded into the
convolutions), which ``model.weights`` and ``train_seg.weights`` read like ImageNet weights, with
``imagenet_rgb`` normalisation. The checkpoint (``pretrain.checkpoint``) records the settings; the
weights file is rewritten whenever its bytes would differ, so what reads it sees a change exactly
when the pretraining changed.
"""
import torch.nn.functional as F

from sgan.config import resolve
from sgan.experiments.pretrain_set import NUM_CLASSES, PretrainSet
from sgan.models.compute import COMPUTE_CHOICES, COMPUTE_DEFAULTS
from sgan.models.vgg import PretrainClassifier, folded_torchvision_state
from sgan.pipeline import resolve_device, work_path
from sgan.train import OPTIM_BOUNDS, OPTIM_CHOICES, OPTIM_DEFAULTS, load_checkpoint, train
from sgan.train.distributed import barrier, init_distributed
from sgan.utils.io import save_torch_if_changed
from sgan.utils.logging import get_logger
from sgan.utils.record import make_record, settings_of
from sgan.utils.seeding import derive_seed, seed_everything

STEP = "pretrain"
NORMALISATION = "imagenet_rgb"   # what torchvision-named weights are read with (data.normalisation auto)

SECTION = dict(defaults={**OPTIM_DEFAULTS, **COMPUTE_DEFAULTS, "num_images": 4000, "image_size": [96, 96], "seed": 1000,
                         "checkpoint": "ckpt/pretrain.pt", "weights": "weights/pretrained_vgg16.pth"},
               choices={**OPTIM_CHOICES, **COMPUTE_CHOICES},
               bounds={**OPTIM_BOUNDS, "num_images": "[1, inf)", "image_size": "[32, inf)", "seed": "[0, inf)"},
               doc="backbone pretraining on the synthetic classification set (sgan.experiments.pretrain_set): "
                   "num_images images of image_size [H, W]; seed draws them and seeds the initialisation and batch order "
                   "(the root seed does not: one pretraining serves every training seed); SGD keys of sgan.train.optim; "
                   "writes checkpoint and weights (torchvision VGG-16 naming) in work_dir; precision and memory_format of "
                   "sgan.models.compute")


def write_weights(checkpoint, path):
    """The folded torchvision-named state of a pretrain checkpoint, written to ``path`` when its bytes
    differ from the file there. Returns path."""
    state = load_checkpoint(checkpoint)
    weights = folded_torchvision_state(state["model"], state["model_info"]["conv_names"])
    save_torch_if_changed(path, weights)
    return path


def run(cfg):
    section = cfg.pretrain
    if len(section.image_size) != 2:
        raise ValueError(f"pretrain.image_size: expected [height, width], got {list(section.image_size)}")
    cfg = resolve({**cfg.to_dict(), "seed": section.seed}, source="pretrain.seed")
    device = resolve_device(cfg)
    seed_everything(derive_seed(cfg.seed, STEP, "init"))
    record = make_record(STEP, settings_of(cfg, "pretrain", "model.width", "model.convs_per_block", root_keys=()), {})
    network = PretrainClassifier(NUM_CLASSES, cfg.model.width, cfg.model.convs_per_block)
    info = {"kind": "pretrain", "num_classes": NUM_CLASSES, "width": cfg.model.width,
            "convs_per_block": list(cfg.model.convs_per_block), "conv_names": list(network.backbone.conv_names),
            "normalisation": NORMALISATION}
    dataset = PretrainSet(section.num_images, section.image_size, section.seed, NORMALISATION)

    def loss_fn(net, batch, device):
        logits = net(batch["image"].to(device))
        labels = batch["labels"].to(device)
        loss = F.cross_entropy(logits, labels / labels.sum(dim=1, keepdim=True))
        top1 = labels.gather(1, logits.argmax(dim=1, keepdim=True)).mean()
        return loss, {"ce": loss.item(), "top1": top1.item()}

    checkpoint = train(cfg, "pretrain", name=STEP, model=network, dataset=dataset, loss_fn=loss_fn,
                       checkpoint_path=work_path(cfg, section.checkpoint), model_info=info, device=device,
                       record=record)
    path = work_path(cfg, section.weights)
    rank, _ = init_distributed(cfg)
    if rank == 0:   # under torchrun: one writer, and no rank reads the file before it is there
        write_weights(checkpoint, path)
        get_logger("pretrain").info("pretrain: weights (torchvision VGG-16 naming) in %s", path)
    barrier()
    return path
