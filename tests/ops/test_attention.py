"""Saliency-guided attention: every backend against a float64 definition, values and gradients."""
import functools

import pytest
import torch

from sgan.ops import attention_column, saliency_attention
from sgan.ops.attention import resolve_options
from tests.helpers import assert_within_reference_error, device_under_test, fused_backends, relative_error

OPTIONS = [  # (shift, background): the two presets and the two other combinations
    (True, "mean"), (False, "attend"), (True, "attend"), (False, "mean")]


def weights_definition(key, query, mask, shift, background, scale, eps=1e-5):
    """The attention weights (B, N, N) of docs/design.md §2 written row by row in float64, independently
    of the package's reference: row i holds the weights position i gives every position j."""
    key, query = key.double(), query.double()
    B, Ck = key.shape[:2]
    ks, qs, ms = key.reshape(B, Ck, -1), query.reshape(B, Ck, -1), mask.reshape(B, -1)
    N = ks.shape[2]
    weights = torch.empty(B, N, N, dtype=torch.float64)
    for b in range(B):
        n_bg = float((~ms[b]).sum())
        for i in range(N):
            if background == "mean" and not ms[b, i]:
                weights[b, i] = (~ms[b]).double() / (n_bg + eps)
            else:
                same = (ms[b] == ms[b, i]).double()
                z = scale * (ks[b, :, i:i + 1] * qs[b]).sum(0) * same
                shifted = z - z.min() if shift else z
                w = shifted * same
                weights[b, i] = w / (w.sum() + eps)
    return weights


def definition(x, key, query, mask, gamma, shift, background, scale, eps=1e-5):
    """docs/design.md §2 in float64: out_i = gamma * sum_j W_ij x_j + x_i with the weights above."""
    x = x.double()
    B, C, H, W = x.shape
    weights = weights_definition(key, query, mask, shift, background, scale, eps)
    xs = x.reshape(B, C, -1)
    return (float(gamma) * xs @ weights.transpose(1, 2) + xs).reshape(B, C, H, W)


