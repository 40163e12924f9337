"""Progress output read in a log: no carriage-return bars when stderr is not a terminal."""
import importlib
import io
import logging
import os
import subprocess
import sys

import pytest

from sgan.utils.logging import setup_logging
from tests.pipeline.test_stage1_pipeline import make_tiny_voc, tiny_config, write_yaml

progress_module = importlib.import_module("sgan.utils.progress")  # sgan.utils.progress is also the function
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_cli(tmp_path, **env):
    """`python -m sgan.cli run ... steps=[labels,train-cam]` (20 iterations) with its output to a
    pipe; returns the text it wrote to stdout and stderr."""
    voc, saliency = make_tiny_voc(tmp_path / "voc", num_train=4)
    config = tiny_config(voc, saliency, tmp_path / "work", iterations=20)
    path = write_yaml(tmp_path / "exp.yaml", config)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SGAN_")}
    result = subprocess.run([sys.executable, "-m", "sgan.cli", "run", path, "steps=[labels,train-cam]"],
                            cwd=REPOSITORY, env={**environment, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=300)
    output = result.stdout.decode()
    assert result.returncode == 0, output
    return output


def test_piped_output_has_log_lines_not_bars(tmp_path):
    output = _run_cli(tmp_path)
    assert "\r" not in output
    lines = [line for line in output.splitlines() if "sgan.progress: train-cam:" in line]
    # one line at the end, plus at most one per 10 s (the default interval) of a run that takes a few
    assert 1 <= len(lines) <= 3, output
    assert "train-cam: 20/20 [" in lines[-1] and "cls=" in lines[-1]
    assert len(output.splitlines()) < 40


def test_no_progress_keeps_its_meaning(tmp_path):
    output = _run_cli(tmp_path, SGAN_NO_PROGRESS="1")
    assert "\r" not in output and "sgan.progress" not in output
    assert "train-cam: it 20/20" in output  # the training log itself is still there


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def piped_stderr_and_log(monkeypatch):
    """stderr replaced by a pipe-like buffer, the sgan logger writing to it; yields the buffer."""
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    setup_logging(None)
    yield buffer
    for handler in list(logging.getLogger("sgan").handlers):
        logging.getLogger("sgan").removeHandler(handler)


def test_a_line_every_interval_and_at_the_end(monkeypatch, piped_stderr_and_log):
    clock = FakeClock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    monkeypatch.setenv("SGAN_PROGRESS_INTERVAL", "3")
    for _ in progress_module.progress(range(100), desc="seeds", unit="img"):
        clock.now += 0.25  # 25 s in all: lines after 3, 6, ... 24 s, then the last one
    lines = piped_stderr_and_log.getvalue().splitlines()
    assert len(lines) == 9 and all("sgan.progress: seeds: " in line for line in lines)
    assert "seeds: 12/100 [" in lines[0] and "seeds: 100/100 [" in lines[-1] and "4.00img/s" in lines[-1]


@pytest.mark.parametrize("value", ["0", "-5", "soon", "nan"])
def test_bad_interval_is_a_one_line_error(monkeypatch, piped_stderr_and_log, value):
    monkeypatch.setenv("SGAN_PROGRESS_INTERVAL", value)
    with pytest.raises(ValueError, match=f"SGAN_PROGRESS_INTERVAL: expected a positive number of seconds, "
                                         f"got '{value}'"):
        progress_module.progress(range(3))
