"""Benchmark ``attention``: the saliency-guided attention, every backend against the dense reference.

    python -m bench.run attention [--device cpu|cuda] [--batch B] [--shapes 41,81,...]
                                  [--dtype float32,bfloat16] [--presets official,paper]

For each spatial size S (S x S feature positions, C = 512, Ck = 256 by default), dtype, preset and
available backend: the median and minimum time of the forward (under no_grad) and of forward +
backward, and the peak memory of forward + backward above what was allocated before the call
(CUDA: the allocator's peak; CPU: the profiler's allocation timeline, which sees the C++
allocations), with the speed-ups and memory ratio against the reference on the same inputs. The
reference is skipped where its N x N tensors would not fit (CPU: an estimate against
--memory-cap-gb; CUDA: out of memory is caught and reported). On CUDA also: torch.matmul's
throughput on the factorised GEMM shapes and the fused backends' GEMM-like work as a fraction of
it, and at S = 161 the absolute peak over the bytes of the inputs, output and their gradients.
Beside the backends, a comparison row ``sdpa (comparison)`` (unless --no-sdpa): torch's
scaled_dot_product_attention at the same B, N, Ck and C, timed and measured the same way, marked
with a ``comparison`` field; it is softmax attention without the mask, not the same function.
"""
import torch

from bench import harness
from bench.harness import Column, int_list, name_list, positive_int
from bench.registry import Benchmark, Plan, register
from sgan import _ext
from sgan.ops import saliency_attention
from sgan.ops.attention import resolve_options

CANONICAL_SHAPES = (41, 65, 81, 161)
IO_RATIO_SIZE = 161  # the size at which the peak over the inputs + outputs + gradients is reported
# The dense reference keeps about this many float N x N tensors per image alive at its peak
# (measured with the profiler at 48 x 48: 7.0 for forward + backward); used only to decide on the
# CPU whether it can run under the memory cap.
REFERENCE_DENSE_COPIES = 8
CPU_DTYPES = (torch.float32, torch.float64)
# The comparison row (not a backend of the operator): what a user calls today for self-attention
# over conv5 features, torch's fastest built-in attention, at the same B, N, Ck (q, k) and C (v).
SDPA = "sdpa (comparison)"
SDPA_NOTE = ("torch.nn.functional.scaled_dot_product_attention: softmax attention over all positions, no "
             "saliency mask, q/k with Ck channels, v with C; a comparison at the same shapes, not the same function")


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


def sdpa_forward(leaves, grad_out=None):
    """The comparison row: torch.nn.functional.scaled_dot_product_attention at the operator's shapes,
    softmax attention over all N positions without a mask (not the saliency-guided function).

    leaves: x (B, C, S, S) as the values, key (B, Ck, S, S) as the keys, query (B, Ck, S, S) as the
    queries, one head; returns the output (B, 1, N, C); with ``grad_out`` (B, C, S, S) it also
    runs the backward.
    """
    x, key, query = leaves
    heads = lambda t: t.flatten(2).transpose(1, 2).unsqueeze(1)  # noqa: E731  (B, C, S, S) -> (B, 1, N, C)
    for t in leaves:
        t.grad = None
    out = torch.nn.functional.scaled_dot_product_attention(heads(query), heads(key), heads(x))
    if grad_out is not None:
        out.backward(heads(grad_out))
    return out


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
    """FLOPs of the GEMM-like work of the factorised forward + backward (docs/design.md §2.1).

    Forward: A_g and the numerators of the attending groups (the background's mean rows under bg_mean
    need neither); backward: H, dA, dQ, dX over the attending rows; the row minimum's n_g^2 Ck
    products when shifting.
    """
    total = 0
    for image in mask.reshape(mask.shape[0], -1).cpu():
        n_salient = int(image.sum())
        sizes = (image.numel() - n_salient, n_salient)
        attending = [n for g, n in enumerate(sizes) if not (bg_mean and g == 0)]
        per_row = 2 * key_channels * channels
        total += 6 * per_row * sum(attending)
        if shift:
            total += 2 * key_channels * sum(n * n for n in attending)
    return total


def dense_matmul_flops_per_second(ctx, batch, size, channels, key_channels):
    """Throughput of torch.matmul on the factorised GEMM shapes: (2B) x (N x Ck) @ (Ck x C), float32."""
    n = size * size
    generator = torch.Generator().manual_seed(1)
    left = torch.randn(2 * batch, n, key_channels, generator=generator).to(ctx.device)
    right = torch.randn(2 * batch, key_channels, channels, generator=generator).to(ctx.device)
    timing = ctx.time(lambda: torch.matmul(left, right), warmup=2)
    return 2 * 2 * batch * n * key_channels * channels / (timing.median_ms * 1e-3)