def make_mask(kind, B, H, W, generator):
    if kind == "random":
        return torch.rand(B, H, W, generator=generator) > 0.5
    if kind == "all":
        return torch.ones(B, H, W, dtype=torch.bool)
    if kind == "none":
        return torch.zeros(B, H, W, dtype=torch.bool)
    if kind == "one":
        mask = torch.zeros(B, H, W, dtype=torch.bool)
        mask[:, H // 2, W // 3] = True
        return mask
    if kind == "mixed":  # one image each: all, none, random
        assert B == 3
        return torch.stack([torch.ones(H, W, dtype=torch.bool), torch.zeros(H, W, dtype=torch.bool),
                            torch.rand(H, W, generator=generator) > 0.3])
    raise ValueError(kind)


def make_inputs(B, C, Ck, H, W, mask_kind, shift, seed, dtype=torch.float64, device="cpu"):
    """Random inputs; without the shift, positive key/query keep the denominators away from 0."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=generator)
    if shift:
        key, query = torch.randn(B, Ck, H, W, generator=generator), torch.randn(B, Ck, H, W, generator=generator)
    else:
        key = torch.rand(B, Ck, H, W, generator=generator) + 0.1
        query = torch.rand(B, Ck, H, W, generator=generator) + 0.1
    mask = make_mask(mask_kind, B, H, W, generator)
    return [t.to(device=device, dtype=dtype) for t in (x, key, query)] + [mask.to(device)]


def run_with_grads(backend, x, key, query, mask, gamma, grad_out, shift, background):
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, key, query)]
    gamma_leaf = torch.tensor([gamma], dtype=torch.float64 if x.dtype == torch.float64 else torch.float32,
                              device=x.device, requires_grad=True)
    out = saliency_attention(*leaves, mask, gamma_leaf, shift=shift, background=background, backend=backend)
    out.backward(grad_out)
    return [out.detach()] + [t.grad for t in leaves] + [gamma_leaf.grad]


def definition_with_grads(x, key, query, mask, gamma, grad_out, shift, background):
    leaves = [t.detach().double().clone().requires_grad_(True) for t in (x, key, query)]
    gamma_leaf = torch.tensor(gamma, dtype=torch.float64, requires_grad=True)
    B, C, H, W = x.shape
    from sgan.ops.attention import saliency_attention_reference
    out = saliency_attention_reference(
        leaves[0].reshape(B, C, -1), leaves[1].reshape(B, key.shape[1], -1),
        leaves[2].reshape(B, key.shape[1], -1), mask.reshape(B, -1), gamma_leaf,
        shift=shift, background=background, scale=key.shape[1] ** -0.5, eps=1e-5).reshape(x.shape)
    out.backward(grad_out.double())
    return [out.detach()] + [t.grad for t in leaves] + [gamma_leaf.grad]


NAMES = ["out", "grad_x", "grad_key", "grad_query", "grad_gamma"]


def assert_backend_matches_definition(backend, x, key, query, mask, grad_out, shift, background, dtype):
    """``backend``'s output and gradients (gamma 0.7) against the float64 definition, within the error
    of the reference run in the same dtype (docs/design.md §7); same dtype and shape, all finite."""
    fused = run_with_grads(backend, x, key, query, mask, 0.7, grad_out, shift, background)
    same_dtype = run_with_grads("reference", x, key, query, mask, 0.7, grad_out, shift, background)
    exact = definition_with_grads(x, key, query, mask, 0.7, grad_out, shift, background)
    for name, got, ref, ref64 in zip(NAMES, fused, same_dtype, exact):
        assert got.dtype == ref.dtype and got.shape == ref.shape, name
        assert torch.isfinite(got).all(), f"{name}: non-finite values"
        assert_within_reference_error(name, got, ref, ref64.to(got.device), dtype)


@pytest.mark.parametrize("shift,background", OPTIONS)
@pytest.mark.parametrize("mask_kind", ["random", "all", "none", "one"])
def test_reference_matches_definition(shift, background, mask_kind):
    x, key, query, mask = make_inputs(2, 6, 4, 5, 7, mask_kind, shift, seed=1)
    got = saliency_attention(x, key, query, mask, 0.8, shift=shift, background=background, backend="reference")
    want = definition(x, key, query, mask, 0.8, shift, background, scale=4 ** -0.5)
    assert relative_error(got, want) < 1e-12


SIZES = [(2, 7, 5, "random"), (1, 13, 11, "random"), (1, 41, 41, "random"), (2, 7, 5, "all"),
         (2, 7, 5, "none"), (2, 9, 6, "one"), (3, 7, 5, "mixed")]
FUSED_CASES = [pytest.param(backend, dtype, shift, background, B, H, W, mask_kind,
                            id=f"{backend}-{str(dtype)[6:]}-{shift}-{background}-{B}x{H}x{W}-{mask_kind}")
               for B, H, W, mask_kind in SIZES for shift, background in OPTIONS
               for dtype in (torch.float32, torch.float64) for backend in fused_backends()]
PERTURBATION = 0.01  # a fused output this far off (relative) must fail its comparison


def upstream_gradient(x, out, gamma, dtype, generator):
    """grad_out: noise, plus in float32 the context (out - x) / gamma scaled to the noise's size, so
    that grad_gamma = sum_i g_i . ctx_i sums terms mostly of one sign. With noise alone that sum can
    cancel to a condition number of 1e6, where any float32 evaluation may be off by 8% (the bound
    allows it) and a 1% error would pass; in float64 the same cancellation allows 1e-10."""
    noise = torch.randn(x.shape, generator=generator).double()
    if dtype == torch.float64:
        return noise
    context = (out - x) / gamma
    return noise + 2.0 * context * (noise.norm() / context.norm().clamp_min(1e-30))


@functools.lru_cache(maxsize=None)
def fused_comparisons(backend, dtype, shift, background, B, H, W, mask_kind):
    """For one case of test_fused_matches_reference, each output's (name, fused, reference in dtype,
    float64 definition, reference error scale, condition): the fused backend's result and what
    assert_within_reference_error compares it with."""
    device = device_under_test()
    C, Ck = 12, 8
    x, key, query, mask = make_inputs(B, C, Ck, H, W, mask_kind, shift, seed=B * 100 + H, dtype=dtype, device=device)
    with torch.no_grad():
        out64 = definition(x.cpu(), key.cpu(), query.cpu(), mask.cpu(), 0.7, shift, background, scale=Ck ** -0.5)
    grad_out = upstream_gradient(x.double().cpu(), out64, 0.7, dtype, torch.Generator().manual_seed(7))
    grad_out = grad_out.to(device=device, dtype=dtype)
    fused = run_with_grads(backend, x, key, query, mask, 0.7, grad_out, shift, background)
    exact = definition_with_grads(x, key, query, mask, 0.7, grad_out, shift, background)
    if dtype == torch.float64:  # the reference's own float64 error, estimated from float32
        same_dtype = run_with_grads("reference", x.float(), key.float(), query.float(), mask, 0.7,
                                    grad_out.float(), shift, background)
        error_scale = 2.0 ** -29
    else:
        same_dtype = run_with_grads("reference", x, key, query, mask, 0.7, grad_out, shift, background)
        error_scale = 1.0
    # grad_gamma = sum_i g_i . ctx_i is a signed sum; its condition number bounds any evaluation's accuracy
    gamma_terms = grad_out.double().cpu() * (exact[0].cpu() - x.double().cpu()) / 0.7
    conditions = [None] * 4 + [float(gamma_terms.abs().sum() / gamma_terms.sum().abs())]
    return [(name, got, ref, ref64.to(got.device), error_scale, condition)
            for name, got, ref, ref64, condition in zip(NAMES, fused, same_dtype, exact, conditions)]


@pytest.mark.parametrize("backend,dtype,shift,background,B,H,W,mask_kind", FUSED_CASES)
def test_fused_matches_reference(backend, dtype, shift, background, B, H, W, mask_kind):
    if backend == "triton" and device_under_test().type == "cpu" and H * W > 200 and dtype == torch.float64:
        pytest.skip("the Triton interpreter is slow; 41x41 runs in float32 only on CPU")
    for name, got, ref, ref64, error_scale, condition in fused_comparisons(
            backend, dtype, shift, background, B, H, W, mask_kind):
        assert got.dtype == dtype and got.shape == ref.shape, name
        assert torch.isfinite(got).all(), f"{name}: non-finite values"
        assert_within_reference_error(name, got, ref, ref64, dtype, error_scale, condition)


@pytest.mark.parametrize("backend,dtype,shift,background,B,H,W,mask_kind", FUSED_CASES)
def test_fused_comparison_fails_a_one_percent_error(backend, dtype, shift, background, B, H, W, mask_kind):
    """The test above must be able to fail: each fused output off by 1% (scaled by 1.01; where the
    exact output is 0, moved by 0.01 in norm) fails its comparison."""
    if backend == "triton" and device_under_test().type == "cpu" and H * W > 200 and dtype == torch.float64:
        pytest.skip("the Triton interpreter is slow; 41x41 runs in float32 only on CPU")
    generator = torch.Generator().manual_seed(17)
    for name, got, ref, ref64, error_scale, condition in fused_comparisons(
            backend, dtype, shift, background, B, H, W, mask_kind):
        if bool(ref64.any()):
            wrong = got * (1 + PERTURBATION)
        else:
            direction = torch.randn(got.shape, generator=generator, dtype=torch.float64)
            wrong = got + (PERTURBATION / direction.norm() * direction).to(device=got.device, dtype=got.dtype)
        with pytest.raises(AssertionError, match=name):
            assert_within_reference_error(name, wrong, ref, ref64, dtype, error_scale, condition)


@pytest.mark.parametrize("backend", fused_backends())
def test_fused_non_contiguous_inputs(backend):
    device = device_under_test()
    x, key, query, mask = make_inputs(2, 6, 4, 7, 9, "random", True, seed=3, device=device)
    # transposed spatial axes and strided channels: none of these is contiguous
    x_nc = x.transpose(2, 3).contiguous().transpose(2, 3)
    key_nc = torch.stack([key, key], dim=2).reshape(2, 8, 7, 9)[:, ::2]  # equals key, strided
    query_nc = query.transpose(2, 3).contiguous().transpose(2, 3)
    mask_nc = mask.transpose(1, 2).contiguous().transpose(1, 2)
    assert not (x_nc.is_contiguous() or key_nc.is_contiguous() or query_nc.is_contiguous())
    got = saliency_attention(x_nc, key_nc, query_nc, mask_nc, 0.5, backend=backend)
    want = saliency_attention(x, key, query, mask, 0.5, backend="reference")
    assert relative_error(got, want) < 1e-12


@pytest.mark.parametrize("backend", fused_backends())
def test_gamma_zero_still_trains_key_and_query_through_gamma(backend):
    """With gamma = 0 (its initial value) the output is x and only gamma gets a gradient."""
    device = device_under_test()
    x, key, query, mask = make_inputs(1, 6, 4, 5, 5, "random", True, seed=4, device=device)
    grad_out = torch.randn_like(x)
    got = run_with_grads(backend, x, key, query, mask, 0.0, grad_out, True, "mean")
    want = definition_with_grads(x, key, query, mask, 0.0, grad_out, True, "mean")
    assert torch.equal(got[0], x)
    assert torch.count_nonzero(got[2]) == 0 and torch.count_nonzero(got[3]) == 0
    assert relative_error(got[4], want[4]) < 1e-10


@pytest.mark.parametrize("backend", ["reference"] + fused_backends())
@pytest.mark.parametrize("preset", ["official", "paper"])
def test_attention_column(backend, preset):
    device = device_under_test()
    shift, background = resolve_options(preset)
    x, key, query, mask = make_inputs(2, 6, 4, 6, 7, "random", shift, seed=5, device=device)
    weights = weights_definition(key.cpu(), query.cpu(), mask.cpu(), shift, background, scale=4 ** -0.5)
    for index in (0, 17, (5, 6)):
        flat = index if isinstance(index, int) else index[0] * 7 + index[1]
        got = attention_column(x, key, query, mask, index, preset=preset, backend=backend)
        assert got.shape == (2, 6, 7)
        assert relative_error(got.cpu(), weights[:, :, flat].reshape(2, 6, 7)) < 1e-12


@pytest.mark.parametrize("backend", ["reference"] + fused_backends())
def test_gradcheck_float64(backend):
    if backend == "triton" and device_under_test().type == "cpu":
        pytest.skip("gradcheck through the Triton interpreter is too slow for CI")
    device = device_under_test()
    for shift, background in OPTIONS:
        x, key, query, mask = make_inputs(1, 3, 2, 3, 4, "random", shift, seed=6, device=device)
        gamma = torch.tensor([0.6], dtype=torch.float64, device=device)
        inputs = [t.requires_grad_(True) for t in (x, key, query, gamma)]

        def fn(x, key, query, gamma):
            return saliency_attention(x, key, query, mask, gamma, shift=shift, background=background,
                                      backend=backend)
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_reference_has_the_nan_pattern_fused_paths_must_match():
    """The paper preset with a zero denominator row: reference gives inf/NaN there; fused the same."""
    x = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    key = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    query = torch.randn(1, 2, 2, 2, dtype=torch.float64)
    mask = torch.ones(1, 2, 2, dtype=torch.bool)
    reference = saliency_attention(x, key, query, mask, 1.0, preset="paper", eps=0.0, backend="reference")
    assert not torch.isfinite(reference).all()
    for backend in fused_backends():
        got = saliency_attention(x.to(device_under_test()), key.to(device_under_test()), query.to(device_under_test()),
                                 mask.to(device_under_test()), 1.0, preset="paper", eps=0.0, backend=backend)
        assert torch.equal(torch.isfinite(got).cpu(), torch.isfinite(reference))


@pytest.mark.parametrize("backend", ["reference"] + fused_backends())
def test_nan_input_propagates(backend):
    device = device_under_test()
    x, key, query, mask = make_inputs(1, 4, 2, 4, 4, "random", True, seed=8, device=device)
    x[0, 1, 2, 2] = float("nan")
    got = saliency_attention(x, key, query, mask, 0.5, backend=backend)
    assert torch.isnan(got).any()


@pytest.mark.parametrize("backend", ["reference"] + fused_backends())
def test_attention_column_is_exactly_zero_at_each_rows_minimum(backend):
    """With the shift, a row gives its own minimum column the weight P_ij - m_i = 0 exactly, and no
    weight is negative: a column that is every row's minimum is all zeros, as in the reference. In
    float32 with many key channels, recomputing P_ij in another summation order than the row-minimum
    pass would leave rounding noise of either sign there."""
    device = device_under_test()
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(2, 6, 9, 10, generator=generator)
    key = torch.rand(2, 96, 9, 10, generator=generator) + 0.1
    query = torch.rand(2, 96, 9, 10, generator=generator) + 0.1
    query[:, :, 4, 5] = -torch.rand(2, 96, generator=generator)  # P_i,(4,5) < 0 < every other P_ij
    mask = torch.ones(2, 9, 10, dtype=torch.bool)
    mask[:, 0] = False                              # a background group too (its rows use the mean)
    args = [t.to(device) for t in (x, key, query, mask)]
    column = attention_column(*args, (4, 5), preset="official", backend=backend)
    assert torch.count_nonzero(column[:, 1:]) == 0  # the salient rows: exactly 0
    args64 = [t.double() if t.is_floating_point() else t for t in args]
    for index in (0, 23, 71):                       # elsewhere: non-negative, within the reference's error
        got = attention_column(*args, index, preset="official", backend=backend)
        reference = attention_column(*args, index, preset="official", backend="reference")
        definition = attention_column(*args64, index, preset="official", backend="reference")
        assert (got >= 0).all()
        assert_within_reference_error(f"column {index}", got, reference, definition, torch.float32)


def fused_row_minimum(backend, key, query, mask, scale):
    """(row_min, argmin) of ``backend``'s forward with the shift and attending background rows."""
    B, Ck, N = key.shape
    x = torch.zeros(B, 2, N, dtype=key.dtype, device=key.device)
    gamma = torch.tensor(0.5, dtype=key.dtype, device=key.device)
    outputs = torch.ops.sgan.fused_saliency_attention_forward(x, key, query, mask, gamma, scale, 1e-5, True, False,
                                                              backend)
    return outputs[5].cpu(), outputs[6].cpu()


