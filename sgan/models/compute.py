"""How the networks compute: the ``precision`` and ``memory_format`` settings of the training steps
(train_cam, train_sgan, train_seg, pretrain) and of the steps that run a trained network
(initial_seeds, seeds, infer), and the training steps' ``checkpointing``.

``precision``:
    ``fp32`` (default): no autocast, every result as before these settings existed.
    ``bf16``: the network's forward pass (and the losses) under ``torch.autocast`` to bfloat16, on CPU
    or CUDA: convolutions and matrix products read bfloat16 copies and accumulate in float32.
    ``fp16``: the same with float16 and dynamic loss scaling (``torch.amp.GradScaler``); CUDA only.
What stays float32 under bf16/fp16: the parameters, their gradients, the optimiser state and the
attention's ``gamma`` (autocast casts copies, never the parameters); inside the attention operator
the GEMM accumulation, the row-minimum comparison and the denominators (every backend computes them
in float32 and returns the input dtype); the softmax, log and sums of the losses (the fused kernels
accumulate in float32, the references upcast); and everything after the network: CAM scores are
cast to float32 before the seeds are thresholded, DeepLab's probabilities before the CRF and the
argmax, and evaluation reads label maps.

``memory_format``: ``contiguous`` (NCHW, default) or ``channels_last`` (NHWC) for the network's
parameters, so that its convolutions read and write channels-last activations (oneDNN on CPU and
cuDNN pick the layout of the weights). The attention operator takes either layout.

``checkpointing`` (train_cam, train_sgan, train_seg): the networks' conv blocks (and DeepLab's ASPP
branches) keep only their inputs and run again in the backward pass (sgan.models.checkpoint): less
activation memory for more time, the same gradients to the last bit in float32 and float64, so the
same checkpoint (in bf16/fp16 the backbone's weight gradients are float32 sums over strips of rows,
within one unit in the last place of the float64 gradient: sgan.models.checkpoint). On a
CPU the training loop also calls :func:`return_freed_memory`: without it glibc keeps the freed
activations of the recomputed blocks in its heap and checkpointing lowers the peak RSS little, or
raises it (docs/larger-inputs.md has the measurements).

Example::

    >>> import torch
    >>> from sgan.models.compute import apply_memory_format, autocast
    >>> net = apply_memory_format(torch.nn.Conv2d(3, 4, 3), "channels_last")
    >>> with autocast(torch.device("cpu"), "bf16"):
    ...     y = net(torch.randn(1, 3, 8, 8))
    >>> y.dtype, net.weight.dtype, net.weight.is_contiguous(memory_format=torch.channels_last)
    (torch.bfloat16, torch.float32, True)
"""
import contextlib
import ctypes

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}   # name -> autocast dtype
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
# the settings' one home: the sections of the steps that run a network spread these in
COMPUTE_DEFAULTS = {"precision": "fp32", "memory_format": "contiguous"}
COMPUTE_CHOICES = {"precision": tuple(PRECISIONS), "memory_format": tuple(MEMORY_FORMATS)}
TRAINING_COMPUTE_DEFAULTS = {**COMPUTE_DEFAULTS, "checkpointing": False}


def check_precision(precision, device, key="precision"):
    """ValueError naming ``key`` unless ``precision`` (a name of PRECISIONS) can run on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"{key}: expected one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise ValueError(f"{key}: fp16 (with loss scaling) needs a CUDA device, got device "
                         f"{torch.device(device).type}; use bf16 on the CPU")


def autocast(device, precision):
    """The context in which a network runs at ``precision``: ``torch.autocast`` to its dtype, or no
    context for fp32 (so that an fp32 run executes exactly the code it did without the setting)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def apply_memory_format(module, memory_format):
    """``module`` with its 4-D parameters and buffers in ``memory_format`` (a MEMORY_FORMATS name);
    ``contiguous`` leaves it untouched. Returns the module."""
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format: expected one of {list(MEMORY_FORMATS)}, got {memory_format!r}")
    if memory_format != "contiguous":
        module.to(memory_format=MEMORY_FORMATS[memory_format])
    return module


def grad_scaler(device, precision):
    """A ``torch.amp.GradScaler`` for fp16 on CUDA, else None (bf16 and fp32 need no loss scaling)."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)


# glibc's mallopt() parameter for the size from which an allocation gets its own mmap (malloc.h)
_M_MMAP_THRESHOLD = -3
RETURNED_BLOCK_BYTES = 1 << 20


def return_freed_memory(device):
    """On a CPU under glibc, give every allocation of RETURNED_BLOCK_BYTES or more its own mmap, so
    that a freed activation goes back to the system at once; returns whether the setting was made
    (False on CUDA, or where the C library has no ``mallopt``).

    glibc otherwise raises that threshold up to 32 MiB as blocks are freed and keeps freed blocks
    below it in its heap: the activations that checkpointing frees stay in the process's resident
    set. The setting is process-wide and changes no result, only where memory comes from.
    """
    if torch.device(device).type != "cpu":
        return False
    try:
        mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    except (OSError, TypeError):  # no C library to load by that name (not a POSIX system)
        return False
    return mallopt is not None and mallopt(_M_MMAP_THRESHOLD, RETURNED_BLOCK_BYTES) == 1
