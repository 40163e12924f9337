"""SGAN losses: every backend against the float64 definitions of tests/loss_definitions.py, values and
gradients; the classification loss, the CRF targets of the boundary loss, bad inputs and their checks.
The operators under the seed and boundary losses are tested in tests/ops/test_loss_ops.py."""
import math
import zlib

import numpy as np
import pytest
import torch

from sgan import losses
from sgan.crf import dense_crf
from sgan.data.logits_size import resize_images
from tests.helpers import relative_error
from tests.loss_definitions import (
    BACKENDS,
    DEVICE,
    FLOOR,
    SEED_LOSSES,
    boundary_loss_definition,
    check_against_definition,
    loss_and_definition,
    make_crf_probs,
    make_logits,
    make_seeds,
    phi_definition,
    value_and_grad,
)


# ---------------------------------------------------------------------------------------------
# float64 definition of eq. 6 (eqs. 5, 8 and 9: tests/loss_definitions.py)


def classification_loss_definition(cam_logits, labels):
    """Eq. 6: sigmoid cross-entropy of the global average, mean over classes and images."""
    x = cam_logits.double()
    if x.dim() == 4:
        x = x.mean(dim=(2, 3))
    y = labels.double()
    log_p = -torch.log1p(torch.exp(-x))
    log_not_p = -torch.log1p(torch.exp(x))
    return -(y * log_p + (1 - y) * log_not_p).mean()


# ---------------------------------------------------------------------------------------------
# values and gradients


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("loss", sorted(SEED_LOSSES))
@pytest.mark.parametrize("pattern", ["random", "cases"])
def test_seed_losses_match_definition(backend, dtype, loss, pattern):
    generator = torch.Generator().manual_seed(zlib.crc32(f"{loss}/{pattern}".encode()))
    C, loss_fn, definition = SEED_LOSSES[loss]
    B, h, w = 4, 5, 7
    logits = make_logits(B, C, h, w, generator)
    seeds = make_seeds(B, h, w, pattern, generator)
    seeds_device = seeds.to(DEVICE)
    check_against_definition(f"{loss}/{pattern}", lambda lg, be: loss_fn(lg, seeds_device, be),
                             lambda lg: definition(lg, seeds), logits, dtype, backend)


SEED_LOGIT_GAPS = (40.0, 40.0, 120.0, 800.0)  # p ~ 4e-18, 8e-53 (below float32's range), 0 in float64


def confident_logits_and_seeds(generator):
    """Seed-branch logits x16 (B, 20, 6, 7) float64 with seeds (B, 6, 7) where many foreground seeds
    have p < 1e-5, as in a confident network early in training, and four whose channel lies
    SEED_LOGIT_GAPS below the maximum (p < 1e-14; a log of p would be -inf for the last two in float32
    and the last in float64); and the authors' targets: channel y - 1 at foreground seeds, 20 (their
    ignore_index) at background and unlabelled positions. The logits are float32 values, so float32
    and float64 runs see the same inputs."""
    B, h, w = 3, 6, 7
    logits = torch.randn(B, 20, h, w, generator=generator, dtype=torch.float64) * 16
    seeds = make_seeds(B, h, w, "random", generator)
    seeds[0, 0, :4] = torch.tensor([3, 9, 14, 20])
    for j, (y, gap) in enumerate(zip((3, 9, 14, 20), SEED_LOGIT_GAPS)):
        logits[0, y - 1, 0, j] = logits[0, :, 0, j].max() - gap
    targets = torch.where((seeds >= 1) & (seeds <= 20), seeds - 1, torch.full_like(seeds, 20))
    return logits.float().double(), seeds, targets


