"""Per-kernel time of one attention forward + backward, for finding where a backend spends its time.

    python -m bench.profile_attention --device cuda --size 41 --dtype float32 --backends triton,cuda
    python -m bench.profile_attention --device cpu --threads 2 --batch 1 --size 81,161 --preset paper,official \
        --backends cpp --output bench/results/profile-attention-cpu.json

Runs each backend a few times (after a warm-up, so autotuning and compilation are excluded) under
torch.profiler and prints the kernels sorted by total device time (CPU time on the CPU), the number
of calls and the share of the backend's total. Same inputs as the attention benchmark (bench/attention.py).

It also splits the total into the GEMMs (the factorised algorithm's six batched products), the
row-minimum pass (the quadratic part of the shift: its tile GEMMs and reductions, under the
``sgan_attention_row_minimum`` scope of the C++/CUDA driver) and the rest, and reports total / GEMM
with and without the row-minimum pass. On the CPU the row-minimum's tile GEMMs are told apart from
the other GEMMs by that enclosing scope: their time is ``row_min_gemm_ms`` and ``row_min_over_gemm``
is the whole pass over its own tile GEMMs. Matrix-vector products (a bmm with an operand of width
1) count as the rest (``gemv_ms``): they stream a tensor like the elementwise passes do. On CUDA
device kernels carry neither scope nor shapes, so the tile GEMMs and any matrix-vector products
count as GEMM time there, only the row-minimum reduction kernels as row-minimum time, and
``row_min_gemm_ms`` is not known (null). ``total_over_all_gemms`` divides the total by every GEMM
the preset runs, the row-minimum pass's tile GEMMs included (on CUDA, where they already count as
GEMM time, it equals ``total_over_gemm``).
With ``--output`` the table and the split go to a JSON file with the usual header (bench/harness.py).

With ``--rounds R`` the whole measurement (every size, preset and backend) is repeated R times in
turn, so that a slow spell of a shared machine falls on one round rather than on one case; each
profile records its round, and ``medians`` holds, per case, the median over the rounds of the
times and of both ratios with their smallest and largest values.
"""
import argparse
import os
import statistics

import torch
from torch.profiler import ProfilerActivity, profile

from bench.attention import forward_backward, make_inputs
from bench.harness import device_header, int_list, name_list, positive_int, synchronize
from sgan.utils.io import save_json

ROW_MIN_SCOPE = "sgan_attention_row_minimum"
GEMM_OPS = ("aten::bmm", "aten::mm", "aten::addmm", "aten::baddbmm", "aten::addbmm", "aten::addmm_", "aten::baddbmm_",
            "aten::addbmm_")
GEMM_KERNEL_WORDS = ("gemm", "xmma", "cutlass", "cublas")


def is_gemm(name, on_device):
    """Whether a profiler row is a GEMM: an ATen matrix-product op on the CPU, a BLAS kernel on CUDA."""
    if on_device:
        lowered = name.lower()
        return any(word in lowered for word in GEMM_KERNEL_WORDS)
    return name in GEMM_OPS


def _under_row_minimum(event):
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == ROW_MIN_SCOPE:
            return True
        parent = parent.cpu_parent
    return False


def _is_matrix_vector(event):
    shapes = [shape for shape in event.input_shapes if len(shape) >= 2][:2]
    return any(1 in shape[-2:] for shape in shapes)


