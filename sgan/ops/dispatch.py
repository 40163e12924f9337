"""Backend selection shared by the fused operators (attention, losses).

Every operator has the backends ``reference`` (plain PyTorch), ``cpp`` (sgan._C on CPU), ``cuda``
(sgan._C on CUDA) and ``triton`` (``sgan.kernels.<module>``; CPU only through TRITON_INTERPRET=1),
and ``auto``, which takes the first usable of cpp (CPU) or cuda, then triton (CUDA), then the
reference with a one-time warning.
"""
import functools
import importlib
import os
import warnings

import torch

from sgan import _ext

BACKENDS = ("auto", "reference", "cpp", "cuda", "triton")
FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
BACKEND_DTYPES = {
    "cpp": (torch.float32, torch.float64),
    "cuda": FLOAT_DTYPES,
    "triton": FLOAT_DTYPES,
    "reference": FLOAT_DTYPES,
}


def describe(t):
    """'shape (...), dtype ..., device ...' of a tensor, for error messages."""
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def triton_available(device_type, kernel_module):
    """True if triton and ``sgan.kernels.<kernel_module>`` import and can run on ``device_type``."""
    if device_type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        return False
    try:
        import triton  # noqa: F401

        importlib.import_module(f"sgan.kernels.{kernel_module}")
    except ImportError:
        return False
    return True


class Dispatcher:
    """Backend choice for one operator.

    op_name: used in messages; kernel_module: the Triton module under ``sgan.kernels``;
    extension_ops: names in ``torch.ops.sgan_ext`` the C++/CUDA backends need.
    """

    def __init__(self, op_name, kernel_module, extension_ops):
        self.op_name, self.kernel_module, self.extension_ops = op_name, kernel_module, tuple(extension_ops)

    def extension_ready(self, device_type):
        return _ext.available(device_type) and all(hasattr(torch.ops.sgan_ext, n) for n in self.extension_ops)

    def fused_backends(self, device_type):
        """Fused backends usable for tensors on ``device_type`` ("cpu" or "cuda") here."""
        found = ["cpp" if device_type == "cpu" else "cuda"] if self.extension_ready(device_type) else []
        return found + (["triton"] if triton_available(device_type, self.kernel_module) else [])

    def resolve(self, backend, tensor, arg_name):
        """The concrete backend for ``tensor`` (argument ``arg_name``), with clear errors."""
        device_type = tensor.device.type
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
        if backend == "auto":
            fused = [b for b in self.fused_backends(device_type) if device_type == "cuda" or b != "triton"]
            if fused:
                backend = fused[0]
            else:
                self._warn_fallback(device_type)
                backend = "reference"
        if backend in ("cpp", "cuda"):
            wanted = "cpu" if backend == "cpp" else "cuda"
            if device_type != wanted:
                raise ValueError(f"backend={backend!r} expects {wanted} tensors, got {arg_name} on {tensor.device}")
            _ext.require(backend, device_type)
            if not self.extension_ready(device_type):
                raise RuntimeError(f"backend={backend!r}: the built sgan._C lacks the {self.op_name} operators; "
                                   f"rebuild it: {_ext.BUILD_HINT}")
        if backend == "triton" and not triton_available(device_type, self.kernel_module):
            raise RuntimeError("backend='triton' needs the triton package and CUDA tensors "
                               "(or TRITON_INTERPRET=1 set before import, for CPU tensors)")
        if tensor.dtype not in BACKEND_DTYPES[backend]:
            raise TypeError(f"{arg_name}: backend {backend!r} supports dtypes "
                            f"{[str(d) for d in BACKEND_DTYPES[backend]]}, got {tensor.dtype}")
        return backend

    @functools.lru_cache(maxsize=None)  # noqa: B019  (one warning per dispatcher and device type)
    def _warn_fallback(self, device_type):
        warnings.warn(f"{self.op_name} (backend='auto'): no fused backend for {device_type} tensors; using "
                      f"the PyTorch reference. For the fused path {_ext.BUILD_HINT}", RuntimeWarning, stacklevel=5)
