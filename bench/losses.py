"""Benchmark ``losses``: the loss backends against the PyTorch reference, and the dense-CRF throughput.

    python -m bench.run losses                 # CPU
    python -m bench.run losses --device cuda   # GPU backends; the CRF part always runs on CPU

Losses: forward + backward at B = 15 and 41x41 / 81x81 outputs of
  - the seed loss (eq. 5, 20 channels), with seeds on a random 30% of the positions, and with seeds
    shaped like stage-1 seeds (one class disc per image; the fused kernels skip empty tiles);
  - the balanced seed loss (eq. 8, 21 channels, 80% of the positions seeded);
  - the KL part of the boundary loss (eq. 9, 21 channels, the CRF output given).
All backends of one case run on the same inputs, interleaved repeat by repeat (so load from other
processes hits them alike); the median and minimum are reported with the ratios reference /
backend, on the CPU with 1 intra-op thread and with torch's default; on CUDA the allocator's peak.
CRF: images per second at 41x41 (training, s = 12) and at the full VOC size 500x375 (test, s = 1),
21 labels, with 1, 2 and all cores (1 = serial in this process, more = a DenseCRFPool).
"""
import time

import numpy as np
import torch

from bench import harness
from bench.harness import Column, MIB, positive_int
from bench.registry import Benchmark, Plan, register
from sgan import _ext
from sgan.crf import TEST_SCALE, TRAIN_SCALE, DenseCRFPool, dense_crf
from sgan.losses import balanced_seed_loss, boundary_loss, seed_loss

BATCH = 15
SIZES = (41, 81)
VOC_SIZE = (375, 500)  # (H, W) of a typical PASCAL VOC image
CRF_LABELS = 21
# name -> channels of the logits
LOSSES = {"seed (eq. 5), random": 20, "seed (eq. 5), disc": 20, "balanced seed (eq. 8)": 21,
          "boundary KL (eq. 9)": 21}


def fused_backends(device):
    """Fused loss backends worth timing on ``device`` (Triton on CPU is only an interpreter)."""
    if device.type == "cpu":
        return ["cpp"] if _ext.available("cpu") else []
    found = ["cuda"] if _ext.available("cuda") else []
    try:
        import triton  # noqa: F401
        found.append("triton")
    except ImportError:
        pass
    return found


