"""One SGAN training iteration (forward, L_cls + 0.15 L_seed, backward, SGD step) with the fused
attention against the reference attention, measured in the same process on the same inputs.

The network is the full SGAN (VGG-16 stride 8, Ck = C/2, official preset, classification and seed
branches), random weights; only the attention backend changes between the measured paths, the
losses use ``--loss-backend`` for all. Reports the median and minimum time of ``--repeats``
iterations after ``--warmup``, peak CUDA memory, the ratio reference / fused, and with
``--find-max-size`` the largest square input (8k + 1, like 321) at which one iteration of batch B
fits in GPU memory with each path. Writes bench/results/sgan_train_<device>.json.

    python -m bench.bench_sgan_train                       # CPU: B = 2, 321²
    python -m bench.bench_sgan_train --device cuda --batch 15 --find-max-size
"""
import argparse
import os
import platform
import statistics
import time

import torch

from sgan.losses import classification_loss, resize_seeds, seed_loss
from sgan.models.sgan_net import SGANNet
from sgan.ops import saliency_attention
from sgan.train.optim import build_sgd
from sgan.utils.io import save_json

OPTIONS = {"width": 1.0, "convs_per_block": [2, 2, 3, 3, 3], "classifier": "paper", "classifier_hidden": 1024,
           "dropout": 0.5, "attention_preset": "official", "key_channels": "half", "saliency_threshold": 0.06,
           "saliency_border": True, "seed_branch_kernel": 1}


def fused_backend(device, wanted=None):
    """The fused attention backend usable for ``device`` (probed with a tiny call), or None.

    wanted: a backend name to use instead of the first usable of cuda/triton (GPU) or cpp (CPU).
    """
    candidates = [wanted] if wanted else (["cpp"] if device.type == "cpu" else ["cuda", "triton"])
    x = torch.randn(1, 4, 3, 3, device=device)
    mask = torch.zeros(1, 3, 3, dtype=torch.bool, device=device)
    mask[0, 1, 1] = True
    for backend in candidates:
        try:
            saliency_attention(x, x[:, :2], x[:, 2:], mask, 0.5, backend=backend)
            return backend
        except (RuntimeError, ValueError, ImportError, NotImplementedError) as error:
            print(f"attention backend {backend!r} is not usable on {device.type}: {str(error).splitlines()[0]}")
    return None


