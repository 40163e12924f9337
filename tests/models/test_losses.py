"""SGAN losses: every backend against float64 definitions written here, values and gradients."""
import math
import warnings
import zlib

import numpy as np
import pytest
import torch

from sgan import _ext, losses
from sgan.crf import dense_crf
from sgan.data.logits_size import resize_images, resize_seeds
from sgan.ops import softmax
from tests.helpers import assert_within_reference_error, device_under_test, relative_error, triton_compilations

FLOOR = 1e-5
DEVICE = device_under_test()
FUSED = softmax.fused_backends(DEVICE.type)
BACKENDS = ["reference"] + FUSED
# The float32 reference's own error against the float64 definitions on these small inputs is ~1e-7;
# 2e-6 leaves room for sums over a few hundred positions (docs/design.md §7 floor for float32 is 1e-6).
REFERENCE_FLOAT32_TOLERANCE = 2e-6


# ---------------------------------------------------------------------------------------------
# float64 definitions, position by position (independent of the operators' references in sgan.ops)


def phi_definition(logits):
    """Floored (1e-5) and renormalised softmax over dim 1, float64."""
    z = logits.double()
    probs = torch.exp(z - torch.logsumexp(z, dim=1, keepdim=True))
    floored = torch.where(probs > FLOOR, probs, torch.full_like(probs, FLOOR))
    return floored / floored.sum(dim=1, keepdim=True)


def mean_or_zero(terms):
    return torch.stack(terms).mean() if terms else torch.zeros((), dtype=torch.float64)


def seed_loss_definition(logits, seeds, reduction):
    """Eq. 5: -log Phi at foreground seeds (label c -> channel c - 1)."""
    phi = phi_definition(logits)
    per_image, everything = [], []
    for b in range(logits.shape[0]):
        terms = [-torch.log(phi[b, int(y) - 1, i, j]) for (i, j), y in np.ndenumerate(seeds[b].cpu().numpy())
                 if 1 <= y <= 20]
        per_image.append(mean_or_zero(terms))
        everything += terms
    if reduction == "image":
        return torch.stack(per_image).mean()
    return mean_or_zero(everything)


def balanced_seed_loss_definition(logits, seeds):
    """Eq. 8: per-image foreground mean and background mean of -log Phi, batch means summed."""
    phi = phi_definition(logits)
    foreground, background = [], []
    for b in range(logits.shape[0]):
        fg, bg = [], []
        for (i, j), y in np.ndenumerate(seeds[b].cpu().numpy()):
            if y == 255:
                continue
            (bg if y == 0 else fg).append(-torch.log(phi[b, int(y), i, j]))
        foreground.append(mean_or_zero(fg))
        background.append(mean_or_zero(bg))
    return torch.stack(foreground).mean() + torch.stack(background).mean()


def boundary_loss_definition(logits, crf_probs):
    """Eq. 9: mean over positions of sum_c R log clip(R / Phi, 0.05, 20), R floored and renormalised."""
    phi = phi_definition(logits)
    r = crf_probs.double()
    r = torch.where(r > FLOOR, r, torch.full_like(r, FLOOR))
    r = r / r.sum(dim=1, keepdim=True)
    ratio = torch.minimum(torch.maximum(r / phi, torch.tensor(0.05, dtype=torch.float64)),
                          torch.tensor(20.0, dtype=torch.float64))
    return (r * torch.log(ratio)).sum(dim=1).mean()


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
# inputs


def make_seeds(B, h, w, pattern, generator):
    """int64 seeds: 0 background, 1..20 classes, 255 unlabelled; 'cases' holds one image each with
    no seeds, no foreground seeds, no background seeds, and a random mix."""
    labels = torch.randint(0, 21, (B, h, w), generator=generator)
    unlabelled = torch.rand(B, h, w, generator=generator) < 0.4
    seeds = torch.where(unlabelled, torch.full_like(labels, 255), labels)
    if pattern == "cases":
        assert B == 4
        seeds[0] = 255
        seeds[1] = torch.where(seeds[1] == 255, seeds[1], torch.zeros_like(seeds[1]))
        seeds[2] = torch.where(seeds[2] == 0, torch.full_like(seeds[2], 7), seeds[2])
    elif pattern == "none":
        seeds[:] = 255
    return seeds


def make_logits(B, C, h, w, generator, scale=3.0):
    return torch.randn(B, C, h, w, generator=generator, dtype=torch.float64) * scale


