"""Stage-2 training iteration (DeepLab-ASPP forward, CRF, balanced seed + boundary loss, backward,
SGD step) with the fused losses against the reference losses, measured in the same process, and the
share of the step time spent waiting for the dense CRF of the boundary loss.

The iteration is the one of ``sgan train-seg`` (its ``StageTwoLoss``: every image's CRF in a
``DenseCRFPool`` worker as soon as the batch's forward is done). Inputs are
synthetic: images made of flat colour blocks plus noise (so the CRF has edges to follow) and seeds
on those blocks with 40% unlabelled. Also timed: the two losses alone (forward + backward on fixed
logits and a fixed CRF output) for each backend.
Writes bench/results/seg_train_<device>.json.

    python -m bench.bench_seg_train                                  # CPU: width 0.25, B = 2
    python -m bench.bench_seg_train --device cuda --arch resnet101   # B = 15, 321², full width
"""
import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

from sgan.config import Config
from sgan.crf import DenseCRFPool, default_processes
from sgan.losses import balanced_seed_loss, boundary_loss, resize_images, resize_seeds, resolve_backend
from sgan.models.deeplab import ARCHS, build_deeplab
from sgan.pipeline.train_seg import StageTwoLoss, logits_size
from sgan.train.optim import build_sgd
from sgan.utils.io import save_json


