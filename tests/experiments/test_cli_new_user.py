"""The README's main command as a new user meets it: run from a directory with the default,
relative ``work_dir`` (configs/demo.yaml's ``runs/demo``), through the CLI in a subprocess."""
import json
import os
import shutil
import subprocess
import sys

from sgan.experiments.demo import CONFIG_FILE
from tests.experiments.test_demo import REDUCED

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_cli(args, cwd, **env):
    """``python -m sgan.cli ARGS`` in ``cwd``; (exit status, stdout, stderr)."""
    environment = {**os.environ, "PYTHONPATH": REPOSITORY, **env}
    done = subprocess.run([sys.executable, "-m", "sgan.cli", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout, done.stderr


def test_demo_with_the_default_relative_work_dir(tmp_path):
    os.makedirs(tmp_path / "configs")
    for name in ("demo.yaml", "voc_sgan.yaml"):   # demo.yaml inherits voc_sgan.yaml (_base_)
        shutil.copy(os.path.join(os.path.dirname(CONFIG_FILE), name), tmp_path / "configs" / name)
    status, out, err = run_cli(["demo", "configs/demo.yaml", *REDUCED], tmp_path, SGAN_NO_PROGRESS="1")
    assert status == 0, err[-3000:]
    assert "Table II style" in out and "Seeds on the 12 training images" in out
    results = tmp_path / "runs" / "demo" / "metrics" / "demo.json"
    with open(results) as stream:
        assert set(json.load(stream)["segmentation_miou"]) == {"Baseline", "SGAN-SAL-SEED", "SGAN-SEED", "SGAN"}
    assert not (tmp_path / "runs" / "demo" / "runs").exists()   # no path joined with the work dir twice