def make_crf_probs(B, C, h, w, generator):
    """Random probabilities with exact zeros and near one-hot rows, so the floor and the clip act."""
    probs = torch.softmax(torch.randn(B, C, h, w, generator=generator, dtype=torch.float64) * 4, dim=1)
    probs[:, :, 0, 0] = 0.0
    probs[:, 3, 0, 0] = 1.0
    return probs


def value_and_grad(fn, logits, dtype, backend, upstream):
    leaf = logits.detach().to(device=DEVICE, dtype=dtype).requires_grad_(True)
    value = fn(leaf, backend)
    (value * upstream).backward()
    return value.detach().double().cpu(), leaf.grad.double().cpu()


def definition_value_and_grad(definition, logits, upstream):
    leaf = logits.detach().double().cpu().requires_grad_(True)
    value = definition(leaf)
    (value * upstream).backward()
    return value.detach(), leaf.grad


def check_against_definition(name, fn, definition, logits, dtype, backend, upstream=1.7):
    """Value and gradient of ``backend`` within the reference's own error of the float64 definition."""
    expected = definition_value_and_grad(definition, logits, upstream)
    got = value_and_grad(fn, logits, dtype, backend, upstream)
    for part, got_part, expected_part in zip(("value", "grad"), got, expected):
        assert torch.isfinite(got_part).all(), f"{name} {part}: non-finite output"
        if backend == "reference":
            tolerance = 1e-12 if dtype == torch.float64 else REFERENCE_FLOAT32_TOLERANCE
            error = relative_error(got_part, expected_part)
            assert error <= tolerance, f"{name} {part}: reference error {error:.3e} > {tolerance:.0e}"
        else:
            reference = value_and_grad(fn, logits, dtype, "reference", upstream)[0 if part == "value" else 1]
            assert_within_reference_error(f"{name} {part} [{backend}]", got_part, reference, expected_part, dtype)


