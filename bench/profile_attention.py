"""Per-kernel time of one attention forward + backward, for finding where a backend spends its time.

    python -m bench.profile_attention --device cuda --size 41 --dtype float32 --backends triton,cuda

Runs each backend a few times (after a warm-up, so autotuning and compilation are excluded) under
torch.profiler and prints the kernels sorted by total device time (CPU time on the CPU), the number
of calls and the share of the backend's total. Same inputs as the attention benchmark (bench/attention.py).
"""
import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from bench.attention import forward_backward, make_inputs
from bench.harness import synchronize


def profile_backend(backend, preset, inputs, device, repeats, top):
    leaves, mask, gamma, grad_out = inputs
    for _ in range(2):
        forward_backward(backend, preset, leaves, mask, gamma, grad_out)
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
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
    print(f"\n{backend} ({preset}): {grand / 1e3:.3f} ms of {'device' if on_device else 'CPU'} time per fwd+bwd")
    print(f"{'us/iter':>10} {'calls':>6} {'share':>6}  kernel")
    for per_iter, calls, name in rows[:top]:
        print(f"{per_iter:10.1f} {calls:6d} {per_iter / grand:6.1%}  {name[:100]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default 2 on CPU, 15 on CUDA")
    parser.add_argument("--size", type=int, default=41)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--preset", default="official")
    parser.add_argument("--backends", default=None, help="comma separated (default: reference and every fused one)")
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--key-channels", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    device = torch.device(args.device)
    batch = args.batch or (15 if device.type == "cuda" else 2)
    default = "reference,cuda,triton" if device.type == "cuda" else "reference,cpp"
    inputs = make_inputs(batch, args.channels, args.key_channels, args.size, getattr(torch, args.dtype), device,
                         args.preset)
    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, B={batch}, "
          f"S={args.size}, C={args.channels}, Ck={args.key_channels}, {args.dtype}")
    for backend in (args.backends or default).split(","):
        profile_backend(backend, args.preset, inputs, device, args.repeats, args.top)


if __name__ == "__main__":
    main()
