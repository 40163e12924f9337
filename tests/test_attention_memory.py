"""The fused attention backends allocate nothing of size N x N; the check is shown to flag the reference.

At 48 x 48 positions one N x N float32 matrix is N^2 * 4 = 21 MB while every per-position buffer
of these small channel counts is well under 1 MB, and a fused row-minimum tile holds at most 256
rows (1 MiB on the CPU): a bound of N^2 * 4 / 8 separates the two by a wide margin.
"""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from sgan.ops import saliency_attention
from tests.helpers import device_under_test, fused_backends

H = W = 48
N = H * W
DENSE_BYTES = N * N * 4  # one float32 N x N matrix
BOUND = DENSE_BYTES // 8


def make_leaves(device):
    generator = torch.Generator().manual_seed(0)
    B, C, Ck = 1, 16, 8
    tensors = [torch.randn(B, channels, H, W, generator=generator) for channels in (C, Ck, Ck)]
    mask = torch.rand(B, H, W, generator=generator) > 0.4
    leaves = [t.to(device).requires_grad_(True) for t in tensors]
    return leaves, mask.to(device)


def forward_backward(backend, preset):
    """One forward and backward pass on a fresh set of inputs of device_under_test()."""
    (x, key, query), mask = make_leaves(device_under_test())
    gamma = torch.tensor(0.5, device=x.device, requires_grad=True)
    out = saliency_attention(x, key, query, mask, gamma, preset=preset, backend=backend)
    out.backward(torch.ones_like(out))
    assert x.grad is not None and key.grad is not None and gamma.grad is not None


def largest_cpu_allocation(run):
    """Largest net allocation made by any single operator (C++ ones included) while `run` runs."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    return max(event.self_cpu_memory_usage for event in prof.events())


def cuda_peak_increase(run):
    """Peak CUDA memory allocated during `run`, above what was allocated before it.

    cuBLAS takes its workspace (32 MiB on Hopper) from the caching allocator at the first GEMM of
    the process and keeps it: one small matmul first, so that `run` is not charged for it when it
    holds the process's first GEMM.
    """
    warm = torch.ones(8, 8, device="cuda")
    torch.matmul(warm, warm)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def measure(backend, preset):
    run = lambda: forward_backward(backend, preset)  # noqa: E731
    if device_under_test().type == "cuda":
        return cuda_peak_increase(run)
    return largest_cpu_allocation(run)


@pytest.mark.parametrize("preset", ["official", "paper"])
def test_check_flags_the_dense_reference(preset):
    assert measure("reference", preset) >= DENSE_BYTES


@pytest.mark.parametrize("preset", ["official", "paper"])
@pytest.mark.parametrize("backend", ["cpp", "cuda"])
def test_extension_allocates_nothing_quadratic(backend, preset):
    if backend not in fused_backends():
        pytest.skip(f"backend {backend!r} is not available for {device_under_test().type} tensors here")
    used = measure(backend, preset)
    assert used < BOUND, f"{backend}: {used} bytes, N x N would be {DENSE_BYTES}"
