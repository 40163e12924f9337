"""The SGAN losses written out in float64, position by position (independent of the operators'
references in sgan.ops), inputs that exercise their floors and clips, and the check of a backend
against them: shared by tests/models/test_losses.py (the losses) and tests/ops/test_loss_ops.py (the
seed NLL and boundary KL operators under them)."""
import numpy as np
import torch

from sgan import losses
from sgan.ops import softmax
from tests.helpers import assert_within_reference_error, device_under_test, relative_error

FLOOR = 1e-5
DEVICE = device_under_test()
FUSED = softmax.fused_backends(DEVICE.type)
BACKENDS = ["reference"] + FUSED
# The float32 reference's own error against the float64 definitions on these small inputs is ~1e-7;
# 2e-6 leaves room for sums over a few hundred positions (docs/design.md §7 floor for float32 is 1e-6).
REFERENCE_FLOAT32_TOLERANCE = 2e-6


# ---------------------------------------------------------------------------------------------
# float64 definitions, position by position


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


# ---------------------------------------------------------------------------------------------
# a backend against the definitions


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


def loss_and_definition(loss, B, h, w, seed_pattern, generator):
    """(C, fn(logits, backend), definition(logits)) of ``loss`` ("boundary" or a name in SEED_LOSSES)
    on inputs drawn from ``generator`` now: CRF probabilities, or seeds of ``seed_pattern``."""
    if loss == "boundary":
        C = 21
        crf_probs = make_crf_probs(B, C, h, w, generator)
        target = crf_probs.to(DEVICE)
        fn = lambda lg, be: losses.boundary_loss(lg, crf_probs=target, backend=be)  # noqa: E731
        definition = lambda lg: boundary_loss_definition(lg, crf_probs)  # noqa: E731
    else:
        C, loss_fn, seed_definition = SEED_LOSSES[loss]
        seeds = make_seeds(B, h, w, seed_pattern, generator)
        seeds_device = seeds.to(DEVICE)
        fn = lambda lg, be: loss_fn(lg, seeds_device, be)  # noqa: E731
        definition = lambda lg: seed_definition(lg, seeds)  # noqa: E731
    return C, fn, definition
