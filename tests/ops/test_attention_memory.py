"""The fused attention backends allocate nothing of size N x N; the check is shown to flag the reference
and an N x N buffer built from many small allocations.

At 64 x 64 positions one N x N float32 matrix is N^2 * 4 = 67 MB while every per-position buffer
of these small channel counts is well under 1 MB, and a fused row-minimum tile holds at most 256
rows (CUDA: here 256 x about 2460 salient columns, 2.5 MB) or 512 x 1024 floats (the CPU, 2 MiB),
whatever N: a bound of N^2 * 4 / 8 (8.4 MB) separates the two by a wide margin. What is measured is the peak of the memory held over the whole call, above
what was held before it (on CPU the running sum of every allocation and free the profiler saw, in
time order), not the largest single allocation.
"""
import pytest
import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from sgan.ops import saliency_attention
from tests.helpers import device_under_test, fused_backends

H = W = 64
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


def _cpu_allocations(run):
    """Every CPU allocation (size > 0) and free (size < 0) the profiler records while `run` runs, C++
    operators' included, as (time in ns, bytes) in time order."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    pending, events = list(prof.profiler.kineto_results.experimental_event_tree()), []
    while pending:
        node = pending.pop()
        pending.extend(node.children)
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
    return sorted(events)


def cpu_peak_increase(run):
    """Peak of the CPU memory held during `run` above what was held before it: the maximum of the
    running sum of its allocations and frees."""
    held = peak = 0
    for _, size in _cpu_allocations(run):
        held += size
        peak = max(peak, held)
    return peak


def largest_cpu_allocation(run):
    """The largest single CPU allocation made during `run` (what an N x N buffer built in pieces hides from)."""
    return max((size for _, size in _cpu_allocations(run)), default=0)


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
    return peak_increase(run)


def peak_increase(run):
    """Peak memory held during `run` above what was held before, on device_under_test()."""
    if device_under_test().type == "cuda":
        return cuda_peak_increase(run)
    return cpu_peak_increase(run)


@pytest.mark.parametrize("preset", ["official", "paper"])
def test_check_flags_the_dense_reference(preset):
    assert measure("reference", preset) >= DENSE_BYTES


def test_check_flags_an_n_by_n_buffer_built_from_small_operators():
    """Similarities K^T Q computed in 16 blocks of N / 16 rows, every block kept until the end: no
    single allocation reaches the bound, yet N x N floats are held at once, and the check sees it."""
    (_, key, query), _ = make_leaves(device_under_test())
    key, query = key.detach().reshape(key.shape[1], N), query.detach().reshape(query.shape[1], N)
    rows = N // 16

    def blocked_similarities():
        blocks = [key[:, start:start + rows].T @ query for start in range(0, N, rows)]
        return sum(float(block.sum()) for block in blocks)

    if device_under_test().type == "cpu":
        assert largest_cpu_allocation(blocked_similarities) < BOUND
    assert peak_increase(blocked_similarities) >= DENSE_BYTES


@pytest.mark.parametrize("preset", ["official", "paper"])
@pytest.mark.parametrize("backend", ["cpp", "cuda"])
def test_extension_allocates_nothing_quadratic(backend, preset):
    if backend not in fused_backends():
        pytest.skip(f"backend {backend!r} is not available for {device_under_test().type} tensors here")
    used = measure(backend, preset)
    assert used < BOUND, f"{backend}: {used} bytes, N x N would be {DENSE_BYTES}"
