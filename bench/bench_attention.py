"""Benchmark of the saliency-guided attention: every backend against the dense reference, one process.

    python -m bench.bench_attention [--device cpu|cuda] [--batch B] [--shapes 41,81,...]
                                    [--dtype float32,bfloat16] [--presets official,paper]

For each spatial size S (S x S feature positions, C = 512, Ck = 256 by default), dtype, preset and
available backend it measures the median time of the forward (under no_grad) and of forward +
backward, and the peak memory of forward + backward above what was allocated before the call
(CUDA: torch.cuda.max_memory_allocated; CPU: the allocation timeline of torch.profiler's memory
events, which sees the C++ allocations), with the speed-up and memory ratio against the reference
of the same run. The reference is skipped where its N x N tensors would not fit (CPU: an estimate
against --memory-cap-gb; CUDA: out-of-memory is caught and reported). Prints a table and writes
bench/results/<device>.json (atomically).
"""
import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time

import torch

from sgan import _ext
from sgan.ops import saliency_attention
from sgan.ops.attention import resolve_options

CANONICAL_SHAPES = (41, 65, 81, 161)
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# The dense reference keeps about this many float N x N tensors per image alive at its peak
# (measured with the profiler at 48 x 48: 7.0 for forward + backward); used only to decide on the
# CPU whether it can run under the memory cap.
REFERENCE_DENSE_COPIES = 8
CPU_MEMORY_METHOD = "torch.profiler memory events: peak of the running sum of allocations minus frees"
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus memory allocated before"


def salient_disc(batch, size, device):
    """(B, S, S) bool mask: a centred disc of radius 0.35 S (about 38% of the positions salient)."""
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    disc = coords[:, None] ** 2 + coords[None, :] ** 2 <= (0.35 * size) ** 2
    return disc.expand(batch, size, size).contiguous().to(device)


def make_inputs(batch, channels, key_channels, size, dtype, device, preset, seed=0):
    """x, key, query (leaves requiring grad), mask, gamma (leaf), grad_out for one benchmark case.

    Without the shift ("paper"), positive key and query keep the denominators away from 0.
    """
    generator = torch.Generator().manual_seed(seed)
    shift, _ = resolve_options(preset)
    x = torch.randn(batch, channels, size, size, generator=generator)
    if shift:
        key = torch.randn(batch, key_channels, size, size, generator=generator)
        query = torch.randn(batch, key_channels, size, size, generator=generator)
    else:
        key = torch.rand(batch, key_channels, size, size, generator=generator) + 0.1
        query = torch.rand(batch, key_channels, size, size, generator=generator) + 0.1
    grad_out = torch.randn(batch, channels, size, size, generator=generator)
    leaves = [t.to(device=device, dtype=dtype).requires_grad_(True) for t in (x, key, query)]
    gamma = torch.tensor(0.5, device=device, requires_grad=True)
    return leaves, salient_disc(batch, size, device), gamma, grad_out.to(device=device, dtype=dtype)


def forward_only(backend, preset, leaves, mask, gamma):
    with torch.no_grad():
        return saliency_attention(*leaves, mask, gamma, preset=preset, backend=backend)


def forward_backward(backend, preset, leaves, mask, gamma, grad_out):
    for t in list(leaves) + [gamma]:
        t.grad = None
    out = saliency_attention(*leaves, mask, gamma, preset=preset, backend=backend)
    out.backward(grad_out)
    return out


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(run, device, repeats, warmup=1):
    for _ in range(warmup):
        run()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_peak_bytes(run):
    """Peak of allocated-minus-freed bytes while `run` runs, from the profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def cuda_peak_bytes(run, device):
    """(peak above the memory allocated before `run`, absolute peak) in bytes."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return peak - before, peak


