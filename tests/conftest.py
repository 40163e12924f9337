"""Shared test setup: Triton's interpreter on machines without CUDA, NaN-filled empty tensors, the
fused backends found (in the header) and SGAN_REQUIRE_BACKENDS (a required backend that cannot be
loaded stops the run before any test, instead of its tests skipping)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before triton is imported

import pytest  # noqa: E402

from sgan.ops import attention, dispatch, softmax  # noqa: E402

OPERATORS = {"attention": attention, "losses": softmax}  # softmax: the seed NLL and boundary KL ops' dispatch


def pytest_configure(config):
    try:
        dispatch.check_required_backends()
    except (RuntimeError, ValueError) as error:
        raise pytest.UsageError(str(error)) from None


def pytest_report_header(config):
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    found = {device: {name: op.fused_backends(device) for name, op in OPERATORS.items()} for device in devices}
    return [f"sgan fused backends for {device} tensors: {found[device]}" for device in found] + [
        f"{dispatch.REQUIRE_VARIABLE}={os.environ.get(dispatch.REQUIRE_VARIABLE, '')!r}"]


@pytest.fixture(autouse=True)
def nan_filled_empty_tensors():
    """torch.empty (at::empty in C++ too) returns NaN-filled memory, so unwritten outputs show."""
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
    torch.utils.deterministic.fill_uninitialized_memory = previous[2]
