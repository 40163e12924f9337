"""Benchmark ``seg_train``: the stage-2 training iteration (DeepLab-ASPP forward, CRF, balanced seed
+ boundary loss, backward, SGD step) with the fused losses against the reference losses, and the
share of the step time spent waiting for the dense CRF of the boundary loss.

    python -m bench.run seg_train                                  # CPU: width 0.25, B = 2
    python -m bench.run seg_train --device cuda --arch resnet101   # B = 15, 321², full width

The iteration is the one of ``sgan train-seg`` (its ``StageTwoLoss``: the forward, every image's
CRF in a ``DenseCRFPool`` worker, then the losses); one network, batch and CRF pool serve every
backend. Inputs are synthetic: images made of flat colour blocks plus
noise (so the CRF has edges to follow) and seeds on those blocks with 40% unlabelled. On CUDA also
the allocator's peak over the iterations. Also timed: the two losses alone (forward + backward on
fixed logits and a fixed CRF output) for each backend ("losses_only").
"""
import contextlib
import os
import statistics

import numpy as np
import torch

from bench import harness
from bench.harness import Column, MIB, positive_int
from bench.registry import Benchmark, Plan, register
from sgan.config import Config
from sgan.crf import DenseCRFPool
from sgan.data.logits_size import resize_images, resize_seeds
from sgan.losses import balanced_seed_loss, boundary_loss
from sgan.models.deeplab import ARCHS, build_deeplab
from sgan.ops.softmax import resolve_backend
from sgan.pipeline.train_seg import StageTwoLoss, logits_size
from sgan.train.optim import build_sgd

BASELINE = "reference"
LOSSES_ONLY_MIN_REPEATS = 20
CRF_SECTION = {"seed_loss_weight": 1.0, "boundary_loss_weight": 1.0, "crf_scale": 12.0, "crf_iterations": 10}


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
    """The fused loss backend that ``wanted`` resolves to and that runs (probed with a tiny call), or
    None, and why it is not usable."""
    logits = torch.zeros(1, 21, 2, 2, device=device, requires_grad=True)
    seeds = torch.zeros(1, 2, 2, dtype=torch.int64, device=device)
    try:
        backend = resolve_backend(wanted, logits)
        if backend == "reference":
            return None, {wanted: "resolves to the reference"}
        loss = balanced_seed_loss(logits, seeds, backend=backend) + boundary_loss(
            logits, crf_probs=torch.full_like(logits, 1 / 21), backend=backend)
        loss.backward()
        return backend, {}
    except (RuntimeError, ValueError, ImportError) as error:
        return None, {wanted: f"not usable on {device.type}: {str(error).splitlines()[0]}"}


def add_arguments(parser):
    parser.add_argument("--arch", default="vgg16", choices=ARCHS)
    parser.add_argument("--width", type=float, default=None, help="default 1.0 on CUDA, 0.25 on CPU")
    parser.add_argument("--batch", type=positive_int, default=None, help="default 15 on CUDA, 2 on CPU")
    parser.add_argument("--crop", type=positive_int, default=321)
    parser.add_argument("--crf-processes", type=positive_int, default=None, help="default min(batch, cores)")
    parser.add_argument("--fused", default="auto", help="fused loss backend (default: what 'auto' picks)")


def settings(args, device):
    """Width, batch and CRF processes: the options given or their defaults for ``device``."""
    if args.width is not None and not args.width > 0:
        raise ValueError(f"--width: expected a positive number, got {args.width}")
    on_gpu = device.type == "cuda"
    batch = args.batch or (15 if on_gpu else 2)
    return {"width": args.width or (1.0 if on_gpu else 0.25), "batch": batch,
            "crf_processes": args.crf_processes or max(1, min(batch, harness.cpu_cores()))}


