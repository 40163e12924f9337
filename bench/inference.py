"""Benchmark ``inference``: the network passes of the seeds and infer steps at scales above 1 on a
500×375 image, as ``seeds.scales`` and ``infer.scales`` run them.

    python -m bench.run inference --device cpu --threads 2 --scales 1,1.5,2 --precision fp32,bf16

Cases, for each scale s of ``--scales`` and precision of ``--precision``:

- ``seeds``: sgan.seedmaps.class_scores with ``scales=(s,)``: the full SGAN network (VGG-16 stride
  8, official preset, seed branch; random weights) on the image and its saliency resized to
  round(321·s)² (``data.input_size`` 321), the CAM and seed-branch maps at the image's size. The
  attention runs with the reference (``reference``, an N×N matrix) or a fused backend;
- ``infer``: sgan.predict.predict_probabilities with ``scales=(s,)``: DeepLab-ASPP VGG-16 on the
  image resized by s (500·s × 375·s), probabilities at the image's size. DeepLab has no attention,
  so only the fused backend's row is measured (the reference row says so).

Time per image (median / min of --repeats after --warmup) and, on the CPU, the peak resident set size
of a child process per case and backend; on CUDA the allocator's peak. No gradients (inference).
"""
import argparse

import torch

from bench import harness
from bench.harness import MIB, Column, Skip, choice_list, name_list
from bench.registry import Benchmark, Plan, register
from bench.sgan_train import fused_backends, model_options
from sgan.data.voc import normalise
from sgan.models.compute import PRECISIONS, autocast
from sgan.models.deeplab import build_deeplab
from sgan.models.sgan_net import SGANNet
from sgan.predict import predict_probabilities
from sgan.seedmaps import class_scores

IMAGE_SIZE = (375, 500)   # (H, W) of a typical VOC image
INPUT_SIZE = 321          # data.input_size of the paper
STEPS = ("seeds", "infer")


def scale_list(text):
    """'1,1.5,2' -> [1.0, 1.5, 2.0] (positive numbers)."""
    try:
        values = [float(item) for item in name_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive scales, got {text!r}")
    return values


def make_image(seed=0):
    """A uint8 RGB image (H, W, 3), a uint8 saliency map (a salient ellipse plus noise) and labels."""
    generator = torch.Generator().manual_seed(seed)
    height, width = IMAGE_SIZE
    image = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ellipse = ((ys - height / 2) / (height / 3)) ** 2 + ((xs - width / 2) / (width / 3)) ** 2 < 1
    saliency = (ellipse.to(torch.uint8) * 200 + torch.randint(0, 40, (height, width), generator=generator,
                                                              dtype=torch.uint8))
    return image.numpy(), saliency.numpy(), [3, 15]


def add_arguments(parser):
    parser.add_argument("--scales", type=scale_list, default=[1.0, 1.5, 2.0],
                        help="comma separated scales (default 1,1.5,2)")
    parser.add_argument("--precision", type=choice_list(PRECISIONS, "precisions"), default=["fp32"],
                        help="comma separated among fp32, bf16, fp16 (CUDA); default fp32")
    parser.add_argument("--steps", type=choice_list(STEPS, "steps"), default=list(STEPS),
                        help="comma separated among seeds, infer (default both)")
    parser.add_argument("--fused", type=name_list, default=None,
                        help="fused attention backends, comma separated (default: the first usable)")
    parser.add_argument("--width", type=float, default=1.0, help="width factor of both networks (1 = VGG-16)")


def plan(args, device):
    if "fp16" in args.precision and device.type != "cuda":
        raise ValueError(f"--precision: fp16 needs --device cuda, got {device.type}; use bf16")
    if not args.width > 0:
        raise ValueError(f"--width: expected a positive number, got {args.width}")
    fused, unusable = fused_backends(device, args.fused)
    cases = [{"step": step, "scale": scale, "precision": precision,
              "network_input": ([round(INPUT_SIZE * scale)] * 2 if step == "seeds"
                                else [round(side * scale) for side in IMAGE_SIZE])}
             for step in args.steps for scale in args.scales for precision in args.precision]
    return Plan(config={"image_size": list(IMAGE_SIZE), "input_size": INPUT_SIZE, "width": args.width,
                        "model": model_options(args.width)},
                cases=cases, backends=["reference"] + fused, not_measured=unusable)


def measure(case, backends, ctx):
    (backend,) = backends
    device, args = ctx.device, ctx.args
    image, saliency, labels = make_image()
    torch.manual_seed(0)
    if case["step"] == "seeds":
        network = SGANNet(model_options(args.width), "sgan", backend=backend).to(device).eval()
        with torch.no_grad():
            network.attention.gamma.fill_(0.1)

        def step():
            return class_scores(network, image, saliency, labels, INPUT_SIZE, "imagenet_rgb", (case["scale"],),
                                use_seed_branch=True, device=device)
    else:
        if backend == "reference":
            raise Skip("DeepLab has no attention: its pass does not depend on the attention backend")
        network = build_deeplab("vgg16", width=args.width).to(device).eval()
        tensor = normalise(image, "imagenet_rgb").to(device)

        def step():
            return predict_probabilities(network, tensor, (case["scale"],))

    def run():
        with torch.no_grad(), autocast(device, case["precision"]):
            out = step()
        if not torch.isfinite(out).all():
            raise RuntimeError(f"{case['step']} at scale {case['scale']}: non-finite output")

    if device.type == "cuda":
        with harness.cuda_peak(device) as peak:
            timing = ctx.time(run)
        extra = {"peak_memory_mb": peak.peak_bytes / MIB}
    else:
        timing, extra = ctx.time(run), {}
    return {backend: {"median_ms": timing.median_ms, "min_ms": timing.min_ms, **extra}}


register(Benchmark(
    name="inference",
    description="the seeds step's SGAN pass and the infer step's DeepLab pass at scales above 1 on 500x375",
    baseline="reference",
    add_arguments=add_arguments,
    plan=plan,
    measure=measure,
    compare={"median_ms": "speedup"},
    columns=[Column("step", "step"), Column("scale", "scale", "{:g}"),
             Column("network_input", "network input", lambda s: f"{s[0]}x{s[1]}"),
             Column("precision", "precision"), Column("backend", "backend"),
             Column("median_ms", "median ms", "{:.1f}"), Column("min_ms", "min ms", "{:.1f}"),
             Column("peak_memory_mb", "peak MiB", "{:.0f}"), Column("speedup", "ref / it", "{:.2f}x")],
    status_column="median_ms",
    warmup={"cpu": 1, "cuda": 3},
    repeats={"cpu": 3, "cuda": 10},
    memory_method={"cpu": "peak resident set size (VmHWM) of a child process that builds the network and runs the "
                          "warm-up and timed passes of one case and backend",
                   "cuda": "torch.cuda.max_memory_allocated over the warm-up and timed passes (absolute)"},
    output=lambda header: f"inference_{header['device_type']}.json",
    cpu_memory="rss",
))
