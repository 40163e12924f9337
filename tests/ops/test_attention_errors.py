"""Bad input to the attention op raises ValueError/TypeError naming the argument."""
import pytest
import torch

from sgan.models import SaliencyGuidedAttention
from sgan.ops import saliency_attention


def inputs(B=2, C=4, Ck=2, H=3, W=5):
    return (torch.randn(B, C, H, W), torch.randn(B, Ck, H, W), torch.randn(B, Ck, H, W),
            torch.rand(B, H, W) > 0.5)


@pytest.mark.parametrize("change,error,words", [
    (lambda a: (a[0][0],) + a[1:], ValueError, "x: expected 4 dimensions"),
    (lambda a: (a[0], a[1][:1]) + a[2:], ValueError, "key: expected shape"),
    (lambda a: (a[0], a[1], a[2][..., :4], a[3]), ValueError, "query: expected shape"),
    (lambda a: a[:2] + (torch.randn(2, 3, 3, 5), a[3]), ValueError, "query: expected the shape of key"),
    (lambda a: a[:3] + (a[3][:, :2],), ValueError, "saliency_mask: expected shape"),
    (lambda a: a[:3] + (a[3].float() * 2,), ValueError, "saliency_mask: expected a bool"),
    (lambda a: (a[0].int(),) + a[1:], TypeError, "x: expected a floating dtype"),
    (lambda a: (a[0], a[1].double()) + a[2:], TypeError, "key: expected dtype"),
    (lambda a: (torch.randn(2, 4, 0, 5), torch.randn(2, 2, 0, 5), torch.randn(2, 2, 0, 5),
                torch.zeros(2, 0, 5, dtype=torch.bool)), ValueError, "non-empty"),
    (lambda a: (a[0].numpy(),) + a[1:], TypeError, "x: expected a torch.Tensor"),
])
def test_bad_inputs(change, error, words):
    args = change(inputs())
    with pytest.raises(error, match=words):
        saliency_attention(*args, 0.5, backend="reference")


def test_bad_options():
    args = inputs()
    with pytest.raises(ValueError, match="preset"):
        saliency_attention(*args, 0.5, preset="nope")
    with pytest.raises(ValueError, match="background"):
        saliency_attention(*args, 0.5, background="ignore")
    with pytest.raises(TypeError, match="shift"):
        saliency_attention(*args, 0.5, shift=1)
    with pytest.raises(ValueError, match="backend"):
        saliency_attention(*args, 0.5, backend="fast")
    with pytest.raises(ValueError, match="gamma"):
        saliency_attention(*args, torch.ones(2), backend="reference")
    with pytest.raises(TypeError, match="gamma"):
        saliency_attention(*args, "1", backend="reference")
    with pytest.raises(ValueError, match="eps"):
        saliency_attention(*args, 0.5, eps=-1.0, backend="reference")
    with pytest.raises(ValueError, match="backend='cuda' expects cuda tensors"):
        saliency_attention(*args, 0.5, backend="cuda")


def test_zero_one_mask_accepted():
    x, key, query, mask = inputs()
    a = saliency_attention(x, key, query, mask, 0.5, backend="reference")
    b = saliency_attention(x, key, query, mask.to(torch.uint8), 0.5, backend="reference")
    assert torch.equal(a, b)


def test_module_arguments():
    with pytest.raises(ValueError, match="channels"):
        SaliencyGuidedAttention(0)
    with pytest.raises(ValueError, match="key_channels"):
        SaliencyGuidedAttention(8, key_channels=-1)
    module = SaliencyGuidedAttention(8)
    assert module.key.out_channels == 4 and float(module.gamma.detach()) == 0.0
    x = torch.randn(1, 8, 4, 4)
    assert torch.equal(module(x, torch.rand(1, 4, 4) > 0.5), x)  # gamma starts at 0


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_the_module_computes_its_own_preset(preset):
    torch.manual_seed(0)
    module = SaliencyGuidedAttention(4, 2, preset=preset, backend="reference")
    with torch.no_grad():
        module.gamma.fill_(0.5)
    x, _, _, mask = inputs()
    x = x.abs() + 0.1   # with positive keys and queries no row of the paper's weights sums to ~0
    with torch.no_grad():
        module.key.weight.abs_(), module.query.weight.abs_()
        expected = {name: saliency_attention(x, module.key(x), module.query(x), mask, module.gamma, preset=name,
                                             backend="reference") for name in ("paper", "official")}
        got = module(x, mask)
    torch.testing.assert_close(got, expected[preset], rtol=0, atol=0)
    other = "official" if preset == "paper" else "paper"
    assert not torch.allclose(got, expected[other])


def _attention_with_a_float_mask_on_meta():
    """The attention on "meta" tensors (shapes only: reading a value back raises) with a float mask
    holding 2s, which only a value check could find."""
    x, key, query, mask = (t.to("meta") for t in inputs())
    return saliency_attention(x, key, query, mask.float() * 2, torch.tensor(0.5, device="meta"),
                              backend="reference")


def test_the_mask_values_are_read_back_from_cpu_tensors_only(monkeypatch):
    """Checking that a non-bool mask holds only 0 and 1 reads the answer back (on a GPU: waits for
    every queued kernel), so it runs on CPU tensors (test_bad_inputs) and elsewhere only with
    SGAN_DEBUG_CHECKS=1; "meta" tensors stand for device tensors here."""
    monkeypatch.delenv("SGAN_DEBUG_CHECKS", raising=False)
    assert _attention_with_a_float_mask_on_meta().device.type == "meta"
    monkeypatch.setenv("SGAN_DEBUG_CHECKS", "1")
    with pytest.raises(RuntimeError, match="meta"):
        _attention_with_a_float_mask_on_meta()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="synchronising with the GPU needs one")
def test_a_float_mask_on_the_gpu_is_not_read_back(monkeypatch):
    monkeypatch.delenv("SGAN_DEBUG_CHECKS", raising=False)
    x, key, query, mask = (t.cuda() for t in inputs())
    gamma = torch.tensor(0.5, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        saliency_attention(x, key, query, mask.float(), gamma, backend="reference")
    finally:
        torch.cuda.set_sync_debug_mode(0)