def available_backends(device):
    """Backends to measure on `device`, reference first; with the reason for each one left out."""
    backends, missing = ["reference"], {}
    extension = "cpp" if device.type == "cpu" else "cuda"
    if _ext.available(device.type):
        backends.append(extension)
    else:
        missing[extension] = f"sgan._C not built for {device.type}"
    if device.type == "cuda":
        try:
            from sgan.kernels import attention as _triton_attention  # noqa: F401
            backends.append("triton")
        except ImportError as exc:
            missing["triton"] = f"not importable: {exc}"
    return backends, missing


def reference_fits_on_cpu(batch, size, dtype, cap_bytes):
    n = size * size
    estimate = REFERENCE_DENSE_COPIES * batch * n * n * torch.finfo(dtype).bits // 8
    return estimate <= cap_bytes, estimate


def gemm_flops(mask, channels, key_channels, shift, bg_mean):
    """FLOPs of the GEMM-like work of the factorised forward + backward (DESIGN.md §2.1).

    Forward: A_g for both groups (2 N Ck C) and the numerators of the attending rows; backward:
    H, dA, dQ, dX over the attending rows; the row minimum's n_g^2 Ck products when shifting.
    """
    total = 0
    for image in mask.reshape(mask.shape[0], -1).cpu():
        n_salient = int(image.sum())
        sizes = (image.numel() - n_salient, n_salient)
        attending = [n for g, n in enumerate(sizes) if not (bg_mean and g == 0)]
        per_row = 2 * key_channels * channels
        total += per_row * sum(sizes) + 5 * per_row * sum(attending)
        if shift:
            total += 2 * key_channels * sum(n * n for n in attending)
    return total


def dense_matmul_flops_per_second(batch, size, channels, key_channels, device, repeats):
    """Throughput of torch.matmul on the factorised GEMM shapes: (2B) x (N x Ck) @ (Ck x C), float32."""
    n = size * size
    generator = torch.Generator().manual_seed(1)
    left = torch.randn(2 * batch, n, key_channels, generator=generator).to(device)
    right = torch.randn(2 * batch, key_channels, channels, generator=generator).to(device)
    seconds = median_seconds(lambda: torch.matmul(left, right), device, repeats, warmup=2)
    return 2 * 2 * batch * n * key_channels * channels / seconds


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def slug(text):
    return "-".join("".join(c.lower() if c.isalnum() else " " for c in text).split())


def versions():
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"torch": torch.__version__, "triton": triton_version, "python": platform.python_version(),
            "cuda": torch.version.cuda}