def add_arguments(parser):
    parser.add_argument("--batch", type=positive_int, default=None, help="default 2 on CPU, 15 on CUDA")
    parser.add_argument("--shapes", type=int_list, default=list(CANONICAL_SHAPES),
                        help="spatial sizes S of S x S feature maps, comma separated")
    parser.add_argument("--dtype", type=name_list, default=["float32"],
                        help="comma separated: float32, float64, bfloat16, float16")
    parser.add_argument("--presets", type=name_list, default=["official", "paper"])
    parser.add_argument("--channels", type=positive_int, default=512)
    parser.add_argument("--key-channels", type=positive_int, default=256)
    parser.add_argument("--memory-cap-gb", type=float, default=8.0,
                        help="CPU: skip the reference when its N x N tensors would need more than this")
    parser.add_argument("--no-sdpa", action="store_true",
                        help=f"leave out the comparison row {SDPA!r} (torch's scaled_dot_product_attention)")


def plan(args, device):
    batch = args.batch or (15 if device.type == "cuda" else 2)
    dtypes = []
    for name in args.dtype:
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"--dtype: expected float32, float64, bfloat16 or float16, got {name!r}")
        dtypes.append(dtype)
    for preset in args.presets:
        resolve_options(preset)  # raises ValueError on an unknown preset
    notes, cases = [], []
    for size in args.shapes:
        salient_fraction = float(salient_disc(1, size, "cpu").float().mean())
        for dtype in dtypes:
            if device.type == "cpu" and dtype not in CPU_DTYPES:
                notes.append(f"skip {dtype} at S={size}: the CPU backends take float32 and float64")
                continue
            for preset in args.presets:
                cases.append({"size": size, "positions": size * size, "batch": batch, "channels": args.channels,
                              "key_channels": args.key_channels, "dtype": str(dtype).replace("torch.", ""),
                              "preset": preset, "salient_fraction": salient_fraction})
    backends, missing = available_backends(device)
    if not args.no_sdpa:
        backends.append(SDPA)
    config = {"batch": batch, "channels": args.channels, "key_channels": args.key_channels,
              "mask": "centred disc of radius 0.35 S",
              "memory_cap_gb": args.memory_cap_gb if device.type == "cpu" else None}
    return Plan(config=config, cases=cases, backends=backends, not_measured=missing, notes=notes)


def case_inputs(case, ctx):
    return make_inputs(case["batch"], case["channels"], case["key_channels"], case["size"],
                       getattr(torch, case["dtype"]), ctx.device, case["preset"])


def measure(case, backends, ctx):
    """Times, peak memory and (CUDA) GEMM throughput and memory over I/O of one backend on one case."""
    (backend,) = backends
    device, preset = ctx.device, case["preset"]
    leaves, mask, gamma, grad_out = ctx.per_case("inputs", lambda: case_inputs(case, ctx))
    if backend == "reference" and device.type == "cpu":
        fits, estimate = reference_fits_on_cpu(case["batch"], case["size"], leaves[0].dtype,
                                               int(ctx.args.memory_cap_gb * 2 ** 30))
        if not fits:
            raise harness.Skip(f"its N x N tensors need about {estimate / 2**30:.1f} GiB "
                               f"> cap {ctx.args.memory_cap_gb:.1f} GiB")
    if backend == SDPA:
        forward = ctx.time(lambda: torch.no_grad()(sdpa_forward)(leaves))
        step = lambda: sdpa_forward(leaves, grad_out)  # noqa: E731
    else:
        forward = ctx.time(lambda: forward_only(backend, preset, leaves, mask, gamma))
        step = lambda: forward_backward(backend, preset, leaves, mask, gamma, grad_out)  # noqa: E731
    both = ctx.time(step)
    result = {"forward_ms": forward.median_ms, "forward_min_ms": forward.min_ms,
              "forward_backward_ms": both.median_ms, "forward_backward_min_ms": both.min_ms}
    if backend == SDPA:
        result["comparison"] = SDPA_NOTE
    for t in list(leaves) + [gamma]:  # the memory measured from here on includes the new gradients
        t.grad = None
    harness.free_memory(device)
    if device.type == "cuda":
        with harness.cuda_peak(device) as peak:
            step()
        result.update(peak_bytes=peak.above_start_bytes, absolute_peak_bytes=peak.peak_bytes)
        if backend not in ("reference", SDPA):
            shift, background = resolve_options(preset)
            flops = gemm_flops(mask, case["channels"], case["key_channels"], shift, background == "mean")
            io_bytes = 2 * sum(t.numel() * t.element_size() for t in leaves) + \
                2 * grad_out.numel() * grad_out.element_size()
            result.update(gemm_like_tflops=flops / (both.median_ms * 1e-3) / 1e12,
                          inputs_outputs_gradients_bytes=io_bytes,
                          absolute_peak_over_io=peak.peak_bytes / io_bytes)
    else:
        result.update(peak_bytes=harness.cpu_allocation_peak(step))
    return {backend: result}


