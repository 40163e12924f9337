"""Loss backends against the PyTorch reference, and the dense-CRF throughput.

Losses: forward + backward at B = 15 and 41x41 / 81x81 outputs of
  - the seed loss (eq. 5, 20 channels), with seeds on a random 30% of the positions, and with seeds
    shaped like stage-1 seeds (one class disc per image; the fused kernels skip empty tiles);
  - the balanced seed loss (eq. 8, 21 channels, 80% of the positions seeded);
  - the KL part of the boundary loss (eq. 9, 21 channels, the CRF output given).
All backends of one case run on the same inputs, interleaved repeat by repeat (so load from other
processes hits them alike); the median is reported with the ratio reference / backend, on CPU with
1 intra-op thread and with torch's default.
CRF: images per second at 41x41 (training, s = 12) and at the full VOC size 500x375 (test, s = 1),
21 labels, with 1, 2 and all cores (1 = serial in this process, more = a DenseCRFPool).
Writes bench/results/losses-<device>.json.

    python -m bench.bench_losses                 # CPU
    python -m bench.bench_losses --device cuda   # GPU backends; the CRF part always runs on CPU
"""
import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

from sgan import _ext
from sgan.crf import TEST_SCALE, TRAIN_SCALE, DenseCRFPool, default_processes, dense_crf
from sgan.losses import balanced_seed_loss, boundary_loss, seed_loss
from sgan.utils.io import save_json

BATCH = 15
SIZES = (41, 81)
VOC_SIZE = (375, 500)  # (H, W) of a typical PASCAL VOC image


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


