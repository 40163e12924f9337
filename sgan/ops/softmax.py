"""What the two loss operators (``sgan.ops.seed_nll``, ``sgan.ops.boundary_kl``) share: Phi, the
softmax over the C channels of (B, C, ...) logits floored at ``floor`` and renormalised (the definition
both references use), the checks of their logits and floor, and the dispatch of their fused backends
(one Triton module, ``sgan.kernels.losses``, and one set of ``torch.ops.sgan_ext`` ops serve both).
"""
import torch
from torch import Tensor

from sgan.ops.dispatch import FLOAT_DTYPES, Dispatcher, accumulation_dtype, describe

# one dispatcher for both operators: the name is what its messages call them
_DISPATCH = Dispatcher("sgan.losses", "losses",
                       ("seed_nll_forward", "seed_nll_backward", "boundary_kl_forward", "boundary_kl_backward"))
# Backends whose loss kernels read bfloat16 / float16 logits themselves (accumulating in float32); the
# cpp kernels read float32 and float64 only.
_HALF_NATIVE = ("reference", "cuda", "triton")


# ---------------------------------------------------------------------------------------------
# the floored softmax (plain PyTorch)


def floor_and_renormalise(probs, floor, dim=1):
    """max(probs, floor) renormalised to sum 1 along ``dim``."""
    floored = probs.clamp_min(floor)
    return floored / floored.sum(dim, keepdim=True)


def floored_softmax(logits, floor, dim=1):
    """Softmax along ``dim`` floored at ``floor`` and renormalised, in the accumulation dtype."""
    return floor_and_renormalise(torch.softmax(logits.to(accumulation_dtype(logits.dtype)), dim), floor, dim)


# ---------------------------------------------------------------------------------------------
# input checks


def check_logits(logits, num_channels, name="logits"):
    """Raise unless ``logits`` is a non-empty floating (B, num_channels, h, w) tensor."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 4 or logits.shape[1] != num_channels:
        raise ValueError(f"{name}: expected shape (B, {num_channels}, h, w), got {describe(logits)}")
    if logits.shape[0] == 0 or logits.shape[2] * logits.shape[3] == 0:
        raise ValueError(f"{name}: expected a non-empty batch and spatial size, got {describe(logits)}")
    if logits.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating dtype in {[str(d) for d in FLOAT_DTYPES]}, "
                        f"got {logits.dtype}")


def check_floor(floor, num_channels, name="floor"):
    """``floor`` as a float in [0, 1 / num_channels): 0 is no floor; at 1 / num_channels or above every
    probability would be floored and Phi uniform."""
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor < 1 / num_channels:
        raise ValueError(f"{name}: expected a number in [0, {1 / num_channels:g}) (0 = no floor), got {floor!r}")
    return float(floor)


# ---------------------------------------------------------------------------------------------
# backend selection


def fused_backends(device_type):
    """Fused loss backends usable for tensors on ``device_type`` ("cpu" or "cuda") here."""
    return _DISPATCH.fused_backends(device_type)


def resolve_backend(backend, logits):
    """The concrete backend for ``logits``: 'auto' picks cpp on CPU, cuda then triton on CUDA."""
    return _DISPATCH.resolve(backend, logits, "logits")


def resolve_for_logits(backend, logits):
    """(concrete backend, the logits it computes with). Half-precision (bfloat16 / float16) logits are
    accepted on every backend: the softmax, its log and every sum run in float32 (the accumulation
    dtype) in all of them, and a backend that reads float32 only (cpp) gets the logits cast to
    float32 here, a cast whose backward hands the gradient back in the logits' dtype."""
    acc = accumulation_dtype(logits.dtype)
    backend = resolve_backend(backend, logits.new_empty(0, dtype=acc))
    if logits.dtype != acc and backend not in _HALF_NATIVE:
        logits = logits.to(acc)
    return backend, logits


def backend_module(backend):
    """What implements a fused backend's loss functions: ``sgan.kernels.losses`` for triton, else
    the extension's ``torch.ops.sgan_ext``."""
    if backend == "triton":
        from sgan.kernels import losses as triton_losses
        return triton_losses
    return torch.ops.sgan_ext