def summarize(rows, plan, ctx):
    """CUDA: dense matmul throughput per size, each fused row's fraction of it, the peak over I/O at 161."""
    gemm, io_ratio = [], []
    if ctx.device.type == "cuda":
        for size in sorted({row["size"] for row in rows}):
            dense = dense_matmul_flops_per_second(ctx, plan.config["batch"], size, plan.config["channels"],
                                                  plan.config["key_channels"])
            gemm.append({"size": size, "batch": plan.config["batch"], "dense_matmul_tflops": dense / 1e12})
            print(f"S={size}: dense torch.matmul on (2B) x (N x Ck) @ (Ck x C): {dense / 1e12:.1f} TFLOP/s")
            harness.free_memory(ctx.device)
            for row in rows:
                if row["size"] == size and "gemm_like_tflops" in row:
                    row["fraction_of_dense_matmul"] = row["gemm_like_tflops"] * 1e12 / dense
                    print(f"S={size} {row['dtype']} {row['preset']} {row['backend']}: GEMM-like work at "
                          f"{row['gemm_like_tflops']:.1f} TFLOP/s = {100 * row['fraction_of_dense_matmul']:.0f}% "
                          f"of dense matmul")
        for row in rows:
            if row["size"] == IO_RATIO_SIZE and "absolute_peak_over_io" in row:
                io_ratio.append({k: row[k] for k in ("size", "batch", "dtype", "preset", "backend",
                                                     "absolute_peak_over_io")})
                print(f"S={IO_RATIO_SIZE} B={row['batch']} {row['dtype']} {row['preset']} {row['backend']}: peak "
                      f"memory = {row['absolute_peak_over_io']:.2f}x the inputs + output + their gradients")
    return {"dense_matmul": gemm, "peak_over_io_at_161": io_ratio}


def slug(text):
    """'Intel(R) Xeon(R) Processor' -> 'intel-r-xeon-r-processor'."""
    return "-".join("".join(c.lower() if c.isalnum() else " " for c in text).split())


def output_name(header):
    if header["device_type"] == "cuda":
        return f"{slug(header['device'])}.json"
    threads = header["threads"]
    return f"cpu-{slug(header['device'])}-{threads}thread{'s' if threads > 1 else ''}.json"


register(Benchmark(
    name="attention",
    description="saliency-guided attention forward and forward+backward, every backend against the reference",
    baseline="reference",
    add_arguments=add_arguments,
    plan=plan,
    measure=measure,
    compare={"forward_ms": "speedup_forward", "forward_backward_ms": "speedup_forward_backward",
             "peak_bytes": "memory_ratio"},
    columns=[Column("size", "S"), Column("dtype", "dtype"), Column("preset", "preset"), Column("backend", "backend"),
             Column("forward_ms", "fwd ms", "{:.2f}"), Column("forward_backward_ms", "fwd+bwd ms", "{:.2f}"),
             Column("forward_backward_min_ms", "min", "{:.2f}"), Column("peak_bytes", "peak MiB", harness.mebibytes),
             Column("speedup_forward", "speed-up fwd", "{:.2f}x"),
             Column("speedup_forward_backward", "speed-up fwd+bwd", "{:.2f}x"),
             Column("memory_ratio", "ref mem / mem", "{:.1f}x")],
    status_column="forward_ms",
    warmup={"cpu": 1, "cuda": 1},
    repeats={"cpu": 3, "cuda": 20},
    memory_method={"cpu": "torch.profiler memory events: peak of the running sum of allocations minus frees",
                   "cuda": "torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus memory allocated "
                           "before"},
    output=output_name,
    summarize=summarize,
))