def plan(args, device):
    config = dict(settings(args, device), arch=args.arch, crop=[args.crop, args.crop],
                  omp_num_threads=os.environ.get("OMP_NUM_THREADS"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    fused, unusable = fused_backend(device, args.fused)
    backends = [BASELINE] + ([fused] if fused else [])
    notes = [] if fused else [f"no fused loss backend is available on {device.type}: only the reference"]
    return Plan(config=config, cases=[{"batch": config["batch"]}], backends=backends,
                not_measured=unusable, notes=notes)


@contextlib.contextmanager
def setup(args, ctx):
    """One network, batch, CRF pool and fixed CRF output for the whole run."""
    config = settings(args, ctx.device)
    torch.manual_seed(0)
    network = build_deeplab(args.arch, width=config["width"]).to(ctx.device)
    output_size = logits_size(network, args.crop, ctx.device)
    batch = make_batch(config["batch"], args.crop, output_size)
    with DenseCRFPool(config["crf_processes"]) as pool:
        crf_probs = pool.submit(batch["crf_image"].numpy(),
                                torch.full((config["batch"], 21, *output_size), 1 / 21).numpy()).result()
        yield {"network": network, "output_size": output_size, "batch": batch, "pool": pool,
               "crf_probs": torch.from_numpy(crf_probs)}


def measure(case, backends, ctx):
    """Median / min step time, median CRF wait and the wait's share of the step of one loss backend."""
    (backend,) = backends
    state, device = ctx.state, ctx.device
    loss_fn = StageTwoLoss(Config(CRF_SECTION), backend, state["pool"])
    optimizer = build_sgd(state["network"], 1e-3, 0.9, 5e-4, [1, 2, 10, 20])
    state["network"].train()
    losses = []

    def step():
        loss, _ = loss_fn(state["network"], state["batch"], device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())

    peak = contextlib.nullcontext(None) if device.type != "cuda" else harness.cuda_peak(device)
    with peak as measured_peak:
        timing = ctx.time(step)
    if not torch.isfinite(losses[-1]):
        raise RuntimeError(f"{backend}: non-finite loss {float(losses[-1])}")
    waits = loss_fn.waits[len(loss_fn.waits) - len(timing.samples):]
    result = {"median_step_ms": timing.median_ms, "min_step_ms": timing.min_ms,
              "median_crf_wait_ms": 1e3 * statistics.median(waits), "crf_wait_fraction": sum(waits) / timing.total_s,
              "iterations_timed": len(timing.samples)}
    if measured_peak is not None:
        result["peak_memory_mb"] = measured_peak.peak_bytes / MIB
    return {backend: result}


def summarize(rows, plan, ctx):
    """The two losses alone (forward + backward on fixed logits and CRF output), every backend."""
    state, device = ctx.state, ctx.device
    batch_size, output_size = plan.config["batch"], state["output_size"]
    logits = torch.randn(batch_size, 21, *output_size, device=device)
    seeds = state["batch"]["seeds"].to(device)
    crf_probs = state["crf_probs"].to(device)
    losses_only = []
    for backend in plan.backends:
        values = []

        def step(b=backend):
            leaf = logits.detach().requires_grad_(True)
            loss = balanced_seed_loss(leaf, seeds, backend=b) + boundary_loss(leaf, crf_probs=crf_probs, backend=b)
            loss.backward()
            values.append(float(loss.detach()))

        timing = ctx.time(step, repeats=max(ctx.repeats, LOSSES_ONLY_MIN_REPEATS))
        losses_only.append({"backend": backend, "status": "ok", "median_ms": timing.median_ms,
                            "min_ms": timing.min_ms, "loss": values[-1]})
    harness.add_speedups(losses_only, BASELINE, {"median_ms": "speedup"})
    for row in losses_only:
        speedup = f", {row['speedup']:.2f}x" if "speedup" in row else ""
        print(f"losses only  {row['backend']:9s} fwd+bwd (B={batch_size}, 21, {output_size[0]}x{output_size[1]}): "
              f"{row['median_ms']:.2f} ms (min {row['min_ms']:.2f}){speedup}")
    return {"logits_size": list(output_size), "losses_only": losses_only}


register(Benchmark(
    name="seg_train",
    description="one stage-2 (DeepLab) training iteration with its CRF wait, fused losses against the reference",
    baseline=BASELINE,
    add_arguments=add_arguments,
    plan=plan,
    measure=measure,
    compare={"median_step_ms": "speedup", "min_step_ms": "speedup_min"},
    columns=[Column("batch", "batch"), Column("backend", "backend"),
             Column("median_step_ms", "step ms", "{:.1f}"), Column("min_step_ms", "min ms", "{:.1f}"),
             Column("median_crf_wait_ms", "CRF wait ms", "{:.1f}"),
             Column("crf_wait_fraction", "wait share", lambda v: f"{100 * v:.1f}%"),
             Column("peak_memory_mb", "peak MiB", "{:.0f}"),
             Column("speedup", "ref / it", "{:.2f}x"), Column("speedup_min", "(min)", "{:.2f}x")],
    status_column="median_step_ms",
    warmup={"cpu": 1, "cuda": 3},
    repeats={"cpu": 3, "cuda": 10},
    memory_method={"cpu": None, "cuda": "torch.cuda.max_memory_allocated over the warm-up and timed iterations "
                                        "(absolute)"},
    output=lambda header: f"seg_train_{header['device_type']}.json",
    results_key="training",
    setup=setup,
    summarize=summarize,
))
