"""The C++ CPU attention backend with bfloat16/float16 inputs (computed in float32 inside, results and
gradients in the input dtype): against the float64 definition under the 2x-reference rule
(docs/design.md §7), and a training step under CPU autocast, where the 1x1 convolutions hand it bfloat16."""
import pytest
import torch

from sgan import _ext
from sgan.ops import saliency_attention
from sgan.ops.attention import resolve_options
from tests.helpers import assert_within_reference_error, relative_error
from tests.ops.test_attention import (NAMES, OPTIONS, assert_backend_matches_definition, make_inputs,
                                     run_with_grads)

pytestmark = pytest.mark.skipif(not _ext.available("cpu"), reason="needs the C++ extension")


# float16 and a group of one position: the float16 reference's own result is NaN there (no error
# to compare with), so that case runs in bfloat16 only
LOW_PRECISION_CASES = [(dtype, *case) for case in [(2, 17, 13, "random"), (3, 7, 5, "mixed")]
                       for dtype in (torch.bfloat16, torch.float16)] + [(torch.bfloat16, 2, 9, 6, "one")]


@pytest.mark.parametrize("shift,background", OPTIONS)
@pytest.mark.parametrize("dtype,B,H,W,mask_kind", LOW_PRECISION_CASES)
def test_low_precision_inputs(dtype, B, H, W, mask_kind, shift, background):
    x, key, query, mask = make_inputs(B, 64, 32, H, W, mask_kind, shift, seed=B * 10 + H, dtype=dtype)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).to(dtype)
    assert_backend_matches_definition("cpp", x, key, query, mask, grad_out, shift, background, dtype)


def test_autocast_training_step():
    """Under torch.autocast("cpu", bfloat16) the key/query/value convolutions return bfloat16; the
    default backend takes them and every parameter gets a gradient as accurate as the reference's."""
    generator = torch.Generator().manual_seed(12)
    features = torch.randn(2, 16, 9, 11, generator=generator)
    mask = torch.rand(2, 9, 11, generator=generator) > 0.5

    def step(backend):
        torch.manual_seed(0)
        convs = [torch.nn.Conv2d(16, channels, 1) for channels in (16, 8, 8)]
        gamma = torch.nn.Parameter(torch.tensor(0.7))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x, key, query = (conv(features) for conv in convs)
            assert x.dtype == torch.bfloat16
            out = saliency_attention(x, key, query, mask, gamma, preset="official", backend=backend)
        assert out.dtype == torch.bfloat16
        out.float().square().mean().backward()
        return [out.detach()] + [conv.weight.grad for conv in convs] + [gamma.grad]

    fused, reference, exact = step("auto"), step("reference"), step_float64(features, mask)
    for name, got, ref, ref64 in zip(["out", "grad_value", "grad_key", "grad_query", "grad_gamma"], fused, reference,
                                     exact):
        assert torch.isfinite(got).all(), name
        assert_within_reference_error(name, got, ref, ref64, torch.bfloat16)


def step_float64(features, mask):
    """The same step in float64 from the same initial parameters: the definition."""
    torch.manual_seed(0)
    convs = [torch.nn.Conv2d(16, channels, 1).double() for channels in (16, 8, 8)]
    gamma = torch.nn.Parameter(torch.tensor(0.7, dtype=torch.float64))
    x, key, query = (conv(features.double()) for conv in convs)
    out = saliency_attention(x, key, query, mask, gamma, preset="official", backend="reference")
    out.square().mean().backward()
    return [out.detach()] + [conv.weight.grad for conv in convs] + [gamma.grad]


def test_float32_inputs_under_autocast_keep_float32_accuracy():
    """Autocast must not reach the GEMMs inside the C++ operator: float32 inputs under
    torch.autocast("cpu", bfloat16) give the float32 result (a bfloat16 GEMM would be off by ~1e-3)."""
    x, key, query, mask = make_inputs(2, 32, 16, 9, 11, "random", True, seed=13, dtype=torch.float32)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(14))
    for preset in ("official", "paper"):
        shift, background = (True, "mean") if preset == "official" else (False, "attend")
        plain = run_with_grads("cpp", x, key, query, mask, 0.7, grad_out, shift, background)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = run_with_grads("cpp", x, key, query, mask, 0.7, grad_out, shift, background)
        for name, got, want in zip(NAMES, autocast, plain):
            assert got.dtype == torch.float32, name
            assert relative_error(got, want) < 1e-6, f"{preset} {name}: {relative_error(got, want):.2e}"


@pytest.mark.parametrize("preset", ["official", "paper"])
@pytest.mark.parametrize("dtype,B,mask_kind", [(torch.bfloat16, 2, "random"), (torch.float16, 3, "mixed"),
                                               (torch.bfloat16, 2, "one")])
def test_low_precision_is_the_float32_computation_rounded_once(preset, dtype, B, mask_kind):
    """The CPU backend computes bfloat16/float16 in float32 (docs/design.md §2.2): its output and
    gradients equal, bit for bit, those of float32 inputs holding the same values, rounded once to the
    input dtype; gamma's gradient stays float32. Converting while packing must not change a bit."""
    shift, background = resolve_options(preset)
    x, key, query, mask = make_inputs(B, 48, 24, 13, 11, mask_kind, shift, seed=5, dtype=dtype)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(6)).to(dtype)
    low = run_with_grads("cpp", x, key, query, mask, 0.7, grad_out, shift, background)
    wide = run_with_grads("cpp", x.float(), key.float(), query.float(), mask, 0.7, grad_out.float(), shift,
                          background)
    for name, got, want in zip(NAMES, low, wide):
        want = want if name == "grad_gamma" else want.to(dtype)
        assert got.dtype == want.dtype, name
        assert torch.equal(got, want), f"{preset} {name}: {relative_error(got.float(), want.float()):.2e}"