def make_batch(batch, crop, output_size, seed=0):
    """{"image" float (B, 3, crop, crop), "seeds" int64 (B, h, w), "crf_image" uint8 (B, h, w, 3)}."""
    rng = np.random.default_rng(seed)
    blocks = 4
    labels = rng.integers(0, 21, (batch, blocks, blocks))
    colours = rng.integers(0, 256, (batch, blocks, blocks, 3))
    cell = -(-crop // blocks)
    block_labels = labels.repeat(cell, 1).repeat(cell, 2)[:, :crop, :crop]
    pixels = colours.repeat(cell, 1).repeat(cell, 2)[:, :crop, :crop] + rng.normal(0, 12, (batch, crop, crop, 3))
    images = np.clip(pixels, 0, 255).astype(np.uint8)
    seeds = np.where(rng.random(block_labels.shape) < 0.4, 255, block_labels)
    return {"image": torch.from_numpy(images).permute(0, 3, 1, 2).float().sub(120.0),
            "seeds": resize_seeds(torch.from_numpy(seeds), output_size),
            "crf_image": torch.from_numpy(resize_images(images, output_size))}


def fused_backend(device, wanted="auto"):
    """The fused loss backend that ``wanted`` resolves to and that runs (probed with a tiny call), or None."""
    logits = torch.zeros(1, 21, 2, 2, device=device, requires_grad=True)
    seeds = torch.zeros(1, 2, 2, dtype=torch.int64, device=device)
    try:
        backend = resolve_backend(wanted, logits)
        if backend == "reference":
            return None
        loss = balanced_seed_loss(logits, seeds, backend=backend) + boundary_loss(
            logits, crf_probs=torch.full_like(logits, 1 / 21), backend=backend)
        loss.backward()
        return backend
    except (RuntimeError, ValueError, ImportError) as error:
        print(f"fused loss backend {wanted!r} is not usable on {device.type}: {str(error).splitlines()[0]}")
        return None


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(network, batch, device, loss_backend, pool, warmup, repeats):
    """Median/min step time, median CRF wait and the wait share of ``repeats`` training iterations."""
    section = Config({"seed_loss_weight": 1.0, "boundary_loss_weight": 1.0, "crf_scale": 12.0, "crf_iterations": 10})
    loss_fn = StageTwoLoss(section, loss_backend, pool)
    optimizer = build_sgd(network, 1e-3, 0.9, 5e-4, [1, 2, 10, 20])
    network.train()
    steps = []
    for iteration in range(warmup + repeats):
        _sync(device)
        start = time.perf_counter()
        loss, _ = loss_fn(network, batch, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        if iteration >= warmup:
            steps.append(time.perf_counter() - start)
    if not torch.isfinite(loss):
        raise RuntimeError(f"{loss_backend}: non-finite loss {float(loss)}")
    waits = loss_fn.waits[warmup:]
    return {"loss_backend": loss_backend, "median_step_ms": 1e3 * statistics.median(steps),
            "min_step_ms": 1e3 * min(steps), "median_crf_wait_ms": 1e3 * statistics.median(waits),
            "crf_wait_fraction": sum(waits) / sum(steps), "iterations_timed": repeats}


def time_losses(logits, seeds, crf_probs, loss_backend, warmup, repeats):
    """Median time of the balanced seed + boundary losses, forward and backward, on fixed inputs."""
    device = logits.device
    times = []
    for iteration in range(warmup + repeats):
        leaf = logits.detach().requires_grad_(True)
        _sync(device)
        start = time.perf_counter()
        loss = balanced_seed_loss(leaf, seeds, backend=loss_backend) + boundary_loss(
            leaf, crf_probs=crf_probs, backend=loss_backend)
        loss.backward()
        _sync(device)
        if iteration >= warmup:
            times.append(time.perf_counter() - start)
    return {"loss_backend": loss_backend, "median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
            "loss": float(loss.detach())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="vgg16", choices=ARCHS)
    parser.add_argument("--width", type=float, default=None, help="default 1.0 on CUDA, 0.25 on CPU")
    parser.add_argument("--batch", type=int, default=None, help="default 15 on CUDA, 2 on CPU")
    parser.add_argument("--crop", type=int, default=321)
    parser.add_argument("--crf-processes", type=int, default=None, help="default min(batch, cores)")
    parser.add_argument("--warmup", type=int, default=None, help="default 3 on CUDA, 1 on CPU")
    parser.add_argument("--repeats", type=int, default=None, help="default 10 on CUDA, 3 on CPU")
    parser.add_argument("--fused", default="auto", help="fused loss backend (default: what 'auto' picks)")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/seg_train_<device>.json)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    width = args.width or (1.0 if on_gpu else 0.25)
    batch_size = args.batch or (15 if on_gpu else 2)
    warmup = args.warmup if args.warmup is not None else (3 if on_gpu else 1)
    repeats = args.repeats or (10 if on_gpu else 3)
    processes = args.crf_processes or max(1, min(batch_size, default_processes()))
    if on_gpu:
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    network = build_deeplab(args.arch, width=width).to(device)
    output_size = logits_size(network, args.crop, device)
    batch = make_batch(batch_size, args.crop, output_size)
    fused = fused_backend(device, args.fused)
    backends = ["reference"] + ([fused] if fused else [])
    if len(backends) == 1:
        print(f"no fused loss backend is available on {device.type}: only the reference is measured")
    report = {"benchmark": "seg_train_iteration",
              "device": torch.cuda.get_device_name(device) if on_gpu else platform.processor() or platform.machine(),
              "device_type": device.type, "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
              "arch": args.arch, "width": width, "batch": batch_size, "crop": [args.crop, args.crop],
              "logits_size": list(output_size), "crf_processes": processes, "cpu_cores": default_processes(),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "training": [], "losses_only": []}
    with DenseCRFPool(processes) as pool:
        crf_probs = pool.submit(batch["crf_image"].numpy(),
                                torch.full((batch_size, 21, *output_size), 1 / 21).numpy()).result()
        for backend in backends:
            result = time_training(network, batch, device, backend, pool, warmup, repeats)
            report["training"].append(result)
            print(f"training  {backend:9s} {args.arch} w={width} B={batch_size} {args.crop}²: "
                  f"step {result['median_step_ms']:.1f} ms (min {result['min_step_ms']:.1f}), CRF wait "
                  f"{result['median_crf_wait_ms']:.1f} ms = {100 * result['crf_wait_fraction']:.1f}% of the "
                  f"step ({processes} CRF workers)")
    logits = torch.randn(batch_size, 21, *output_size, device=device)
    seeds = batch["seeds"].to(device)
    for backend in backends:
        result = time_losses(logits, seeds, torch.from_numpy(crf_probs).to(device), backend, warmup,
                             max(repeats, 20))
        report["losses_only"].append(result)
        print(f"losses    {backend:9s} fwd+bwd (B={batch_size}, 21, {output_size[0]}x{output_size[1]}): "
              f"{result['median_ms']:.2f} ms")
    if len(backends) == 2:
        steps = {r["loss_backend"]: r["median_step_ms"] for r in report["training"]}
        report["step_speedup_reference_over_fused"] = steps["reference"] / steps[fused]
        report["loss_speedup_reference_over_fused"] = (report["losses_only"][0]["median_ms"]
                                                        / report["losses_only"][1]["median_ms"])
        print(f"reference / {fused}: step {report['step_speedup_reference_over_fused']:.2f}x, "
              f"losses {report['loss_speedup_reference_over_fused']:.2f}x")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"seg_train_{device.type}.json")
    save_json(out, report)
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