def object_disc_seeds(size, generator):
    """Seeds shaped like stage-1 seeds: per image one disc (radius size/4, random centre) of one class,
    background seeds on a random 40% of the rest, other positions unlabelled."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.randint(size // 4, size - size // 4, (BATCH, 2), generator=generator)
    classes = torch.randint(1, 21, (BATCH,), generator=generator)
    inside = ((ys[None] - centres[:, 0, None, None]) ** 2 + (xs[None] - centres[:, 1, None, None]) ** 2
              < (size / 4) ** 2)
    background = torch.rand(BATCH, size, size, generator=generator) < 0.4
    return torch.where(inside, classes[:, None, None], torch.where(background, 0, 255))


def loss_function(name, size, device, generator):
    """fn(logits, backend) -> loss of the loss ``name`` at ``size``, its targets made on ``device``."""
    labels = torch.randint(0, 21, (BATCH, size, size), generator=generator)
    if name == "seed (eq. 5), random":
        seeds = torch.where(torch.rand(BATCH, size, size, generator=generator) < 0.7, 255, labels).to(device)
        return lambda logits, backend: seed_loss(logits, seeds, backend=backend)
    if name == "seed (eq. 5), disc":
        seeds = object_disc_seeds(size, generator).to(device)
        return lambda logits, backend: seed_loss(logits, seeds, backend=backend)
    if name == "balanced seed (eq. 8)":
        seeds = torch.where(torch.rand(BATCH, size, size, generator=generator) < 0.2, 255, labels).to(device)
        return lambda logits, backend: balanced_seed_loss(logits, seeds, backend=backend)
    crf_probs = torch.softmax(torch.randn(BATCH, 21, size, size, generator=generator) * 3, 1).to(device)
    return lambda logits, backend: boundary_loss(logits, crf_probs=crf_probs, backend=backend)


def add_arguments(parser):
    parser.add_argument("--train-crf-images", type=positive_int, default=60, help="41x41 images per CRF measurement")
    parser.add_argument("--test-crf-images", type=positive_int, default=4, help="500x375 images per CRF measurement")
    parser.add_argument("--skip-crf", action="store_true")


def plan(args, device):
    default_threads = torch.get_num_threads()
    thread_counts = sorted({1, default_threads}) if device.type == "cpu" else [default_threads]
    cases = [{"loss": name, "channels": channels, "size": [size, size], "batch": BATCH, "threads": threads}
             for threads in thread_counts for size in SIZES for name, channels in LOSSES.items()]
    return Plan(config={"batch": BATCH, "thread_counts": thread_counts}, cases=cases,
                backends=["reference"] + fused_backends(device))


def measure(case, backends, ctx):
    """Median / min of forward + backward of every backend, interleaved; CUDA: the peak of one step."""
    device, size = ctx.device, case["size"][0]
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(case["threads"])
    try:
        generator = torch.Generator().manual_seed(0)
        loss = loss_function(case["loss"], size, device, generator)
        logits = (torch.randn(BATCH, case["channels"], size, size, generator=generator) * 3).to(device)
        steps = {backend: (lambda b=backend: loss(logits.detach().requires_grad_(True), b).backward())
                 for backend in backends}
        timings = ctx.time_interleaved(steps)
        results = {}
        for backend in backends:
            results[backend] = {"median_ms": timings[backend].median_ms, "min_ms": timings[backend].min_ms,
                                "peak_memory_mb": None}
            if device.type == "cuda":
                with harness.cuda_peak(device) as peak:
                    steps[backend]()
                results[backend]["peak_memory_mb"] = peak.peak_bytes / MIB
        return results
    finally:
        torch.set_num_threads(previous_threads)


def crf_inputs(count, height, width, labels, seed=0):
    """Smooth random colour images (uint8) and smooth random probability maps (float32)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (count, 3, height // 8 + 1, width // 8 + 1)).astype(np.float32)
    images = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(height, width), mode="bilinear",
                                             align_corners=False).numpy()
    images = np.clip(images + rng.normal(0, 6, images.shape), 0, 255).astype(np.uint8)
    images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    coarse_logits = torch.from_numpy(rng.normal(0, 3, (count, labels, height // 8 + 1, width // 8 + 1)))
    logits = torch.nn.functional.interpolate(coarse_logits, size=(height, width), mode="bilinear",
                                             align_corners=False)
    return images, torch.softmax(logits, 1).float().numpy()


def time_crf(processes_list, settings):
    """Rows of images per second of the dense CRF, one warm-up (starting the workers) each."""
    rows = []
    for label, (height, width), scale, count in settings:
        images, probs = crf_inputs(count, height, width, CRF_LABELS)
        for processes in processes_list:
            if processes == 1:
                dense_crf(images[:1], probs[:1], scale=scale, processes=1)  # warm-up
                start = time.perf_counter()
                dense_crf(images, probs, scale=scale, processes=1)
                elapsed = time.perf_counter() - start
            else:
                with DenseCRFPool(processes) as pool:
                    pool.submit(images[:processes], probs[:processes], scale=scale).result()  # start workers
                    start = time.perf_counter()
                    pool.submit(images, probs, scale=scale).result()
                    elapsed = time.perf_counter() - start
            rows.append({"setting": label, "size": [height, width], "scale": scale, "labels": CRF_LABELS,
                         "processes": processes, "images": count, "seconds": elapsed,
                         "images_per_second": count / elapsed})
    return rows


def summarize(rows, plan, ctx):
    """The dense-CRF throughput (unless --skip-crf or pydensecrf is missing)."""
    args = ctx.args
    try:
        import pydensecrf  # noqa: F401
    except ImportError as exc:  # the loss part is still worth its JSON on a machine without it
        if not args.skip_crf:
            print(f"CRF part skipped: {exc}")
            return {"crf": [], "crf_skipped": str(exc)}
    if args.skip_crf:
        return {"crf": []}
    cores = harness.cpu_cores()
    crf = time_crf(sorted({1, 2, cores}),
                   [("training (41x41, s = 12)", (41, 41), TRAIN_SCALE, args.train_crf_images),
                    ("test (full VOC size, s = 1)", VOC_SIZE, TEST_SCALE, args.test_crf_images)])
    print(f"\ndense CRF throughput (10 iterations, {CRF_LABELS} labels)")
    print(f"{'setting':28s} {'size':>8s} {'s':>4s} {'processes':>9s} {'images/s':>10s}")
    for row in crf:
        size = f"{row['size'][0]}x{row['size'][1]}"
        print(f"{row['setting']:28s} {size:>8s} {row['scale']:4g} {row['processes']:9d} "
              f"{row['images_per_second']:10.2f}")
    return {"crf": crf}


register(Benchmark(
    name="losses",
    description="seed, balanced seed and boundary losses (forward+backward) against the reference; dense-CRF "
                "throughput",
    baseline="reference",
    add_arguments=add_arguments,
    plan=plan,
    measure=measure,
    compare={"median_ms": "reference_over_backend", "min_ms": "reference_over_backend_min"},
    columns=[Column("loss", "loss"), Column("channels", "C"), Column("size", "size", lambda s: f"{s[0]}x{s[1]}"),
             Column("threads", "threads"), Column("backend", "backend"), Column("median_ms", "median ms", "{:.3f}"),
             Column("min_ms", "min ms", "{:.3f}"), Column("reference_over_backend", "ref / it", "{:.2f}x"),
             Column("reference_over_backend_min", "(min)", "{:.2f}x"),
             Column("peak_memory_mb", "peak MiB", "{:.1f}")],
    status_column="median_ms",
    warmup={"cpu": 3, "cuda": 3},
    repeats={"cpu": 21, "cuda": 51},
    memory_method={"cpu": None, "cuda": "torch.cuda.max_memory_allocated over one forward + backward (absolute)"},
    output=lambda header: f"losses-{header['device_type']}.json",
    results_key="losses",
    one_backend_per_call=False,
    summarize=summarize,
))
