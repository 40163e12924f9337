"""Backend selection shared by the fused operators (attention, losses).

Every operator has the backends ``reference`` (plain PyTorch), ``cpp`` (sgan._C on CPU), ``cuda``
(sgan._C on CUDA) and ``triton`` (``sgan.kernels.<module>``; CPU only through TRITON_INTERPRET=1),
and ``auto``, which takes the first usable of cpp (CPU) or cuda, then triton (CUDA), then the
reference with a one-time warning.

A backend that is there but fails to load (sgan._C built against another torch, a
``sgan.kernels`` module that raises on import) is never skipped silently: ``auto`` and
:meth:`Dispatcher.fused_backends` warn once with the error. With ``SGAN_REQUIRE_BACKENDS`` set
(comma-separated from cpp, cuda, triton; CI sets cpp,triton) ``auto`` raises instead when a
required backend cannot be loaded, and so does :func:`check_required_backends` (the test suite's
start).

The operators check the values of their inputs (labels in range, a 0/1 mask, finite probabilities)
only where that is free: on CPU tensors, or everywhere with ``SGAN_DEBUG_CHECKS=1``. On a GPU such a
check reads its answer back and so waits for every kernel queued before it (:func:`values_checked`).
"""
import contextlib
import importlib
import os
import sys
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


def accumulation_dtype(dtype):
    """The dtype every backend accumulates and keeps statistics in: float64 for float64 inputs,
    else float32 (also for bfloat16 / float16 inputs)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def values_checked(tensor):
    """Whether an operator checks the values of ``tensor``: always for CPU tensors, for others only
    with SGAN_DEBUG_CHECKS=1 (shapes, dtypes and devices are checked always: they cost nothing)."""
    return tensor.device.type == "cpu" or os.environ.get(DEBUG_CHECKS_VARIABLE, "0") == "1"


def launch_device(tensor):
    """A context that makes ``tensor``'s CUDA device current, for kernel launches (Triton launches on the
    current device, so a tensor on cuda:1 would otherwise be read by a kernel running on cuda:0); a
    no-op for CPU tensors."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def describe(t):
    """'shape (...), dtype ..., device ...' of a tensor, for error messages."""
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


DEBUG_CHECKS_VARIABLE = "SGAN_DEBUG_CHECKS"
REQUIRE_VARIABLE = "SGAN_REQUIRE_BACKENDS"
REQUIRABLE = ("cpp", "cuda", "triton")
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # .../sgan/
_DISPATCHERS = []  # every Dispatcher made, for check_required_backends
_triton_import_problems = {}  # kernel module -> None or (why, broken), filled by triton_import_problem


def required_backends():
    """The backends named by SGAN_REQUIRE_BACKENDS (empty when it is unset)."""
    raw = os.environ.get(REQUIRE_VARIABLE, "")
    names = [name.strip() for name in raw.split(",") if name.strip()]
    if any(name not in REQUIRABLE for name in names):
        raise ValueError(f"{REQUIRE_VARIABLE}: expected comma-separated names from {REQUIRABLE}, got {raw!r}")
    return names


def triton_import_problem(kernel_module):
    """None if triton and ``sgan.kernels.<kernel_module>`` import, else (why, broken): ``broken``
    unless triton is simply not installed. Cached: a module is imported once."""
    if kernel_module not in _triton_import_problems:
        found = None
        try:
            import triton  # noqa: F401
        except ModuleNotFoundError as exc:
            found = (f"triton is not installed ({exc})", exc.name != "triton")
        except Exception as exc:  # noqa: BLE001  (installed but broken: any error at import)
            found = (f"triton could not be imported ({type(exc).__name__}: {exc})", True)
        if found is None:
            try:
                importlib.import_module(f"sgan.kernels.{kernel_module}")
            except Exception as exc:  # noqa: BLE001  (e.g. a triton API the kernels use has moved)
                found = (f"sgan.kernels.{kernel_module} could not be imported ({type(exc).__name__}: {exc})", True)
        _triton_import_problems[kernel_module] = found
    return _triton_import_problems[kernel_module]


def check_required_backends():
    """Raise a RuntimeError naming every SGAN_REQUIRE_BACKENDS backend that an operator cannot load."""
    problems = [problem for dispatcher in _DISPATCHERS for problem in dispatcher.required_problems()]
    if problems:
        raise _required_error(problems)


def _required_error(problems):
    return RuntimeError(f"{REQUIRE_VARIABLE}={os.environ.get(REQUIRE_VARIABLE)!r} but " + "; ".join(problems))