def git_revision():
    """Short commit of the checkout the benchmark runs from (with "+dirty" if modified), or None."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def write_json_atomically(path, payload):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, suffix=".json.tmp")
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def free_memory(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_case(backend, preset, leaves, mask, gamma, grad_out, device, repeats):
    """Times and peak memory of one backend on one case; raises torch.cuda.OutOfMemoryError."""
    forward_seconds = median_seconds(lambda: forward_only(backend, preset, leaves, mask, gamma), device, repeats)
    step = lambda: forward_backward(backend, preset, leaves, mask, gamma, grad_out)  # noqa: E731
    step_seconds = median_seconds(step, device, repeats)
    result = {"forward_ms": 1e3 * forward_seconds, "forward_backward_ms": 1e3 * step_seconds}
    for t in list(leaves) + [gamma]:  # the memory measured from here on includes the new gradients
        t.grad = None
    free_memory(device)
    if device.type == "cuda":
        extra, absolute = cuda_peak_bytes(step, device)
        result.update(peak_bytes=extra, absolute_peak_bytes=absolute)
    else:
        result.update(peak_bytes=cpu_peak_bytes(step))
    return result


def run_benchmark(device, batch, shapes, dtypes, presets, channels, key_channels, repeats, cap_bytes):
    backends, missing = available_backends(device)
    rows, gemm, io_ratio = [], [], []
    for size in shapes:
        for dtype in dtypes:
            if device.type == "cpu" and dtype not in (torch.float32, torch.float64):
                print(f"skip {dtype}: the CPU backends take float32 and float64")
                continue
            for preset in presets:
                shift, background = resolve_options(preset)
                leaves, mask, gamma, grad_out = make_inputs(batch, channels, key_channels, size, dtype, device, preset)
                case = {"size": size, "positions": size * size, "batch": batch, "channels": channels,
                        "key_channels": key_channels, "dtype": str(dtype).replace("torch.", ""), "preset": preset,
                        "salient_fraction": float(mask.float().mean())}
                reference = None
                for backend in backends:
                    row = dict(case, backend=backend)
                    if backend == "reference" and device.type == "cpu":
                        fits, estimate = reference_fits_on_cpu(batch, size, dtype, cap_bytes)
                        if not fits:
                            row["status"] = (f"skipped: its N x N tensors need about {estimate / 2**30:.1f} GiB "
                                             f"> cap {cap_bytes / 2**30:.1f} GiB")
                            rows.append(row)
                            continue
                    try:
                        row.update(measure_case(backend, preset, leaves, mask, gamma, grad_out, device, repeats))
                        row["status"] = "ok"
                    except torch.cuda.OutOfMemoryError:
                        row["status"] = "out of memory"
                    except (RuntimeError, TypeError, ValueError) as exc:  # e.g. a backend without this dtype
                        row["status"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
                    free_memory(device)
                    if backend == "reference" and row["status"] == "ok":
                        reference = row
                    if backend != "reference" and row["status"] == "ok" and reference is not None:
                        row["speedup_forward"] = reference["forward_ms"] / row["forward_ms"]
                        row["speedup_forward_backward"] = reference["forward_backward_ms"] / row["forward_backward_ms"]
                        row["memory_ratio"] = reference["peak_bytes"] / max(1, row["peak_bytes"])
                    if backend != "reference" and row["status"] == "ok" and device.type == "cuda":
                        flops = gemm_flops(mask, channels, key_channels, shift, background == "mean")
                        row["gemm_like_tflops"] = flops / (row["forward_backward_ms"] * 1e-3) / 1e12
                        io_bytes = 2 * sum(t.numel() * t.element_size() for t in leaves) + 2 * grad_out.numel() * \
                            grad_out.element_size()
                        row["inputs_outputs_gradients_bytes"] = io_bytes
                        row["absolute_peak_over_io"] = row["absolute_peak_bytes"] / io_bytes
                        if size == 161:
                            io_ratio.append({k: row[k] for k in ("size", "batch", "dtype", "preset", "backend",
                                                                 "absolute_peak_over_io")})
                    rows.append(row)
                del leaves, mask, gamma, grad_out
                free_memory(device)
        if device.type == "cuda":
            dense = dense_matmul_flops_per_second(batch, size, channels, key_channels, device, repeats)
            gemm.append({"size": size, "batch": batch, "dense_matmul_tflops": dense / 1e12})
            for row in rows:
                if row["size"] == size and "gemm_like_tflops" in row:
                    row["fraction_of_dense_matmul"] = row["gemm_like_tflops"] * 1e12 / dense
            free_memory(device)
    return rows, gemm, io_ratio, missing


def format_table(rows):
    columns = [("size", "{}"), ("dtype", "{}"), ("preset", "{}"), ("backend", "{}"), ("forward_ms", "{:.2f}"),
               ("forward_backward_ms", "{:.2f}"), ("peak_bytes", "{}"), ("speedup_forward", "{:.2f}x"),
               ("speedup_forward_backward", "{:.2f}x"), ("memory_ratio", "{:.1f}x")]
    titles = ["S", "dtype", "preset", "backend", "fwd ms", "fwd+bwd ms", "peak MiB", "speed-up fwd",
              "speed-up fwd+bwd", "ref mem / mem"]
    lines = []
    table = [titles]
    for row in rows:
        cells = []
        for key, fmt in columns:
            value = row.get(key)
            if value is None:
                cells.append("-")
            elif key == "peak_bytes":
                cells.append(f"{value / 2**20:.1f}")
            else:
                cells.append(fmt.format(value))
        if row.get("status") != "ok":
            cells[4] = row.get("status", "")
        table.append(cells)
    widths = [max(len(r[i]) if i < len(r) else 0 for r in table) for i in range(len(titles))]
    widths[4] = len(titles[4])  # a long status spills over instead of widening the column
    for r in table:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def parse_list(text, convert):
    return [convert(item.strip()) for item in text.split(",") if item.strip()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default 2 on CPU, 15 on CUDA")
    parser.add_argument("--shapes", default=",".join(map(str, CANONICAL_SHAPES)),
                        help="spatial sizes S of S x S feature maps, comma separated")
    parser.add_argument("--dtype", default="float32", help="comma separated: float32, float64, bfloat16, float16")
    parser.add_argument("--presets", default="official,paper")
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--key-channels", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case (default 3 CPU, 20 CUDA)")
    parser.add_argument("--memory-cap-gb", type=float, default=8.0,
                        help="CPU: skip the reference when its N x N tensors would need more than this")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--output", default=None, help="JSON path (default bench/results/<device>.json)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    batch = args.batch or (15 if device.type == "cuda" else 2)
    repeats = args.repeats or (20 if device.type == "cuda" else 3)
    shapes = parse_list(args.shapes, int)
    dtypes = parse_list(args.dtype, lambda name: getattr(torch, name))
    presets = parse_list(args.presets, str)
    for preset in presets:
        resolve_options(preset)  # raises on an unknown preset
    name = device_name(device)
    method = CUDA_MEMORY_METHOD if device.type == "cuda" else CPU_MEMORY_METHOD
    header = (f"device: {name} | torch {torch.__version__} | B={batch} C={args.channels} Ck={args.key_channels} | "
              f"median of {repeats} | peak memory: {method}")
    print(header, flush=True)

    rows, gemm, io_ratio, missing = run_benchmark(device, batch, shapes, dtypes, presets, args.channels,
                                                  args.key_channels, repeats, int(args.memory_cap_gb * 2**30))
    print(format_table(rows))
    for backend, reason in missing.items():
        print(f"{backend}: not measured ({reason})")
    for entry in gemm:
        print(f"S={entry['size']}: dense torch.matmul on (2B) x (N x Ck) @ (Ck x C): "
              f"{entry['dense_matmul_tflops']:.1f} TFLOP/s")
    for row in rows:
        if "fraction_of_dense_matmul" in row:
            print(f"S={row['size']} {row['dtype']} {row['preset']} {row['backend']}: GEMM-like work at "
                  f"{row['gemm_like_tflops']:.1f} TFLOP/s = {100 * row['fraction_of_dense_matmul']:.0f}% of dense matmul")
    for entry in io_ratio:
        print(f"S=161 B={entry['batch']} {entry['dtype']} {entry['preset']} {entry['backend']}: peak memory = "
              f"{entry['absolute_peak_over_io']:.2f}x the inputs + output + their gradients")

    payload = {"device": name, "device_type": device.type, "versions": versions(), "git": git_revision(),
               "threads": torch.get_num_threads(), "memory_method": method,
               "config": {"batch": batch, "channels": args.channels, "key_channels": args.key_channels,
                          "repeats": repeats, "mask": "centred disc of radius 0.35 S",
                          "memory_cap_gb": args.memory_cap_gb if device.type == "cpu" else None},
               "results": rows, "dense_matmul": gemm, "peak_over_io_at_161": io_ratio,
               "not_measured": missing}
    prefix = "" if device.type == "cuda" else "cpu-"
    path = args.output or os.path.join(RESULTS_DIR, prefix + slug(name) + ".json")
    write_json_atomically(path, payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
