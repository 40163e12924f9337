"""The fused seed NLL and boundary KL operators (sgan.ops.seed_nll, sgan.ops.boundary_kl): a NaN and
the memory layout of the logits on every backend, half precision, gradients (gradcheck), the custom
ops' fake implementations and autograd (opcheck), the choice of backend and of the launch device, and
Triton's compilations. Most tests drive the operators through the losses, which add only the
per-image combination in plain PyTorch, against the float64 definitions of tests/loss_definitions.py."""
import warnings

import pytest
import torch

from sgan import _ext, losses
from sgan.ops import softmax
from tests.helpers import assert_within_reference_error, triton_compilations
from tests.loss_definitions import (
    BACKENDS,
    DEVICE,
    FLOOR,
    FUSED,
    SEED_LOSSES,
    balanced_seed_loss_definition,
    check_against_definition,
    loss_and_definition,
    make_crf_probs,
    make_logits,
    make_seeds,
)


# ---------------------------------------------------------------------------------------------
# every backend


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
    C, fn, definition = loss_and_definition(loss, B, h, w, "random", generator)
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


# ---------------------------------------------------------------------------------------------
# dispatch and launches


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
