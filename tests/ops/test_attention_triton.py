"""Triton-specific checks of the attention backend: tile boundaries, odd channel counts, low precision on
CUDA, the autotune key, and memory that stays linear in N. The shared equivalence suite is test_attention.py."""
import os

import pytest
import torch

from sgan.ops import saliency_attention
from tests.helpers import assert_never_synchronises, device_under_test, fused_backends, triton_compilations
from tests.ops.test_attention import OPTIONS, assert_backend_matches_definition, make_inputs, run_with_grads

pytestmark = pytest.mark.skipif("triton" not in fused_backends(),
                                reason="needs triton with CUDA, or TRITON_INTERPRET=1 on CPU")
ON_CUDA = device_under_test().type == "cuda"


def _autotuned_kernels():
    from sgan.kernels import attention_backward, attention_forward
    return {name: kernel for module in (attention_forward, attention_backward)
            for name, kernel in vars(module).items() if name.endswith("_kernel") and hasattr(kernel, "configs")}


def _check_against_definition(dtype, B, C, Ck, H, W, mask_kind, shift, background, seed):
    device = device_under_test()
    x, key, query, mask = make_inputs(B, C, Ck, H, W, mask_kind, shift, seed=seed, dtype=dtype, device=device)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1)).to(device=device, dtype=dtype)
    assert_backend_matches_definition("triton", x, key, query, mask, grad_out, shift, background, dtype)


@pytest.mark.parametrize("shift,background", OPTIONS)
def test_odd_channels_and_positions_cross_tile_boundaries(shift, background):
    """C = 40, Ck = 20 (not powers of two, several 16-wide channel tiles) and N = 9 * 11 = 99 positions
    (no multiple of any tile size), so every kernel sees partial channel tiles and partial row tiles."""
    _check_against_definition(torch.float32, 2, 40, 20, 9, 11, "random", shift, background, seed=21)


@pytest.mark.skipif(not ON_CUDA, reason="bfloat16/float16 inputs are a GPU feature (tensor-core dots)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shift,background", OPTIONS)
def test_low_precision_inputs_on_cuda(dtype, shift, background):
    _check_against_definition(dtype, 2, 64, 32, 17, 13, "random", shift, background, seed=31)


@pytest.mark.skipif(not ON_CUDA, reason="the interpreter compiles nothing: only Triton on CUDA has compiled "
                                       "kernels to reuse")
def test_a_new_number_of_positions_compiles_nothing():
    """Once every kernel has run (both presets, forward and backward) at N = 8 * 8, a multiple of 16,
    N = 7 * 9 and N = 5 * 5 reuse the compiled kernels: N is never specialised on (Triton would
    otherwise compile a variant for N divisible by 16 and one for the rest)."""
    def forward_and_backward(H, W):
        for shift, background in OPTIONS:
            x, key, query, mask = make_inputs(2, 32, 16, H, W, "random", shift, seed=H * W, dtype=torch.float32,
                                              device="cuda")
            run_with_grads("triton", x, key, query, mask, 0.7, torch.ones_like(x), shift, background)

    forward_and_backward(8, 8)
    with triton_compilations() as compiled:
        forward_and_backward(7, 9)
        forward_and_backward(5, 5)
    assert compiled == []


def test_autotune_key_is_channels_and_dtype_never_positions():
    """Every autotuned kernel is keyed on channel counts only (Triton appends the tensor dtypes)."""
    kernels = _autotuned_kernels()
    assert len(kernels) == 7  # all but the atomic argmin scatter, which must not run twice
    for name, kernel in kernels.items():
        assert set(kernel.keys) <= {"C", "Ck"} and kernel.keys, f"{name}: key {kernel.keys}"
        if os.environ.get("TRITON_INTERPRET") == "1":
            assert len(kernel.configs) == 1, f"{name}: the interpreter should run a single configuration"


@pytest.mark.skipif(not ON_CUDA, reason="under the interpreter there is a single configuration and nothing is tuned")
def test_changing_positions_does_not_retune():
    kernels = _autotuned_kernels()
    entries = []
    for H, W in ((9, 11), (21, 17)):  # same C, Ck, dtype; different N
        x, key, query, mask = make_inputs(2, 48, 24, H, W, "random", True, seed=H, dtype=torch.float32,
                                          device="cuda")
        run_with_grads("triton", x, key, query, mask, 0.7, torch.randn_like(x), True, "mean")
        entries.append({name: len(kernel.cache) for name, kernel in kernels.items()})
    assert all(count >= 1 for count in entries[0].values()), entries[0]
    assert entries[1] == entries[0], f"tuning entries grew with N: {entries[0]} -> {entries[1]}"


@pytest.mark.skipif(not ON_CUDA, reason="peak memory is measured with the CUDA allocator")
def test_memory_stays_linear_in_positions():
    """N = 96 * 96: one N x N float32 matrix alone would take 324 MiB; forward + backward stay far below."""
    x, key, query, mask = make_inputs(1, 32, 16, 96, 96, "random", True, seed=5, dtype=torch.float32, device="cuda")
    grad_out = torch.randn_like(x)
    run_with_grads("triton", x, key, query, mask, 0.7, grad_out, True, "attend")  # compile and tune first
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run_with_grads("triton", x, key, query, mask, 0.7, grad_out, True, "attend")
    torch.cuda.synchronize()
    n_squared_bytes = (96 * 96) ** 2 * 4
    assert torch.cuda.max_memory_allocated() - before < n_squared_bytes / 16


@pytest.mark.skipif(not ON_CUDA, reason="host synchronisation is a CUDA matter")
def test_forward_and_backward_never_synchronise_with_the_host():
    """A step that waits for the GPU stalls the training loop: no synchronising operation anywhere."""
    x, key, query, mask = make_inputs(2, 32, 16, 9, 11, "random", True, seed=9, dtype=torch.float32, device="cuda")
    leaves = [t.requires_grad_(True) for t in (x, key, query)]
    gamma = torch.full((), 0.7, device="cuda", requires_grad=True)
    grad_out = torch.randn_like(x)

    assert_never_synchronises(
        lambda: saliency_attention(*leaves, mask, gamma, backend="triton").backward(grad_out))
