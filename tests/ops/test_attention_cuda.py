"""CUDA-extension-specific checks of the attention backend: low-precision inputs (GEMMs on bfloat16 /
float16 operands with float32 accumulation) against the float64 definition, and a training step that
never waits for the GPU. The shared equivalence suite is test_attention.py."""
import pytest
import torch

from sgan.ops import saliency_attention
from tests.helpers import assert_never_synchronises, device_under_test, fused_backends
from tests.ops.test_attention import OPTIONS, assert_backend_matches_definition, make_inputs

pytestmark = pytest.mark.skipif(device_under_test().type != "cuda" or "cuda" not in fused_backends(),
                                reason="needs a GPU and sgan._C built with CUDA")


# float16 and a group of one position: the float16 reference's own result is NaN there (no error
# to compare with), so that case runs in bfloat16 only
LOW_PRECISION_CASES = [(dtype, *case) for case in [(2, 17, 13, "random"), (3, 7, 5, "mixed")]
                       for dtype in (torch.bfloat16, torch.float16)] + [(torch.bfloat16, 2, 9, 6, "one")]


@pytest.mark.parametrize("shift,background", OPTIONS)
@pytest.mark.parametrize("dtype,B,H,W,mask_kind", LOW_PRECISION_CASES)
def test_low_precision_inputs(dtype, B, H, W, mask_kind, shift, background):
    """The fused result in bfloat16/float16 against the float64 definition is within twice the error
    of the reference run in the same dtype (docs/design.md §7)."""
    x, key, query, mask = make_inputs(B, 64, 32, H, W, mask_kind, shift, seed=B * 10 + H, dtype=dtype,
                                      device="cuda")
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).to(device="cuda", dtype=dtype)
    assert_backend_matches_definition("cuda", x, key, query, mask, grad_out, shift, background, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("preset", ["official", "paper"])
def test_forward_and_backward_never_synchronise_with_the_host(dtype, preset):
    """A step that waits for the GPU stalls the training loop and rules out CUDA graphs: no
    synchronising operation anywhere in the extension's forward and backward."""
    x, key, query, mask = make_inputs(3, 32, 16, 9, 11, "mixed", preset == "official", seed=9, dtype=dtype,
                                      device="cuda")
    leaves = [t.requires_grad_(True) for t in (x, key, query)]
    gamma = torch.full((), 0.7, device="cuda", requires_grad=True)
    grad_out = torch.randn_like(x)

    assert_never_synchronises(
        lambda: saliency_attention(*leaves, mask, gamma, preset=preset, backend="cuda").backward(grad_out))
