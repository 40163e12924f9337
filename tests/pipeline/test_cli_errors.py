"""The command line with user mistakes and interruptions: one line, no traceback, the right exit status."""
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from sgan import cli
from sgan.models.sgan_net import CAMNet
from tests.pipeline.test_stage1_pipeline import make_tiny_voc, tiny_config, write_yaml

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A tiny experiment whose labels step has run; returns (config path, work dir)."""
    root = tmp_path_factory.mktemp("cli_errors")
    voc, saliency = make_tiny_voc(root / "voc")
    config = write_yaml(root / "exp.yaml", tiny_config(voc, saliency, root / "work"))
    assert cli.main(["labels", config]) == 0
    return config, root / "work"


def test_overrides_may_follow_the_flags(labelled, capsys):
    config, _ = labelled
    capsys.readouterr()
    assert cli.main(["config", config, "--overwrite", "seed=3", "train_cam.lr=0.5"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["overwrite"] is True and printed["seed"] == 3 and printed["train_cam"]["lr"] == 0.5
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["config", config, "--overwrite", "seed=3", "--bogus"])
    assert exit_info.value.code == 2
    assert "sgan config: error: unrecognized arguments: --bogus" in capsys.readouterr().err


def test_impossible_values_are_refused_before_training(labelled, capsys):
    """checkpoint_every=0 used to divide by zero after the first iteration (a traceback)."""
    config, work = labelled
    capsys.readouterr()
    code = cli.main(["train-cam", config, "train_cam.checkpoint_every=0", "train_cam.iterations=0"])
    error = capsys.readouterr().err
    assert code == 2
    assert "\n  train_cam.checkpoint_every: expected a number >= 1, got 0" in error
    assert "\n  train_cam.iterations: expected a number >= 1, got 0" in error
    assert "Traceback" not in error and not (work / "ckpt").exists()


def test_weights_of_another_width_say_which_width_fits(labelled, tmp_path, capsys):
    config, work = labelled
    options = tiny_config("voc", "saliency", "work")["model"]
    weights = tmp_path / "wide.pth"
    torch.save(CAMNet({**options, "width": 0.125, "classifier": "paper", "classifier_hidden": 256,
                       "dropout": 0.5}).state_dict(), weights)
    capsys.readouterr()
    code = cli.main(["train-cam", config, f"model.weights={weights}"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert error[-1] == ("sgan train-cam: error: weights: the file was made at another width: its first convolution "
                     "backbone.conv1_1.weight has 8 output channels, this network's 4 (model.width=0.0625); "
                     "model.width=0.125 gives 8")
    assert not (work / "ckpt").exists()


def test_ctrl_c_during_training_prints_the_resume_command(labelled):
    """SIGINT to the process group, as a terminal's Ctrl-C, while train-cam runs its iterations."""
    config, work = labelled
    arguments = ["train-cam", config, "train_cam.iterations=100000", "train_cam.log_every=1",
                 "train_cam.checkpoint_every=1", "num_workers=1", "--overwrite"]
    process = subprocess.Popen([sys.executable, "-m", "sgan.cli", *arguments], cwd=REPOSITORY, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                               env={**os.environ, "PYTHONPATH": REPOSITORY, "SGAN_NO_PROGRESS": "1"},
                               # a suite started in the background (nohup, `&`) ignores SIGINT, and
                               # children inherit that; a terminal's Ctrl-C reaches a default handler
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    try:
        for line in process.stderr:
            seen.append(line)
            if "train-cam: it 2/100000" in line:  # training runs, and the checkpoint of iteration 1 exists
                os.killpg(process.pid, signal.SIGINT)
                break
        rest = process.communicate(timeout=120)[1]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    error = "".join(seen) + rest
    assert process.returncode == 130, error
    kept = [a for a in arguments if a != "--overwrite"]
    assert error.strip().splitlines()[-1] == ("sgan: interrupted; continue with: sgan " + " ".join(kept)
                                              + " overwrite=false --resume"), error
    assert "Traceback" not in error, error
    assert (work / "ckpt" / "cam.last.pt").exists()
