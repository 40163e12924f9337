"""The attention custom ops pass torch.library.opcheck and compile with torch.compile(fullgraph=True)."""
import pytest
import torch

from sgan import _ext
from sgan.models import SaliencyGuidedAttention
from sgan.ops.attention import resolve_options

pytestmark = pytest.mark.skipif(not _ext.available("cpu"),
                                reason=f"the C++ extension sgan._C is not built; {_ext.BUILD_HINT}")


def op_inputs(shift, seed=0):
    """Flattened (B, C, N) inputs as the custom op receives them; key/query positive without shift."""
    generator = torch.Generator().manual_seed(seed)
    B, C, Ck, N = 2, 6, 4, 15
    x = torch.randn(B, C, N, generator=generator)
    if shift:
        key, query = torch.randn(B, Ck, N, generator=generator), torch.randn(B, Ck, N, generator=generator)
    else:
        key, query = torch.rand(B, Ck, N, generator=generator) + 0.1, torch.rand(B, Ck, N, generator=generator) + 0.1
    mask = torch.rand(B, N, generator=generator) > 0.5
    mask[1] = True  # one image with no background at all
    gamma = torch.tensor(0.7)
    return x, key, query, mask, gamma, Ck ** -0.5


@pytest.mark.parametrize("preset", ["official", "paper"])
def test_opcheck_forward_and_backward(preset):
    shift, background = resolve_options(preset)
    x, key, query, mask, gamma, scale = op_inputs(shift)
    options = (scale, 1e-5, shift, background == "mean", "cpp")
    forward_args = (x.requires_grad_(True), key.requires_grad_(True), query.requires_grad_(True), mask,
                    gamma.requires_grad_(True)) + options
    torch.library.opcheck(torch.ops.sgan.fused_saliency_attention_forward.default, forward_args)
    with torch.no_grad():
        stats = torch.ops.sgan.fused_saliency_attention_forward(*forward_args)[1:]
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    backward_args = (grad_out, x.detach(), key.detach(), query.detach(), mask, gamma.detach()) + tuple(stats) + options
    torch.library.opcheck(torch.ops.sgan.fused_saliency_attention_backward.default, backward_args)


# inductor (the default backend, generated C++) for the training preset; aot_eager, which traces the
# same graph through AOTAutograd but skips code generation, keeps the second case quick
@pytest.mark.parametrize("preset,compiler", [("official", "inductor"), ("paper", "aot_eager")])
def test_compiled_module_matches_eager(preset, compiler):
    torch._dynamo.reset()
    torch.manual_seed(0)
    module = SaliencyGuidedAttention(8, preset=preset, backend="cpp")
    with torch.no_grad():
        module.gamma.fill_(0.7)
        if preset == "paper":  # keep the unshifted denominators away from 0: positive key and query
            for conv in (module.key, module.query):
                conv.weight.abs_()
                conv.bias.fill_(0.1)
    x = torch.rand(2, 8, 5, 6)
    mask = torch.rand(2, 5, 6) > 0.5
    grad_out = torch.randn(2, 8, 5, 6)
    params = [module.gamma, module.key.weight, module.query.weight]

    def run(fn):
        leaf = x.clone().requires_grad_(True)
        out = fn(leaf, mask)
        grads = torch.autograd.grad(out, [leaf] + params, grad_out)
        return [out.detach()] + list(grads)

    eager = run(module)
    compiled = run(torch.compile(module, fullgraph=True, backend=compiler))
    for name, got, want in zip(["out", "grad_x", "grad_gamma", "grad_key_weight", "grad_query_weight"],
                               compiled, eager):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