def split_time(prof, on_device, repeats):
    """(gemm_us, row_min_us, row_min_gemm_us, gemv_us) per iteration: self times of the GEMMs outside
    the row-minimum pass (matrix-vector products apart), of everything inside that pass (CPU) or of
    its reduction kernels (CUDA), of the GEMMs inside that pass (CPU; None on CUDA), and of the
    matrix-vector products (CPU; part of neither of the first two)."""
    gemm = row_min = row_min_gemm = gemv = 0.0
    if on_device:
        for event in prof.key_averages():
            if is_gemm(event.key, True):
                gemm += event.self_device_time_total
            elif "row_min" in event.key:
                row_min += event.self_device_time_total
    else:
        for event in prof.events():
            if event.device_type != torch.autograd.DeviceType.CPU:
                continue
            if event.name == ROW_MIN_SCOPE or _under_row_minimum(event):
                row_min += event.self_cpu_time_total
                if is_gemm(event.name, False):
                    row_min_gemm += event.self_cpu_time_total
            elif is_gemm(event.name, False):
                if _is_matrix_vector(event):
                    gemv += event.self_cpu_time_total
                else:
                    gemm += event.self_cpu_time_total
    return gemm / repeats, row_min / repeats, None if on_device else row_min_gemm / repeats, gemv / repeats


