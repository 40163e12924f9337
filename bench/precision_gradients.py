"""How far one SGAN training step's gradients move under bf16 autocast, per parameter, against the
same step in float32: for the fused backend and the reference, under the official and the paper
preset, and with the attention module itself kept in float32.

    python -m bench.precision_gradients WORK_DIR --output bench/results/precision-gradients.json

WORK_DIR is a demo work dir (``sgan demo``): its ``ckpt/sgan_sgan.pt`` (the SGAN variant's stage-1
network), ``labels.json``, generated data and ``seeds0/``. One batch of ``--batch`` training images at
``data.input_size`` (no flip), the loss L_cls + 0.15 L_seed (floor 1e-5) as train-sgan computes it,
γ set to ``--gamma``. Reported: the relative error ||g_bf16 - g_fp32|| / ||g_fp32|| of the key,
query, γ, seed-branch and last backbone conv gradients, and the largest over all parameters.
"""
import argparse
import contextlib
import json
import os
import sys

import torch

from bench.harness import device_header
from sgan.data.logits_size import resize_seeds
from sgan.data.voc import VOCPaths, VOCTrainSet, read_id_list
from sgan.losses import PROB_FLOOR, classification_loss, seed_loss
from sgan.models import attention as attention_module
from sgan.models.compute import autocast
from sgan.models.sgan_net import network_from_info
from sgan.train import load_checkpoint
from sgan.utils.io import save_json

REPORTED = ("attention.key.weight", "attention.query.weight", "attention.gamma", "seed_branch.weight",
            "backbone.conv5_3.weight")


@contextlib.contextmanager
def attention_in_float32():
    """SaliencyGuidedAttention with autocast off inside: its key/query convs and the operator in float32."""
    forward = attention_module.SaliencyGuidedAttention.forward

    def float32_forward(self, x, saliency_mask):
        with torch.autocast(x.device.type, enabled=False):
            return forward(self, x.float(), saliency_mask)

    attention_module.SaliencyGuidedAttention.forward = float32_forward
    try:
        yield
    finally:
        attention_module.SaliencyGuidedAttention.forward = forward


def training_batch(work_dir, info, size, count):
    paths = VOCPaths(os.path.join(work_dir, "data", "VOC2012"))
    ids = read_id_list(paths.resolve("ImageSets/Segmentation/train_aug.txt"))[:count]
    with open(os.path.join(work_dir, "labels.json")) as f:
        labels = json.load(f)["labels"]
    dataset = VOCTrainSet(paths, ids, labels, size, info["normalisation"], False,
                          saliency_dir=os.path.join(work_dir, "data", "saliency"),
                          seeds_dir=os.path.join(work_dir, "seeds0"), resize="pil")
    return torch.utils.data.default_collate([dataset[(i, i)] for i in range(len(ids))])


def gradients(state, info, batch, backend, precision, gamma):
    network = network_from_info(info, backend)
    network.load_state_dict(state["model"])
    with torch.no_grad():
        network.attention.gamma.fill_(gamma)
    network.train()
    torch.manual_seed(1)   # the same dropout masks in every run
    with autocast(torch.device("cpu"), precision):
        out = network(batch["image"], batch["saliency"])
        cls = classification_loss(out["cam"], batch["labels"], backend=backend)
        seeds = resize_seeds(batch["seeds"], tuple(out["seed"].shape[-2:]))
        loss = cls + 0.15 * seed_loss(out["seed"], seeds, backend=backend, floor=PROB_FLOOR).to(cls.dtype)
    loss.backward()
    return {name: p.grad.double() for name, p in network.named_parameters() if p.grad is not None}


def relative_errors(ours, reference):
    errors = {name: float((ours[name] - g).norm() / g.norm().clamp_min(1e-30)) for name, g in reference.items()}
    return {**{name: errors[name] for name in REPORTED}, "largest": max(errors.values())}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.precision_gradients", description=__doc__.split("\n\n")[0])
    parser.add_argument("work_dir")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--gamma", type=float, default=0.3)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    checkpoint = os.path.join(args.work_dir, "ckpt", "sgan_sgan.pt")
    try:
        state = load_checkpoint(checkpoint)
    except ValueError as error:
        print(f"precision_gradients: error: {error}", file=sys.stderr)
        return 2
    size = int(state["config"]["data"]["input_size"])
    rows = []
    for preset in ("official", "paper"):
        info = {**state["model_info"], "options": {**state["model_info"]["options"], "attention_preset": preset}}
        batch = training_batch(args.work_dir, info, size, args.batch)
        for backend, attention_dtype in (("cpp", "bf16"), ("reference", "bf16"), ("cpp", "fp32")):
            scope = attention_in_float32() if attention_dtype == "fp32" else contextlib.nullcontext()
            reference = gradients(state, info, batch, backend, "fp32", args.gamma)
            with scope:
                ours = gradients(state, info, batch, backend, "bf16", args.gamma)
            row = {"preset": preset, "backend": backend, "attention": attention_dtype,
                   "relative_error": relative_errors(ours, reference)}
            rows.append(row)
            print(f"{preset:9s} {backend:9s} attention {attention_dtype}: " + " ".join(
                f"{name} {100 * value:.1f}%" for name, value in row["relative_error"].items()))
    if args.output:
        save_json(args.output, {**device_header(torch.device("cpu")), "checkpoint": checkpoint, "batch": args.batch,
                                "gamma": args.gamma, "input_size": size, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