SEED_LOSSES = {
    "seed-image": (20, lambda lg, s, be: losses.seed_loss(lg, s, reduction="image", backend=be),
                   lambda lg, s: seed_loss_definition(lg, s, "image")),
    "seed-batch": (20, lambda lg, s, be: losses.seed_loss(lg, s, reduction="batch", backend=be),
                   lambda lg, s: seed_loss_definition(lg, s, "batch")),
    "balanced": (21, lambda lg, s, be: losses.balanced_seed_loss(lg, s, backend=be), balanced_seed_loss_definition),
}


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
    if loss == "boundary":
        crf_probs = make_crf_probs(B, C, h, w, generator)
        target = crf_probs.to(DEVICE)
        fn = lambda lg, be: losses.boundary_loss(lg, crf_probs=target, backend=be)  # noqa: E731
        definition = lambda lg: boundary_loss_definition(lg, crf_probs)  # noqa: E731
    else:
        _, loss_fn, seed_definition = SEED_LOSSES[loss]
        seeds = make_seeds(B, h, w, "cases", generator)
        seeds_device = seeds.to(DEVICE)
        fn = lambda lg, be: loss_fn(lg, seeds_device, be)  # noqa: E731
        definition = lambda lg: seed_definition(lg, seeds)  # noqa: E731
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_logit_at_a_counted_position_gives_nan(backend):
    """A NaN logit must surface in the loss (as in the reference), not be hidden by the floors."""
    generator = torch.Generator().manual_seed(13)
    seeds = make_seeds(2, 3, 4, "random", generator)
    seeds[0, 1, 2] = 4
    crf_probs = make_crf_probs(2, 21, 3, 4, generator).to(DEVICE)
    seeds = seeds.to(DEVICE)
    for C, fn in ((20, lambda lg: losses.seed_loss(lg, seeds, backend=backend)),
                  (20, lambda lg: losses.seed_loss(lg, seeds, backend=backend, floor=0)),
                  (21, lambda lg: losses.balanced_seed_loss(lg, seeds, backend=backend)),
                  (21, lambda lg: losses.boundary_loss(lg, crf_probs=crf_probs, backend=backend))):
        logits = make_logits(2, C, 3, 4, generator).float()
        logits[0, 2, 1, 2] = float("nan")
        assert torch.isnan(fn(logits.to(DEVICE))), C


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_logits_give_the_same_result(backend):
    generator = torch.Generator().manual_seed(14)
    logits = make_logits(2, 21, 5, 6, generator).float().to(DEVICE)
    seeds = make_seeds(2, 5, 6, "random", generator).to(DEVICE)
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        leaf = logits.clone().contiguous(memory_format=layout).requires_grad_(True)
        value = losses.balanced_seed_loss(leaf, seeds, backend=backend)
        value.backward()
        results.append((value.detach(), leaf.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("loss", sorted(SEED_LOSSES) + ["boundary"])
def test_fused_half_precision(backend, dtype, loss):
    """bf16/fp16 logits on every fused backend (the cpp kernels get them cast to float32 inside): value
    and gradient within twice the reference's error in that dtype against the float64 definition, a
    float32 loss and a gradient in the logits' dtype."""
    generator = torch.Generator().manual_seed(8)
    B, h, w = 3, 5, 6
    if loss == "boundary":
        C = 21
        crf_probs = make_crf_probs(B, C, h, w, generator)
        target = crf_probs.to(DEVICE)
        fn = lambda lg, be: losses.boundary_loss(lg, crf_probs=target, backend=be)  # noqa: E731
        definition = lambda lg: boundary_loss_definition(lg, crf_probs)  # noqa: E731
    else:
        C, loss_fn, seed_definition = SEED_LOSSES[loss]
        seeds = make_seeds(B, h, w, "random", generator)
        seeds_device = seeds.to(DEVICE)
        fn = lambda lg, be: loss_fn(lg, seeds_device, be)  # noqa: E731
        definition = lambda lg: seed_definition(lg, seeds)  # noqa: E731
    rounded = make_logits(B, C, h, w, generator).to(dtype).double()  # the definition sees the same rounded inputs
    check_against_definition(f"{loss}/{dtype}", fn, definition, rounded, dtype, backend)
    leaf = rounded.to(device=DEVICE, dtype=dtype).requires_grad_(True)
    value = fn(leaf, backend)
    value.backward()
    assert value.dtype == torch.float32 and leaf.grad.dtype == dtype


@pytest.mark.parametrize("backend", ["reference"] + [b for b in FUSED if b == "cpp"])
def test_gradcheck_float64(backend):
    generator = torch.Generator().manual_seed(4)
    seeds = make_seeds(2, 3, 3, "random", generator)
    crf_probs = make_crf_probs(2, 21, 3, 3, generator)
    checks = [
        (20, lambda lg: losses.seed_loss(lg, seeds, backend=backend)),
        (20, lambda lg: losses.seed_loss(lg, seeds, backend=backend, floor=0)),
        (21, lambda lg: losses.balanced_seed_loss(lg, seeds, backend=backend)),
        (21, lambda lg: losses.boundary_loss(lg, crf_probs=crf_probs, backend=backend)),
    ]
    for C, fn in checks:
        logits = make_logits(2, C, 3, 3, generator, scale=1.0).requires_grad_(True)
        assert torch.autograd.gradcheck(fn, (logits,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", FUSED)
def test_fused_ops_pass_opcheck(backend):
    """Fake (meta) implementations and autograd registration are consistent, so torch.compile can trace."""
    from sgan.ops.boundary_kl import function as boundary_kl_function
    from sgan.ops.seed_nll import function as seed_nll_function

    generator = torch.Generator().manual_seed(6)
    logits = make_logits(2, 21, 12, 12, generator)
    logits = logits.float().reshape(2, 21, -1).to(DEVICE).requires_grad_(True)
    seeds = make_seeds(2, 12, 12, "random", generator).reshape(2, -1).to(DEVICE)
    target = make_crf_probs(2, 21, 12, 12, generator).float().reshape(2, 21, -1).to(DEVICE)
    torch.library.opcheck(seed_nll_function._seed_nll_forward_op, (logits, seeds, 0, FLOOR, backend))
    torch.library.opcheck(seed_nll_function._seed_nll_forward_op, (logits, seeds, 0, 0.0, backend))
    torch.library.opcheck(boundary_kl_function._boundary_kl_forward_op, (logits, target, FLOOR, 0.05, 20.0, backend))


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


def test_resize_seeds_is_nearest():
    seeds = torch.arange(12 * 10).reshape(1, 12, 10) % 256
    resized = resize_seeds(seeds, (4, 5))
    rows, cols = torch.arange(4) * 12 // 4, torch.arange(5) * 10 // 5
    assert torch.equal(resized[0], seeds[0][rows][:, cols])
    assert resized.dtype == torch.int64


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_auto_backend_follows_the_tensors_device(device):
    """cpp for CPU logits, cuda then triton for CUDA logits, whatever device the suite tests."""
    if device == "cpu":
        expected = "cpp" if _ext.available("cpu") else "reference"
    else:
        expected = "cuda" if _ext.available("cuda") else "triton" if "triton" in softmax.fused_backends("cuda") \
            else "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the one-time fallback warning, when there is no fused backend
        assert softmax.resolve_backend("auto", torch.zeros(1, 21, 2, 2, device=device)) == expected


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


def test_launch_device_is_the_tensors_cuda_device():
    """Triton launches on the current CUDA device: launch_device makes the tensor's current (a CUDA
    tensor stands in by its device attributes; no GPU is touched before the context is entered)."""
    from types import SimpleNamespace

    from sgan.ops.dispatch import launch_device

    on_second_gpu = SimpleNamespace(is_cuda=True, device=torch.device("cuda", 1))
    context = launch_device(on_second_gpu)
    assert isinstance(context, torch.cuda.device) and context.idx == 1
    with launch_device(torch.zeros(1)):  # CPU tensors: nothing to switch
        pass


@pytest.mark.skipif("triton" not in FUSED, reason="needs the Triton loss kernels")
def test_triton_loss_launchers_run_on_the_logits_device(monkeypatch):
    """Each of the four loss launchers enters launch_device with the logits before it launches."""
    from sgan.kernels import losses as triton_losses

    entered = []
    real_launch_device = triton_losses.launch_device

    def recording_launch_device(tensor):
        entered.append(tensor)
        return real_launch_device(tensor)

    monkeypatch.setattr(triton_losses, "launch_device", recording_launch_device)
    generator = torch.Generator().manual_seed(15)
    logits = make_logits(2, 21, 3, 4, generator).float().to(DEVICE).requires_grad_(True)
    seeds = make_seeds(2, 3, 4, "random", generator).to(DEVICE)
    crf_probs = make_crf_probs(2, 21, 3, 4, generator).to(DEVICE)
    total = (losses.balanced_seed_loss(logits, seeds, backend="triton")
             + losses.boundary_loss(logits, crf_probs=crf_probs, backend="triton"))
    total.backward()
    assert len(entered) == 4 and all(t.shape == (2, 21, 12) for t in entered)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs: logits on cuda:1, cuda:0 current")
def test_loss_backends_on_the_second_gpu():
    generator = torch.Generator().manual_seed(16)
    logits = make_logits(2, 21, 5, 6, generator).float()
    seeds = make_seeds(2, 5, 6, "random", generator)
    reference = losses.balanced_seed_loss(logits, seeds, backend="reference")
    definition = balanced_seed_loss_definition(logits.double(), seeds)
    torch.cuda.set_device(0)
    for backend in softmax.fused_backends("cuda"):
        got = losses.balanced_seed_loss(logits.to("cuda:1"), seeds.to("cuda:1"), backend=backend)
        assert got.device == torch.device("cuda", 1)
        assert_within_reference_error(backend, got.cpu(), reference, definition, torch.float32)


@pytest.mark.skipif("triton" not in FUSED or DEVICE.type != "cuda",
                    reason="the interpreter compiles nothing: only Triton on CUDA has compiled kernels to reuse")
def test_triton_losses_compile_nothing_for_a_new_number_of_positions():
    """After every loss kernel has run at N = 8 * 8 (a multiple of 16), N = 7 * 9 and N = 1 reuse the
    compiled kernels: N and the block count are not specialised on."""
    def forward_and_backward(h, w):
        logits = torch.randn(2, 21, h, w, device=DEVICE, requires_grad=True)
        seeds = torch.randint(0, 21, (2, h, w), device=DEVICE)
        crf_probs = torch.rand(2, 21, h, w, device=DEVICE)
        total = (losses.seed_loss(logits[:, 1:], seeds, backend="triton")
                 + losses.balanced_seed_loss(logits, seeds, backend="triton")
                 + losses.boundary_loss(logits, crf_probs=crf_probs, backend="triton"))
        total.backward()

    forward_and_backward(8, 8)
    with triton_compilations() as compiled:
        forward_and_backward(7, 9)
        forward_and_backward(1, 1)
    assert compiled == []


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