def profile_backend(backend, preset, inputs, device, repeats, top):
    """Profile ``repeats`` forward + backward passes; print the table and return it with the split."""
    leaves, mask, gamma, grad_out = inputs
    for _ in range(2):
        forward_backward(backend, preset, leaves, mask, gamma, grad_out)
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(repeats):
            forward_backward(backend, preset, leaves, mask, gamma, grad_out)
        synchronize(device)
    on_device = device.type == "cuda"
    rows = []
    for event in prof.key_averages():
        total = event.self_device_time_total if on_device else event.self_cpu_time_total
        if total > 0:
            rows.append((total / repeats, event.count // repeats, event.key))
    rows.sort(reverse=True)
    grand = sum(row[0] for row in rows)
    gemm, row_min, row_min_gemm, gemv = split_time(prof, on_device, repeats)
    print(f"\n{backend} ({preset}): {grand / 1e3:.3f} ms of {'device' if on_device else 'CPU'} time per fwd+bwd")
    print(f"{'us/iter':>10} {'calls':>6} {'share':>6}  kernel")
    for per_iter, calls, name in rows[:top]:
        print(f"{per_iter:10.1f} {calls:6d} {per_iter / grand:6.1%}  {name[:100]}")
    summary = {"total_ms": grand / 1e3, "gemm_ms": gemm / 1e3, "row_min_ms": row_min / 1e3,
               "row_min_gemm_ms": None if row_min_gemm is None else row_min_gemm / 1e3,
               "row_min_over_gemm": row_min / row_min_gemm if row_min_gemm else None,
               "other_ms": (grand - gemm - row_min) / 1e3, "gemv_ms": gemv / 1e3,
               "gemm_share": gemm / grand if grand else None,
               "row_min_share": row_min / grand if grand else None,
               "total_over_gemm": grand / gemm if gemm else None,
               "total_without_row_min_over_gemm": (grand - row_min) / gemm if gemm else None,
               "total_over_all_gemms": grand / (gemm + (row_min_gemm or 0.0)) if gemm else None}
    row_min_gemm_text = (f", {row_min / row_min_gemm:.2f}x its tile GEMMs' {row_min_gemm / 1e3:.3f} ms"
                         if row_min_gemm else "")
    print(f"GEMM {gemm / 1e3:.3f} ms ({summary['gemm_share']:.1%}), row-minimum pass {row_min / 1e3:.3f} ms "
          f"({summary['row_min_share']:.1%}{row_min_gemm_text}), matrix-vector products {gemv / 1e3:.3f} ms "
          f"(in the rest); "
          f"total / GEMM = {summary['total_over_gemm']:.2f}, "
          f"without the row-minimum pass {summary['total_without_row_min_over_gemm']:.2f}, "
          f"over every GEMM (the pass's tile GEMMs too) {summary['total_over_all_gemms']:.2f}")
    kernels = [{"name": name, "us_per_iter": per_iter, "calls": calls, "share": per_iter / grand,
                "gemm": is_gemm(name, on_device)} for per_iter, calls, name in rows]
    return dict(summary, kernels=kernels)


def round_medians(profiles):
    """Per case (backend, preset, size, batch, dtype) the median over its rounds of total, GEMM and
    row-minimum times and of the three ratios (total / GEMM with and without the row-minimum pass,
    total / every GEMM), with the ratios' smallest and largest values.

    >>> round_medians([dict(backend="cpp", preset="paper", size=81, batch=1, dtype="float32", total_ms=t,
    ...                     gemm_ms=10.0, row_min_ms=0.0, total_over_gemm=t / 10,
    ...                     total_without_row_min_over_gemm=t / 10) for t in (13.0, 14.0, 12.0)])[0]["total_over_gemm"]
    1.3
    """
    cases = {}
    for p in profiles:
        cases.setdefault((p["backend"], p["preset"], p["size"], p["batch"], p["dtype"]), []).append(p)
    medians = []
    for (backend, preset, size, batch, dtype), rounds in cases.items():
        entry = dict(backend=backend, preset=preset, size=size, batch=batch, dtype=dtype, rounds=len(rounds))
        for key in ("total_ms", "gemm_ms", "row_min_ms", "total_over_gemm", "total_without_row_min_over_gemm",
                    "total_over_all_gemms"):
            values = [p[key] for p in rounds if p.get(key) is not None]
            entry[key] = statistics.median(values) if values else None
            if "_over_" in key and values:
                entry[key + "_range"] = [min(values), max(values)]
        medians.append(entry)
    return medians


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=positive_int, default=None, help="default 2 on CPU, 15 on CUDA")
    parser.add_argument("--size", type=int_list, default=[41], help="comma separated spatial sizes S (S x S)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--preset", type=name_list, default=["official"], help="comma separated presets")
    parser.add_argument("--backends", default=None, help="comma separated (default: reference and every fused one)")
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--key-channels", type=int, default=256)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--rounds", type=positive_int, default=1, help="times to repeat the whole measurement, in turn")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--output", default=None, help="write the tables and the GEMM split to this JSON file")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch = args.batch or (15 if device.type == "cuda" else 2)
    default = "reference,cuda,triton" if device.type == "cuda" else "reference,cpp"
    header = device_header(device)
    profiles = []
    for round_index in range(args.rounds):
        for size in args.size:
            for preset in args.preset:
                inputs = make_inputs(batch, args.channels, args.key_channels, size, getattr(torch, args.dtype),
                                     device, preset)
                print(f"\nround {round_index + 1} of {args.rounds}: device {header['device']}, B={batch}, S={size}, "
                      f"C={args.channels}, Ck={args.key_channels}, {args.dtype}, {preset}, "
                      f"{torch.get_num_threads()} threads")
                for backend in (args.backends or default).split(","):
                    result = profile_backend(backend, preset, inputs, device, args.repeats, args.top)
                    profiles.append(dict(round=round_index, backend=backend, preset=preset, size=size, batch=batch,
                                         dtype=args.dtype, channels=args.channels, key_channels=args.key_channels,
                                         **result))
    medians = round_medians(profiles)
    print(f"\nmedians over {args.rounds} round(s): total / GEMM (smallest-largest), without the row-minimum pass, "
          f"total / every GEMM (smallest-largest)")
    for m in medians:
        ratio, without, every = m["total_over_gemm"], m["total_without_row_min_over_gemm"], m["total_over_all_gemms"]
        if ratio is None:
            continue
        low, high = m["total_over_gemm_range"]
        every_low, every_high = m["total_over_all_gemms_range"]
        print(f"  {m['backend']:8s} {m['preset']:9s} S={m['size']:4d}: {m['total_ms']:9.1f} ms, "
              f"{ratio:.2f} ({low:.2f}-{high:.2f}), {without:.2f}, {every:.2f} ({every_low:.2f}-{every_high:.2f})")
    if args.output:
        payload = dict(header, benchmark="profile_attention", repeats=args.repeats, warmup=2, rounds=args.rounds,
                       load_average_at_end=os.getloadavg()[0], profiles=profiles, medians=medians)
        save_json(args.output, payload)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