def loss_cases(device, generator):
    """(name, channels, size, fn(logits, backend)) for every loss and size, inputs on ``device``."""
    cases = []
    for size in SIZES:
        labels = torch.randint(0, 21, (BATCH, size, size), generator=generator)
        sparse = torch.where(torch.rand(BATCH, size, size, generator=generator) < 0.7, 255, labels)
        dense = torch.where(torch.rand(BATCH, size, size, generator=generator) < 0.2, 255, labels)
        sparse, dense = sparse.to(device), dense.to(device)
        disc = object_disc_seeds(size, generator).to(device)
        crf_probs = torch.softmax(torch.randn(BATCH, 21, size, size, generator=generator) * 3, 1).to(device)
        cases += [
            ("seed (eq. 5), random", 20, size, lambda lg, be, s=sparse: seed_loss(lg, s, backend=be)),
            ("seed (eq. 5), disc", 20, size, lambda lg, be, s=disc: seed_loss(lg, s, backend=be)),
            ("balanced seed (eq. 8)", 21, size, lambda lg, be, s=dense: balanced_seed_loss(lg, s, backend=be)),
            ("boundary KL (eq. 9)", 21, size, lambda lg, be, r=crf_probs: boundary_loss(lg, crf_probs=r, backend=be)),
        ]
    return cases


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_losses(device, backends, warmup, repeats, threads):
    """Rows of forward + backward medians; CPU ops run with ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for name, channels, size, fn in loss_cases(device, generator):
        logits = (torch.randn(BATCH, channels, size, size, generator=generator) * 3).to(device)
        times = {backend: [] for backend in backends}
        peak = {}
        for iteration in range(warmup + repeats):
            for backend in backends:
                leaf = logits.detach().requires_grad_(True)
                if device.type == "cuda" and iteration == warmup:
                    torch.cuda.reset_peak_memory_stats(device)
                _sync(device)
                start = time.perf_counter()
                fn(leaf, backend).backward()
                _sync(device)
                if iteration >= warmup:
                    times[backend].append(time.perf_counter() - start)
                if device.type == "cuda" and iteration == warmup:
                    peak[backend] = torch.cuda.max_memory_allocated(device) / 2 ** 20
        for backend in backends:
            rows.append({"loss": name, "channels": channels, "size": [size, size], "batch": BATCH,
                         "threads": threads, "backend": backend,
                         "median_ms": 1e3 * statistics.median(times[backend]), "min_ms": 1e3 * min(times[backend]),
                         "reference_over_backend": statistics.median(times["reference"]) /
                         statistics.median(times[backend]),
                         "reference_over_backend_min": min(times["reference"]) / min(times[backend]),
                         "peak_memory_mb": peak.get(backend)})
    return rows


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
    rows = []
    for label, (height, width), scale, count in settings:
        images, probs = crf_inputs(count, height, width, 21)
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
            rows.append({"setting": label, "size": [height, width], "scale": scale, "labels": 21,
                         "processes": processes, "images": count, "seconds": elapsed,
                         "images_per_second": count / elapsed})
    return rows


def print_tables(report):
    print(f"device: {report['device']} ({report['device_type']}), torch {report['torch']}, "
          f"triton {report['triton']}, {report['cpu_cores']} cores, load average "
          f"{report['load_average_at_start']:.1f} -> {report['load_average_at_end']:.1f}")
    print(f"\nloss forward + backward, B = {BATCH}, {report['repeats']} repeats; ratio = reference / backend "
          f"of the medians and of the minima")
    print(f"{'loss':26s} {'C':>3s} {'size':>7s} {'threads':>7s} {'backend':10s} {'median ms':>10s} {'min ms':>8s} "
          f"{'ratio':>6s} {'(min)':>6s}")
    for row in report["losses"]:
        size = f"{row['size'][0]}x{row['size'][1]}"
        print(f"{row['loss']:26s} {row['channels']:3d} {size:>7s} {row['threads']:7d} {row['backend']:10s} "
              f"{row['median_ms']:10.3f} {row['min_ms']:8.3f} {row['reference_over_backend']:6.2f} "
              f"{row['reference_over_backend_min']:6.2f}")
    if report["crf"]:
        print("\ndense CRF throughput (10 iterations, 21 labels)")
        print(f"{'setting':28s} {'size':>8s} {'s':>4s} {'processes':>9s} {'images/s':>10s}")
        for row in report["crf"]:
            size = f"{row['size'][0]}x{row['size'][1]}"
            print(f"{row['setting']:28s} {size:>8s} {row['scale']:4g} {row['processes']:9d} "
                  f"{row['images_per_second']:10.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=None, help="default 21 on CPU, 51 on CUDA")
    parser.add_argument("--train-crf-images", type=int, default=60, help="41x41 images per CRF measurement")
    parser.add_argument("--test-crf-images", type=int, default=4, help="500x375 images per CRF measurement")
    parser.add_argument("--skip-crf", action="store_true")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/losses-<device>.json)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    repeats = args.repeats or (51 if device.type == "cuda" else 21)
    backends = ["reference"] + fused_backends(device)
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cores = default_processes()
    report = {"benchmark": "losses", "device_type": device.type,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda"
              else (platform.processor() or platform.machine()),
              "cpu_cores": cores, "torch": torch.__version__,
              "triton": triton_version, "warmup": args.warmup, "repeats": repeats, "backends": backends,
              "load_average_at_start": os.getloadavg()[0]}
    default_threads = torch.get_num_threads()
    thread_counts = sorted({1, default_threads}) if device.type == "cpu" else [default_threads]
    report["losses"] = [row for threads in thread_counts
                        for row in time_losses(device, backends, args.warmup, repeats, threads)]
    torch.set_num_threads(default_threads)
    try:
        import pydensecrf  # noqa: F401
    except ImportError as exc:  # the loss part is still worth its JSON on a machine without it
        if not args.skip_crf:
            print(f"CRF part skipped: {exc}")
            report["crf_skipped"] = str(exc)
            args.skip_crf = True
    report["crf"] = [] if args.skip_crf else time_crf(
        sorted({1, 2, cores}),
        [("training (41x41, s = 12)", (41, 41), TRAIN_SCALE, args.train_crf_images),
         ("test (full VOC size, s = 1)", VOC_SIZE, TEST_SCALE, args.test_crf_images)])
    report["load_average_at_end"] = os.getloadavg()[0]
    print_tables(report)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"losses-{device.type}.json")
    save_json(out, report)
    print(f"\nwrote {out}")
    return report


if __name__ == "__main__":
    main()
