"""pytest-benchmark suite of the saliency-guided attention (forward + backward), every backend.

    python -m pytest bench/test_bench_attention.py [--benchmark-only]
    SGAN_BENCH_SHAPES=41,81 SGAN_BENCH_BATCH=2 python -m pytest bench/test_bench_attention.py

Defaults are small (S = 21 and 33, C = 128, Ck = 64) so the suite runs in seconds; the environment
variables SGAN_BENCH_SHAPES, SGAN_BENCH_BATCH, SGAN_BENCH_CHANNELS select the canonical sizes.
Outside tests/, so CI does not run it.
"""
import os

import pytest
import torch

from bench.attention import available_backends, forward_backward, forward_only, make_inputs
from bench.harness import synchronize

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SHAPES = [int(s) for s in os.environ.get("SGAN_BENCH_SHAPES", "21,33").split(",")]
BATCH = int(os.environ.get("SGAN_BENCH_BATCH", "2"))
CHANNELS = int(os.environ.get("SGAN_BENCH_CHANNELS", "128"))
BACKENDS, _ = available_backends(DEVICE)


# pass name -> f(backend, preset, leaves, mask, gamma, grad_out)
PASSES = {"fwd+bwd": forward_backward,
          "fwd": lambda backend, preset, leaves, mask, gamma, _: forward_only(backend, preset, leaves, mask, gamma)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("preset", ["official", "paper"])
@pytest.mark.parametrize("size", SHAPES)
@pytest.mark.parametrize("name", list(PASSES))
def test_attention(benchmark, name, backend, preset, size):
    leaves, mask, gamma, grad_out = make_inputs(BATCH, CHANNELS, CHANNELS // 2, size, torch.float32, DEVICE, preset)
    benchmark.group = f"{name} S={size} {preset}"

    def step():
        out = PASSES[name](backend, preset, leaves, mask, gamma, grad_out)
        synchronize(DEVICE)
        return out

    out = benchmark(step)
    assert torch.isfinite(out).all()
    if name == "fwd+bwd":
        assert torch.isfinite(leaves[0].grad).all()
