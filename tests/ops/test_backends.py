"""A fused backend that is there but fails to load never vanishes silently: `auto` warns with the
import error, and under SGAN_REQUIRE_BACKENDS it is an error (at dispatch and at the test suite's start)."""
import importlib.machinery
import os
import shutil
import subprocess
import sys

import pytest
import torch

from sgan import _ext
from sgan.ops import dispatch, softmax

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROBE = """
import warnings
import torch
try:
    import sgan._C
except ImportError as error:
    print("IMPORT ERROR", error)
from sgan.ops import softmax
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        print("AUTO", softmax.resolve_backend("auto", torch.zeros(1, 21, 2, 2)))
    except RuntimeError as error:
        print("RAISED", error)
for warning in caught:
    print("WARNING", warning.message)
"""


@pytest.fixture(scope="module")
def broken_extension(tmp_path_factory):
    """A copy of the package (and of the test suite's conftest) whose sgan._C is not a loadable
    library, as after building against another torch; returns the folder to put on PYTHONPATH."""
    root = tmp_path_factory.mktemp("broken")
    shutil.copytree(os.path.join(REPOSITORY, "sgan"), root / "sgan",
                    ignore=shutil.ignore_patterns("__pycache__", "_C.*"))
    (root / "sgan" / ("_C" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(b"not a shared library")
    (root / "tests").mkdir()
    for name in ("__init__.py", "conftest.py"):
        shutil.copy(os.path.join(REPOSITORY, "tests", name), root / "tests" / name)
    (root / "tests" / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    return root


def _run(args, root, **env):
    environment = {k: v for k, v in os.environ.items() if k != dispatch.REQUIRE_VARIABLE}
    result = subprocess.run([sys.executable, *args], cwd=root, env={**environment, "PYTHONPATH": str(root), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    return result.returncode, result.stdout


def test_auto_warns_with_the_extensions_import_error(broken_extension):
    code, output = _run(["-c", PROBE], broken_extension)
    assert code == 0, output
    import_error = next(line for line in output.splitlines() if line.startswith("IMPORT ERROR"))
    warning = next(line for line in output.splitlines() if line.startswith("WARNING"))
    assert "AUTO reference" in output
    assert "'cpp' is unavailable: sgan._C could not be imported" in warning
    assert import_error[len("IMPORT ERROR "):] in warning


def test_required_broken_extension_fails_at_dispatch_and_stops_the_test_suite(broken_extension):
    code, output = _run(["-c", PROBE], broken_extension, SGAN_REQUIRE_BACKENDS="cpp")
    assert code == 0, output
    assert ("RAISED SGAN_REQUIRE_BACKENDS='cpp' but sgan.losses backend 'cpp' is unavailable: sgan._C could "
            "not be imported (ImportError: ") in output
    code, output = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], broken_extension,
                        SGAN_REQUIRE_BACKENDS="cpp,triton")
    assert code != 0 and "1 passed" not in output, output
    assert "ERROR: SGAN_REQUIRE_BACKENDS='cpp,triton' but saliency_attention backend 'cpp' is unavailable" in output
    code, output = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], broken_extension)
    assert code == 0 and "1 passed" in output, output  # not required: the run goes on (its tests skip)


@pytest.fixture
def broken_triton_losses(monkeypatch):
    """sgan.kernels.losses fails to import (as when a triton API it uses has moved)."""
    monkeypatch.setitem(sys.modules, "sgan.kernels.losses", None)
    monkeypatch.setattr(dispatch, "_triton_import_problems", {})
    monkeypatch.setattr(softmax._DISPATCH, "_warned", set())
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv(dispatch.REQUIRE_VARIABLE, raising=False)


@pytest.mark.skipif(not _ext.available("cpu"), reason="compares against the C++ backend")
def test_broken_triton_kernels_warn_and_fail_when_required(broken_triton_losses, monkeypatch):
    with pytest.warns(RuntimeWarning, match=r"sgan.losses: backend 'triton' is unavailable: "
                                            r"sgan.kernels.losses could not be imported \(ModuleNotFoundError"):
        assert softmax.fused_backends("cpu") == ["cpp"]
    logits = torch.zeros(1, 21, 2, 2)
    assert softmax.resolve_backend("auto", logits) == "cpp"  # auto does not use triton for CPU tensors
    monkeypatch.setenv(dispatch.REQUIRE_VARIABLE, "cpp,triton")
    expected = ("SGAN_REQUIRE_BACKENDS='cpp,triton' but sgan.losses backend 'triton' is unavailable: "
                "sgan.kernels.losses could not be imported")
    with pytest.raises(RuntimeError, match=expected):
        softmax.resolve_backend("auto", logits)
    with pytest.raises(RuntimeError, match=expected):
        dispatch.check_required_backends()
    assert softmax.resolve_backend("reference", logits) == "reference"  # asked for by name: no check


@pytest.mark.parametrize("value", ["cpp,triton", " cpp , cuda ", ""])
def test_required_backends_variable(monkeypatch, value):
    monkeypatch.setenv(dispatch.REQUIRE_VARIABLE, value)
    assert dispatch.required_backends() == [name.strip() for name in value.split(",") if name.strip()]


def test_required_backends_variable_with_an_unknown_name(monkeypatch):
    monkeypatch.setenv(dispatch.REQUIRE_VARIABLE, "cpp,trition")
    with pytest.raises(ValueError, match=r"SGAN_REQUIRE_BACKENDS: expected comma-separated names from "
                                         r"\('cpp', 'cuda', 'triton'\), got 'cpp,trition'"):
        softmax.resolve_backend("auto", torch.zeros(1, 21, 2, 2))
