"""Helpers shared by the operator tests: backends to test, input makers, the error criterion."""
import contextlib

import torch

from sgan.ops.attention import fused_backends as attention_backends


def device_under_test():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fused_backends():
    """Fused attention backends usable on this machine for device_under_test() tensors."""
    return attention_backends(device_under_test().type)


def relative_error(value, reference):
    """||value - reference|| / ||reference|| in float64 (0 when both are zero)."""
    value, reference = value.double(), reference.double()
    scale = reference.norm()
    diff = (value - reference).norm()
    return float(diff / scale) if scale > 0 else float(diff)


ROUNDING_FLOOR = {torch.float64: 1e-13, torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def assert_within_reference_error(name, fused, reference_same_dtype, reference_float64, dtype,
                                  reference_error_scale=1.0, condition=None):
    """docs/design.md §7: the fused error against float64 is at most 2x the reference's own + a floor.

    In float64 the reference *is* the definition, so its own error is estimated instead from the
    float32 reference's error rescaled to float64 rounding (the caller passes the float32 reference
    as ``reference_same_dtype`` and ``reference_error_scale`` = 2**-29). In every dtype the
    reference's error of a scalar passed with its ``condition`` is taken as at least the dtype's
    unit roundoff times that condition
    (sum |terms| / |sum| for a cancelling sum such as grad_gamma): what any evaluation of the sum in
    that dtype can be off by. One measured error of such a sum is a draw well below that bound (at
    condition 1.3e6 in float32 the reference drew 3.3e-4 against 2**-24 * 1.3e6 = 0.078), so twice
    that draw alone is no criterion.
    """
    fused_error = relative_error(fused, reference_float64)
    reference_error = relative_error(reference_same_dtype, reference_float64) * reference_error_scale
    if condition is not None:
        reference_error = max(reference_error, torch.finfo(dtype).eps / 2 * condition)
    bound = 2.0 * reference_error + ROUNDING_FLOOR[dtype]
    assert fused_error <= bound, (f"{name}: fused error {fused_error:.3e} > bound {bound:.3e} "
                                  f"(reference's own error {reference_error:.3e}, dtype {dtype})")


@contextlib.contextmanager
def triton_compilations():
    """A list that fills, inside the block, with one entry per Triton kernel variant compiled (a miss
    of Triton's in-memory kernel cache: a new specialisation), through its post-compile hook."""
    import triton
    compiled, previous = [], triton.knobs.runtime.jit_post_compile_hook
    triton.knobs.runtime.jit_post_compile_hook = lambda **info: compiled.append(info["repr"])
    try:
        yield compiled
    finally:
        triton.knobs.runtime.jit_post_compile_hook = previous


def assert_never_synchronises(step):
    """Run ``step()`` (a CUDA forward + backward) once to compile and warm up, then again with
    ``torch.cuda.set_sync_debug_mode("error")``: any operation that waits for the GPU raises."""
    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