def reference_row_minimum(key, query, mask, scale):
    """m_i and its column as the reference's torch.min over the N masked columns gives them, the
    column -1 where it falls in the other group (a masked zero)."""
    key, query, mask = key.cpu(), query.cpu(), mask.cpu()
    same = mask[:, :, None] == mask[:, None, :]
    values, columns = (scale * torch.bmm(key.transpose(1, 2), query) * same).min(dim=2)
    in_group = same.gather(2, columns[:, :, None])[:, :, 0]
    return values, torch.where(in_group, columns, -1)


@pytest.mark.parametrize("backend", fused_backends())
@pytest.mark.parametrize("bg_mean", [True, False])
def test_forward_statistics_match_their_definition(backend, bg_mean):
    """A, q_sum, x_sum and count of the forward against their sums written out in float64: A[b, g] =
    sum_{j in g} Q_j X_j^T for the attending groups, and A[b, 0] exactly 0 under bg_mean, whose
    background rows do not attend (the backward never reads it, so no backend computes it)."""
    device = device_under_test()
    generator = torch.Generator().manual_seed(3)
    B, C, Ck, N = 2, 6, 4, 37
    x, key, query = (torch.randn(B, rows, N, generator=generator, dtype=torch.float64) for rows in (C, Ck, Ck))
    mask = torch.rand(B, N, generator=generator) > 0.6
    gamma = torch.tensor(0.5, dtype=torch.float64)
    A, q_sum, x_sum, count = torch.ops.sgan.fused_saliency_attention_forward(
        *(t.to(device) for t in (x, key, query, mask, gamma)), Ck ** -0.5, 1e-5, True, bg_mean, backend)[1:5]
    for b in range(B):
        for g, in_group in enumerate((~mask[b], mask[b])):
            members = in_group.nonzero()[:, 0]
            attends = g == 1 or not bg_mean
            expected_A = query[b][:, members] @ x[b][:, members].T if attends else torch.zeros(Ck, C).double()
            torch.testing.assert_close(A[b, g].cpu(), expected_A, rtol=1e-12, atol=1e-12)
            if not attends:
                assert (A[b, g] == 0).all()
            torch.testing.assert_close(q_sum[b, g].cpu(), query[b][:, members].sum(1), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(x_sum[b, g].cpu(), x[b][:, members].sum(1), rtol=1e-12, atol=1e-12)
            assert count[b, g].item() == len(members)


@pytest.mark.parametrize("backend", fused_backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_minimum_ties_take_the_reference_column(backend, dtype):
    """Exact ties (small integers, so every product is exact): image 0 has the minimum of every row
    at three columns of its group with one value, spread over the row; image 1 has non-negative
    products and columns whose products are exactly 0, so the minimum 0 ties between those columns
    and the masked zeros of the other group. Positions 0 and 1 belong to different groups, so in
    the reference a masked zero comes first and wins. Row minimum and column match the reference's."""
    device = device_under_test()
    generator = torch.Generator().manual_seed(21)
    B, Ck, N = 2, 3, 150
    key = torch.randint(1, 4, (B, Ck, N), generator=generator).to(dtype)
    query = torch.randint(0, 4, (B, Ck, N), generator=generator).to(dtype)
    mask = torch.rand(B, N, generator=generator) > 0.5
    mask[:, 0], mask[:, 1] = True, False
    for group in (False, True):
        columns = torch.nonzero(mask[0] == group)[:, 0]
        tied = columns[torch.tensor([3, len(columns) // 2, len(columns) - 1])]
        query[0][:, tied] = -2.0                        # P_ij = -4 sum_k K_ik, the row's minimum, three times
        zeros = torch.nonzero(mask[1] == group)[2::7, 0]
        query[1][:, zeros] = 0.0                        # P_ij = 0 = the masked zeros
    args = [t.to(device) for t in (key, query, mask)]
    row_min, argmin = fused_row_minimum(backend, *args, 2.0)
    want_min, want_argmin = reference_row_minimum(*args, 2.0)
    assert torch.equal(row_min, want_min)
    assert torch.equal(argmin, want_argmin)
    assert (argmin[0] >= 2).all() and (argmin[1] == -1).all()  # the ties did decide


# the driver's backends (cpp, cuda); Triton's row-minimum kernel leaves NaN out of the minimum (tl.min)
@pytest.mark.parametrize("backend", [backend for backend in fused_backends() if backend != "triton"])
def test_row_minimum_nan_takes_the_first_nan_column(backend):
    """Two NaN query columns of the salient group: every salient row's minimum is NaN at the first
    of them, as in the reference. (The reference's other rows see those columns too, as NaN * 0;
    the factorised rows never read the other group's columns, so only the salient rows compare.)"""
    device = device_under_test()
    generator = torch.Generator().manual_seed(22)
    key, query = torch.randn(2, 1, 4, 150, generator=generator).unbind(0)
    mask = torch.rand(1, 150, generator=generator) > 0.5
    salient = torch.nonzero(mask[0])[:, 0]
    query[0][:, salient[[-5, 20]]] = float("nan")
    args = [t.to(device) for t in (key, query, mask)]
    row_min, argmin = fused_row_minimum(backend, *args, 0.5)
    want_min, want_argmin = reference_row_minimum(*args, 0.5)
    rows = mask[0]
    assert torch.isnan(row_min[0, rows]).all() and torch.isnan(want_min[0, rows]).all()
    assert (argmin[0, rows] == salient[20]).all() and torch.equal(argmin[0, rows], want_argmin[0, rows])


# the driver's backends; Triton's row-minimum kernel leaves NaN out of the minimum (tl.min)
@pytest.mark.parametrize("backend", [backend for backend in fused_backends() if backend != "triton"])
def test_row_minimum_across_column_tiles(backend):
    """Groups of over 2100 positions, so that the C++ backend's row-minimum tiles (1024 columns)
    split each row: image 0 has, among its salient columns, a minimum at packed columns 2050 and 2100
    (a tie within the third tile) below a value at column 10 of the first, and among its background
    columns a tie between packed columns 7 and 2050 (the first tile's wins); image 1 has a NaN
    salient column in the third tile only, which wins for every salient row. Row minimum and
    column match the reference's (image 1: its salient rows, see the test above)."""
    device = device_under_test()
    generator = torch.Generator().manual_seed(23)
    B, Ck, N = 2, 3, 4400
    key = torch.randint(1, 4, (B, Ck, N), generator=generator).float()
    query = torch.randint(1, 4, (B, Ck, N), generator=generator).float()
    mask = torch.rand(B, N, generator=generator) > 0.5
    mask[:, 0], mask[:, 1] = True, False
    salient, background = (torch.nonzero(mask[0] == group)[:, 0] for group in (True, False))
    assert min(len(salient), len(background)) > 2100
    query[0][:, salient[10]] = -1.0
    query[0][:, salient[[2050, 2100]]] = -2.0
    query[0][:, background[[7, 2050]]] = -2.0
    query[1][:, torch.nonzero(mask[1])[2100, 0]] = float("nan")
    args = [t.to(device) for t in (key, query, mask)]
    row_min, argmin = fused_row_minimum(backend, *args, 2.0)
    want_min, want_argmin = reference_row_minimum(*args, 2.0)
    assert torch.equal(row_min[0], want_min[0]) and torch.equal(argmin[0], want_argmin[0])
    assert (argmin[0, mask[0]] == salient[2050]).all() and (argmin[0, ~mask[0]] == background[7]).all()
    rows = mask[1]
    assert torch.isnan(row_min[1, rows]).all() and torch.equal(argmin[1, rows], want_argmin[1, rows])