class Dispatcher:
    """Backend choice for one operator.

    op_name: used in messages; kernel_module: the Triton module under ``sgan.kernels``;
    extension_ops: names in ``torch.ops.sgan_ext`` the C++/CUDA backends need; dtypes: the input
    dtypes per backend where this operator's differ from BACKEND_DTYPES.
    """

    def __init__(self, op_name, kernel_module, extension_ops, dtypes=None):
        self.op_name, self.kernel_module, self.extension_ops = op_name, kernel_module, tuple(extension_ops)
        self.dtypes = {**BACKEND_DTYPES, **(dtypes or {})}  # per backend, where this operator differs
        self._warned = set()
        _DISPATCHERS.append(self)

    def extension_ready(self, device_type):
        return self.problem("cpp" if device_type == "cpu" else "cuda", device_type) is None

    def problem(self, backend, device_type):
        """None if the fused ``backend`` runs this operator on ``device_type`` tensors here, else
        (why not, broken): ``broken`` when it is there but fails to load."""
        if backend in ("cpp", "cuda"):
            found = _ext.problem(device_type)
            if found is None and not all(hasattr(torch.ops.sgan_ext, n) for n in self.extension_ops):
                found = (f"the built sgan._C lacks the {self.op_name} operators; rebuild it: {_ext.BUILD_HINT}", True)
            return found
        if device_type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
            return "triton runs CPU tensors only with TRITON_INTERPRET=1 set before import", False
        return triton_import_problem(self.kernel_module)

    def fused_backends(self, device_type):
        """Fused backends usable for tensors on ``device_type`` ("cpu" or "cuda") here; warns once
        about each one that is there but fails to load."""
        usable = []
        for backend in ("cpp" if device_type == "cpu" else "cuda", "triton"):
            found = self.problem(backend, device_type)
            if found is None:
                usable.append(backend)
            elif found[1]:
                self._warn_once(f"{self.op_name}: backend {backend!r} is unavailable: {found[0]}")
        return usable

    def required_problems(self):
        """'backend: why' for each SGAN_REQUIRE_BACKENDS backend this operator cannot load (triton:
        whether it imports; running it on CPU tensors also needs TRITON_INTERPRET=1)."""
        problems = []
        for backend in required_backends():
            if backend == "triton":
                found = triton_import_problem(self.kernel_module)
            else:
                found = self.problem(backend, "cpu" if backend == "cpp" else "cuda")
            if found is not None:
                problems.append(f"{self.op_name} backend {backend!r} is unavailable: {found[0]}")
        return problems

    def _auto(self, device_type):
        """The backend 'auto' picks for ``device_type`` tensors (see the module doc)."""
        problems = self.required_problems()
        if problems:
            raise _required_error(problems)
        broken = []
        for backend in ["cpp"] if device_type == "cpu" else ["cuda", "triton"]:
            found = self.problem(backend, device_type)
            if found is None:
                chosen = backend
                break
            if found[1]:
                broken.append(f"{backend!r} is unavailable: {found[0]}")
        else:
            chosen = "reference"
        if broken:
            self._warn_once(f"{self.op_name} (backend='auto') on {device_type} tensors: {'; '.join(broken)}; "
                            f"using {chosen!r}")
        elif chosen == "reference":
            self._warn_once(f"{self.op_name} (backend='auto'): no fused backend for {device_type} tensors; "
                            f"using the PyTorch reference. For the fused path {_ext.BUILD_HINT}")
        return chosen

    def resolve(self, backend, tensor, arg_name):
        """The concrete backend for ``tensor`` (argument ``arg_name``), with clear errors."""
        device_type = tensor.device.type
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
        if backend == "auto":
            backend = self._auto(device_type)
        if backend in ("cpp", "cuda"):
            wanted = "cpu" if backend == "cpp" else "cuda"
            if device_type != wanted:
                raise ValueError(f"backend={backend!r} expects {wanted} tensors, got {arg_name} on {tensor.device}")
            _ext.require(backend, device_type)
            if not self.extension_ready(device_type):
                raise RuntimeError(f"backend={backend!r}: the built sgan._C lacks the {self.op_name} operators; "
                                   f"rebuild it: {_ext.BUILD_HINT}")
        if backend == "triton":
            found = self.problem("triton", device_type)
            if found is not None:
                raise RuntimeError(f"backend='triton' needs the triton package and CUDA tensors (or "
                                   f"TRITON_INTERPRET=1 set before import, for CPU tensors): {found[0]}")
        if tensor.dtype not in self.dtypes[backend]:
            raise TypeError(f"{arg_name}: backend {backend!r} supports dtypes "
                            f"{[str(d) for d in self.dtypes[backend]]}, got {tensor.dtype}")
        return backend

    def _warn_once(self, message):
        """A RuntimeWarning, attributed to the caller outside this package, the first time this
        dispatcher has ``message`` to say."""
        if message not in self._warned:
            self._warned.add(message)
            frame, level = sys._getframe(), 1
            while frame is not None and frame.f_code.co_filename.startswith(PACKAGE_DIR):
                frame, level = frame.f_back, level + 1
            warnings.warn(message, RuntimeWarning, stacklevel=level)
