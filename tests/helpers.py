"""Helpers shared by the operator tests: backends to test, input makers, the error criterion."""
import os

import torch

from sgan import _ext


def device_under_test():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fused_backends():
    """Fused attention backends usable on this machine for device_under_test() tensors."""
    device = device_under_test().type
    found = []
    if device == "cpu" and _ext.available("cpu"):
        found.append("cpp")
    if device == "cuda" and _ext.available("cuda"):
        found.append("cuda")
    try:
        import triton  # noqa: F401
        if device == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
            found.append("triton")
    except ImportError:
        pass
    return found


def relative_error(value, reference):
    """||value - reference|| / ||reference|| in float64 (0 when both are zero)."""
    value, reference = value.double(), reference.double()
    scale = reference.norm()
    diff = (value - reference).norm()
    return float(diff / scale) if scale > 0 else float(diff)


ROUNDING_FLOOR = {torch.float64: 1e-13, torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def assert_within_reference_error(name, fused, reference_same_dtype, reference_float64, dtype):
    """DESIGN.md §7: the fused error against float64 is at most 2x the reference's own + a floor."""
    fused_error = relative_error(fused, reference_float64)
    reference_error = relative_error(reference_same_dtype, reference_float64)
    bound = 2.0 * reference_error + ROUNDING_FLOOR[dtype]
    assert fused_error <= bound, (f"{name}: fused error {fused_error:.3e} > bound {bound:.3e} "
                                  f"(reference's own error {reference_error:.3e}, dtype {dtype})")