def authors_seed_loss(logits, targets):
    """The authors' stage-1 seed loss: torch's CrossEntropyLoss(ignore_index=20) on the 20 channels."""
    return torch.nn.functional.cross_entropy(logits, targets, ignore_index=20)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_seed_loss_without_floor_is_the_authors_cross_entropy(backend, dtype):
    """floor=0, reduction="batch": value and gradient of F.cross_entropy(ignore_index=20) on the 20
    channels, down to seeds with p < 1e-14 (each contributes -log p ~ 40 and a gradient p - 1, where
    the 1e-5 floor gives about 11.5 and almost none)."""
    logits, seeds, targets = confident_logits_and_seeds(torch.Generator().manual_seed(21))
    foreground = targets != 20
    p_seed = torch.softmax(logits, 1).gather(1, targets.clamp(max=19)[:, None])[:, 0][foreground]
    assert int((p_seed < 1e-14).sum()) >= 4 and int((p_seed < FLOOR).sum()) >= foreground.sum() // 4
    seeds_device = seeds.to(DEVICE)
    fn = lambda lg, be: losses.seed_loss(lg, seeds_device, reduction="batch", backend=be, floor=0)  # noqa: E731
    check_against_definition("seed/no floor", fn, lambda lg: authors_seed_loss(lg, targets), logits, dtype, backend)
    floored = float(losses.seed_loss(logits.to(DEVICE), seeds_device, reduction="batch", backend=backend))
    assert float(authors_seed_loss(logits, targets)) > floored + 1.0  # the floor does change the loss here


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_boundary_loss_matches_definition(backend, dtype):
    generator = torch.Generator().manual_seed(5)
    B, C, h, w = 3, 21, 6, 5
    logits = make_logits(B, C, h, w, generator)
    crf_probs = make_crf_probs(B, C, h, w, generator)
    ratio = (crf_probs.clamp_min(FLOOR) / phi_definition(logits))
    assert bool((ratio < 0.05).any()) and bool((ratio > 20).any()), "inputs must exercise both clip bounds"
    target = crf_probs.to(DEVICE)
    check_against_definition("boundary", lambda lg, be: losses.boundary_loss(lg, crf_probs=target, backend=be),
                             lambda lg: boundary_loss_definition(lg, crf_probs), logits, dtype, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", sorted(SEED_LOSSES) + ["boundary"])
def test_extreme_logits_stay_finite_and_correct(backend, loss):
    """Logits of +-1e4: the floor keeps -log Phi below log(1e5 * (1 + C * 1e-5)) and gradients finite."""
    generator = torch.Generator().manual_seed(11)
    B, h, w = 4, 4, 6
    C = 21 if loss in ("balanced", "boundary") else 20
    signs = torch.randint(0, 2, (B, C, h, w), generator=generator).double() * 2 - 1
    logits = signs * 1e4
    _, fn, definition = loss_and_definition(loss, B, h, w, "cases", generator)
    value, grad = value_and_grad(fn, logits, torch.float32, backend, 1.0)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    assert float(value) <= 2 * math.log(1 / FLOOR * (1 + C * FLOOR)) + 1e-3  # at most two terms in eq. 8
    check_against_definition(f"{loss}/extreme", fn, definition, logits, torch.float32, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_seeds_anywhere_gives_zero_loss_and_gradient(backend):
    generator = torch.Generator().manual_seed(3)
    seeds = make_seeds(2, 3, 4, "none", generator).to(DEVICE)
    for loss, (C, loss_fn, _) in SEED_LOSSES.items():
        logits = make_logits(2, C, 3, 4, generator).float().to(DEVICE).requires_grad_(True)
        value = loss_fn(logits, seeds, backend)
        value.backward()
        assert float(value.detach()) == 0.0, loss
        assert bool((logits.grad == 0).all()), loss


def test_classification_loss():
    generator = torch.Generator().manual_seed(9)
    cams = torch.randn(3, 20, 4, 5, generator=generator, dtype=torch.float64)
    labels = torch.rand(3, 20, generator=generator) > 0.7
    for backend in BACKENDS:
        for inputs in (cams, cams.mean(dim=(2, 3))):
            leaf = inputs.clone().requires_grad_(True)
            value = losses.classification_loss(leaf, labels, backend=backend)
            value.backward()
            expected = classification_loss_definition(inputs, labels)
            assert abs(float(value.detach()) - float(expected)) <= 1e-12
            torch.testing.assert_close(
                value, torch.nn.functional.multilabel_soft_margin_loss(leaf.mean(dim=(2, 3)) if leaf.dim() == 4
                                                                       else leaf, labels.double()))
            assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


def test_boundary_loss_runs_the_crf_when_given_images():
    pytest.importorskip("pydensecrf", reason="the dense CRF needs the pydensecrf2 package")
    generator = torch.Generator().manual_seed(12)
    logits = make_logits(2, 21, 6, 8, generator).float().requires_grad_(True)
    images = torch.randint(0, 256, (2, 24, 32, 3), generator=generator, dtype=torch.uint8)
    value = losses.boundary_loss(logits, images, crf_processes=1, backend="reference")
    small = resize_images(images, (6, 8))
    refined = dense_crf(small, losses.crf_unary_probs(logits), scale=12.0, processes=1)
    expected = losses.boundary_loss(logits, crf_probs=refined, backend="reference")
    assert float(value.detach()) == float(expected.detach())
    value.backward()
    assert torch.isfinite(logits.grad).all()


def test_losses_take_the_bfloat16_logits_of_an_autocast_network_on_the_default_backend():
    """Under torch.autocast the network's logits are bfloat16; the losses (backend 'auto', cpp on the
    CPU) compute them in float32 and hand the convolution a bfloat16 gradient."""
    generator = torch.Generator().manual_seed(9)
    conv = torch.nn.Conv2d(4, 21, 1).to(DEVICE)
    features = torch.randn(2, 4, 5, 6, generator=generator).to(DEVICE)
    seeds = make_seeds(2, 5, 6, "random", generator).to(DEVICE)
    crf_probs = make_crf_probs(2, 21, 5, 6, generator).to(DEVICE)
    labels = torch.eye(20, device=DEVICE)[[3, 11]]
    with torch.autocast(DEVICE.type, torch.bfloat16):
        logits = conv(features)
        logits.register_hook(lambda grad: grads.append(grad.dtype))
        total = (losses.balanced_seed_loss(logits, seeds) + losses.seed_loss(logits[:, 1:], seeds)
                 + losses.boundary_loss(logits, crf_probs=crf_probs)
                 + losses.classification_loss(logits[:, 1:], labels))
    grads = []
    total.backward()
    assert logits.dtype == torch.bfloat16 and total.dtype == torch.float32 and grads == [torch.bfloat16]
    expected = (losses.balanced_seed_loss(logits.float(), seeds, backend="reference")
                + losses.seed_loss(logits[:, 1:].float(), seeds, backend="reference")
                + losses.boundary_loss(logits.float(), crf_probs=crf_probs, backend="reference")
                + losses.classification_loss(logits[:, 1:].float(), labels, backend="reference"))
    assert relative_error(total.detach(), expected.detach()) <= 1e-6


# ---------------------------------------------------------------------------------------------
# bad inputs


def _seeds(*shape, value=0, dtype=torch.int64):
    return torch.full(shape, value, dtype=dtype)


@pytest.mark.parametrize("call, error, words", [
    (lambda: losses.seed_loss(torch.zeros(2, 21, 3, 3), _seeds(2, 3, 3)), ValueError, ["logits", "(B, 20, h, w)"]),
    (lambda: losses.seed_loss(torch.zeros(2, 20, 3, 3), _seeds(2, 6, 6)), ValueError, ["seeds", "resize_seeds"]),
    (lambda: losses.seed_loss(torch.zeros(2, 20, 3, 3), _seeds(2, 3, 3, dtype=torch.float32)), TypeError,
     ["seeds", "integer"]),
    (lambda: losses.seed_loss(torch.zeros(2, 20, 3, 3), _seeds(2, 3, 3, value=21)), ValueError,
     ["seeds", "0..20", "21"]),
    (lambda: losses.balanced_seed_loss(torch.zeros(2, 21, 3, 3), _seeds(2, 3, 3, value=-1)), ValueError,
     ["seeds", "-1"]),
    (lambda: losses.seed_loss(torch.zeros(2, 20, 3, 3), _seeds(2, 3, 3), reduction="mean"), ValueError,
     ["reduction", "'image'"]),
    (lambda: losses.seed_loss(torch.zeros(2, 20, 3, 3), _seeds(2, 3, 3), backend="fast"), ValueError,
     ["backend", "'fast'"]),
    (lambda: losses.seed_loss(torch.zeros(2, 20, 3, 3), _seeds(2, 3, 3), floor=-1e-5), ValueError,
     ["floor", "[0, 0.05)", "-1e-05"]),
    (lambda: losses.seed_loss(torch.zeros(2, 20, 3, 3), _seeds(2, 3, 3), floor=0.05), ValueError,
     ["floor", "[0, 0.05)", "0.05"]),
    (lambda: losses.seed_loss(torch.zeros(2, 20, 3, 3), _seeds(2, 3, 3), floor=None), ValueError,
     ["floor", "None"]),
    (lambda: losses.seed_loss(torch.zeros(2, 20, 3, 3, dtype=torch.int32), _seeds(2, 3, 3)), TypeError,
     ["logits", "floating"]),
    (lambda: losses.seed_loss(torch.zeros(2, 20, 3, 3).numpy(), _seeds(2, 3, 3)), TypeError,
     ["logits", "Tensor"]),
    (lambda: losses.boundary_loss(torch.zeros(2, 21, 3, 3)), ValueError, ["exactly one", "images", "crf_probs"]),
    (lambda: losses.boundary_loss(torch.zeros(2, 21, 3, 3), crf_probs=torch.ones(2, 21, 3, 4) / 21), ValueError,
     ["crf_probs", "shape"]),
    (lambda: losses.boundary_loss(torch.zeros(2, 21, 3, 3), crf_probs=-torch.ones(2, 21, 3, 3)), ValueError,
     ["crf_probs", "non-negative"]),
    (lambda: losses.boundary_loss(torch.zeros(2, 21, 3, 3), torch.zeros(2, 9, 9, 3, dtype=torch.float32)),
     TypeError, ["images", "uint8"]),
    (lambda: losses.boundary_loss(torch.zeros(2, 21, 3, 3), torch.zeros(2, 9, 9, dtype=torch.uint8)),
     ValueError, ["images", "(B=2, H, W, 3)"]),
    (lambda: losses.classification_loss(torch.zeros(2, 20), torch.full((2, 20), 2.0)), ValueError,
     ["labels", "multi-hot"]),
    (lambda: losses.classification_loss(torch.zeros(2, 20), torch.zeros(2, 21)), ValueError, ["labels", "shape"]),
    (lambda: losses.classification_loss(torch.zeros(2, 19, 3, 3), torch.zeros(2, 19)), ValueError,
     ["cam_logits", "(B, 20, h, w)"]),
])
def test_bad_inputs(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cuda_backend_on_cpu_tensors_is_refused():
    with pytest.raises((ValueError, RuntimeError), match="cuda"):
        losses.seed_loss(torch.zeros(1, 20, 2, 2), _seeds(1, 2, 2), backend="cuda")


def _meta_losses():
    """Every loss on "meta" tensors (shapes only: reading a value back raises), with seeds, labels
    and CRF targets out of range: a value check would have to read them."""
    logits = torch.zeros(2, 21, 3, 3, device="meta")
    bad_seeds = torch.full((2, 3, 3), 77, dtype=torch.int64, device="meta")
    return [losses.seed_loss(logits[:, 1:], bad_seeds, backend="reference"),
            losses.balanced_seed_loss(logits, bad_seeds, backend="reference"),
            losses.classification_loss(logits[:, 1:], torch.full((2, 20), 2.0, device="meta"), backend="reference"),
            losses.boundary_loss(logits, crf_probs=-torch.ones(2, 21, 3, 3, device="meta"), backend="reference")]


def test_value_checks_read_no_device_tensor_back(monkeypatch):
    """The checks of the seed, label and CRF values read their answer back, which on a GPU waits for
    every queued kernel: they run on CPU tensors (the bad-input errors above) and elsewhere only with
    SGAN_DEBUG_CHECKS=1. "meta" tensors stand for device tensors here: reading one back raises."""
    monkeypatch.delenv("SGAN_DEBUG_CHECKS", raising=False)
    assert all(loss.device.type == "meta" and loss.dim() == 0 for loss in _meta_losses())
    monkeypatch.setenv("SGAN_DEBUG_CHECKS", "1")
    with pytest.raises(RuntimeError, match="meta"):
        _meta_losses()


@pytest.mark.skipif(DEVICE.type != "cuda", reason="synchronising with the GPU needs one")
def test_losses_on_the_gpu_do_not_synchronise_with_it(monkeypatch):
    monkeypatch.delenv("SGAN_DEBUG_CHECKS", raising=False)
    logits = torch.randn(2, 21, 5, 5, device=DEVICE)
    seeds = torch.randint(0, 21, (2, 5, 5), device=DEVICE)
    labels, crf_probs = (torch.rand(2, 20, device=DEVICE) > 0.5).float(), torch.rand(2, 21, 5, 5, device=DEVICE)
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses.seed_loss(logits[:, 1:], seeds, backend="reference")
        losses.balanced_seed_loss(logits, seeds, backend="reference")
        losses.classification_loss(logits[:, 1:], labels)
        losses.boundary_loss(logits, crf_probs=crf_probs, backend="reference")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    monkeypatch.setenv("SGAN_DEBUG_CHECKS", "1")
    with pytest.raises(ValueError, match="found \\[77\\]"):
        losses.balanced_seed_loss(logits, torch.full_like(seeds, 77), backend="reference")


def test_crf_unary_of_bf16_logits_is_the_float32_softmax_of_their_values():
    """Under bf16 autocast DeepLab hands the CRF bf16 logits: its unary is the softmax of their values
    computed in float32 (floored_softmax's accumulation dtype; a bf16 softmax would differ by up to
    ~0.4% relative)."""
    logits = (torch.randn(2, 21, 5, 6) * 4).to(torch.bfloat16)
    ours = losses.crf_unary_probs(logits)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, losses.crf_unary_probs(logits.float()))
