"""Build script: the pure-Python package plus the C++ (and optionally CUDA) extension ``sgan._C``.

torch is imported here, so build without isolation: ``pip install --no-build-isolation -e .``.

Environment flags (see README, "Build flags"):
  SGAN_NO_EXTENSION=1   build no extension at all (the package still imports; fused C++ paths off)
  SGAN_CUDA=auto|0|1    CUDA part: auto = when torch is a CUDA build and a CUDA toolkit is found,
                        0 = never, 1 = always (fails loudly if it cannot)
  TORCH_CUDA_ARCH_LIST  GPU architectures, e.g. "9.0" or "8.0;9.0" (torch's own variable)
  MAX_JOBS              parallel compile jobs for ninja (torch's own variable)
"""
import glob
import os

from setuptools import setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name, default):
    return os.environ.get(name, default).strip().lower()


def _build_cuda():
    mode = _flag("SGAN_CUDA", "auto")
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"SGAN_CUDA must be one of auto, 0, 1; got {mode!r}")
    have_toolkit = CUDA_HOME is not None
    have_cuda_torch = torch.version.cuda is not None
    if mode == "0":
        return False
    if mode == "1":
        if not (have_toolkit and have_cuda_torch):
            raise SystemExit(
                "SGAN_CUDA=1 but the CUDA build is impossible: "
                f"CUDA toolkit found: {have_toolkit} (CUDA_HOME={CUDA_HOME}), "
                f"torch CUDA version: {torch.version.cuda}"
            )
        return True
    return have_toolkit and have_cuda_torch


def _extensions():
    if _flag("SGAN_NO_EXTENSION", "0") == "1":
        return []
    rel = lambda paths: sorted(os.path.relpath(p, ROOT) for p in paths)  # noqa: E731
    sources = ["csrc/binding.cpp"] + rel(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
    cxx_flags = ["-O3"]
    if _build_cuda():
        sources += rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
        return [
            CUDAExtension(
                "sgan._C",
                sources,
                define_macros=[("SGAN_WITH_CUDA", "1")],
                extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
            )
        ]
    return [CppExtension("sgan._C", sources, extra_compile_args={"cxx": cxx_flags})]


setup(
    name="sgan",
    version="0.1.0",
    description="Saliency Guided Self-attention Network (Yao & Gong) with fused kernels",
    packages=["sgan", "sgan.kernels"] + [
        "sgan." + os.path.relpath(d, os.path.join(ROOT, "sgan")).replace(os.sep, ".")
        for d, _, files in os.walk(os.path.join(ROOT, "sgan"))
        if "__init__.py" in files and d != os.path.join(ROOT, "sgan")
    ],
    package_dir={"sgan": "sgan", "sgan.kernels": "kernels"},
    python_requires=">=3.10",
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["sgan=sgan.cli:main"]},
    zip_safe=False,
)