def make_batch(batch, size, device, seed=0):
    """Images, saliency maps (a salient disc + noise), multi-hot labels and seeds, all on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=generator)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((ys - size / 2) ** 2 + (xs - size / 2) ** 2 < (size / 3) ** 2).to(torch.uint8) * 200
    saliency = (disc[None] + torch.randint(0, 40, (batch, size, size), generator=generator)).to(torch.uint8)
    labels = torch.zeros(batch, 20)
    classes = torch.randint(0, 20, (batch,), generator=generator)
    labels[torch.arange(batch), classes] = 1
    seeds = torch.where(disc[None] > 0, (classes + 1)[:, None, None], torch.tensor(255)).to(torch.int64)
    return [t.to(device) for t in (images, saliency, labels, seeds)]


def train_step(network, optimizer, images, saliency, labels, seeds, loss_backend):
    out = network(images, saliency)
    cls = classification_loss(out["cam"], labels, backend=loss_backend)
    seed = seed_loss(out["seed"], resize_seeds(seeds, out["seed"].shape[-2:]), backend=loss_backend)
    loss = cls + 0.15 * seed
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(backend, batch, size, device, warmup, repeats, loss_backend):
    """{"backend", "median_ms", "min_ms", "peak_memory_mb", "feature_size"} of one training iteration."""
    torch.manual_seed(0)
    network = SGANNet(OPTIONS, "sgan", backend=backend).to(device)
    with torch.no_grad():
        network.attention.gamma.fill_(0.1)  # non-zero, as after a few iterations
    optimizer = build_sgd(network, 1e-3, 0.9, 5e-4, [1, 2, 10, 20])
    inputs = make_batch(batch, size, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for iteration in range(warmup + repeats):
        _sync(device)
        start = time.perf_counter()
        loss = train_step(network, optimizer, *inputs, loss_backend)
        _sync(device)
        if iteration >= warmup:
            times.append(time.perf_counter() - start)
    if not torch.isfinite(loss):
        raise RuntimeError(f"{backend}: non-finite loss {float(loss)}")
    feature = (size - 1) // 8 + 1
    result = {"backend": backend, "median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
              "feature_size": [feature, feature], "iterations_timed": repeats}
    result["peak_memory_mb"] = (torch.cuda.max_memory_allocated(device) / 2 ** 20) if device.type == "cuda" else None
    del network, optimizer, inputs
    return result


def fits(backend, batch, size, device, loss_backend):
    """True when one training iteration at ``size`` runs without running out of GPU memory."""
    try:
        measure(backend, batch, size, device, warmup=0, repeats=1, loss_backend=loss_backend)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        torch.cuda.empty_cache()


def find_max_size(backend, batch, device, loss_backend, start=321, step=160, limit=4001):
    """Largest 8k + 1 side that fits: grow by ``step`` from ``start``, then bisect on multiples of 8."""
    if not fits(backend, batch, start, device, loss_backend):
        low, high = 9, start
    else:
        low, high = start, None
        while high is None and low + step <= limit:
            candidate = low + step
            if fits(backend, batch, candidate, device, loss_backend):
                low = candidate
            else:
                high = candidate
        if high is None:
            return {"max_size": low, "capped_at_limit": True}
    while high - low > 8:
        middle = low + ((high - low) // 16) * 8
        if fits(backend, batch, middle, device, loss_backend):
            low = middle
        else:
            high = middle
    return {"max_size": low, "capped_at_limit": False}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default 15 on CUDA, 2 on CPU")
    parser.add_argument("--size", type=int, default=321)
    parser.add_argument("--warmup", type=int, default=None, help="default 3 on CUDA, 1 on CPU")
    parser.add_argument("--repeats", type=int, default=None, help="default 10 on CUDA, 3 on CPU")
    parser.add_argument("--loss-backend", default="auto")
    parser.add_argument("--fused", default=None, help="fused attention backend (default: the first usable)")
    parser.add_argument("--find-max-size", action="store_true", help="CUDA only: largest input that fits")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/sgan_train_<device>.json)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    batch = args.batch or (15 if on_gpu else 2)
    warmup = args.warmup if args.warmup is not None else (3 if on_gpu else 1)
    repeats = args.repeats or (10 if on_gpu else 3)
    if on_gpu:
        torch.backends.cudnn.benchmark = True  # the same for both paths: only the attention differs
    fused = fused_backend(device, args.fused)
    backends = ["reference"] + ([fused] if fused else [])
    if not fused:
        print(f"no fused attention backend is available on {device.type}: only the reference is measured")
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    report = {"benchmark": "sgan_train_iteration", "device": torch.cuda.get_device_name(device) if on_gpu else
              platform.processor() or platform.machine(), "device_type": device.type,
              "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "triton": triton_version,
              "batch": batch, "input_size": [args.size, args.size], "channels": 512, "key_channels": 256,
              "loss_backend": args.loss_backend, "results": []}
    for backend in backends:
        result = measure(backend, batch, args.size, device, warmup, repeats, args.loss_backend)
        report["results"].append(result)
        memory = f", peak {result['peak_memory_mb']:.0f} MiB" if result["peak_memory_mb"] is not None else ""
        print(f"{backend:10s} B={batch} {args.size}²: median {result['median_ms']:.1f} ms, "
              f"min {result['min_ms']:.1f} ms{memory}")
    if fused:
        ratio = report["results"][0]["median_ms"] / report["results"][1]["median_ms"]
        report["speedup_reference_over_fused"] = ratio
        print(f"reference / {fused}: {ratio:.2f}x")
    if args.find_max_size:
        if not on_gpu:
            parser.error("--find-max-size needs --device cuda")
        report["max_size"] = {}
        for backend in backends:
            report["max_size"][backend] = find_max_size(backend, batch, device, args.loss_backend)
            print(f"{backend:10s} largest input for B={batch}: {report['max_size'][backend]['max_size']}²")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"sgan_train_{device.type}.json")
    save_json(out, report)
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
