"""Loading a checkpoint or a weights file never runs code from it, and a bad file is one line naming it."""
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from sgan import cli
from sgan.models.deeplab import read_state_dict
from sgan.pipeline import load_config
from sgan.train.loop import CHECKPOINT_FORMAT, _checkpoint, load_checkpoint
from sgan.utils.io import save_torch
from tests.pipeline.test_stage1_pipeline import make_tiny_voc, tiny_config, write_yaml


def write_marker(path):
    """What the planted object calls when it is unpickled: leaves a file behind."""
    with open(path, "w") as stream:
        stream.write("planted code ran")
    return 0


class Planted:
    """An object whose unpickling calls write_marker(marker)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return write_marker, (self.marker,)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """labels + train-cam of a tiny run; returns (config path, work dir)."""
    root = tmp_path_factory.mktemp("safety")
    voc, saliency = make_tiny_voc(root / "voc")
    config = write_yaml(root / "exp.yaml", tiny_config(voc, saliency, root / "work"))
    assert cli.main(["run", config, "steps=[labels, train-cam]"]) == 0
    return config, root / "work"


def planted_copy(source, target, marker):
    """``source`` (a real checkpoint) written to ``target`` with a Planted object in its history."""
    state = torch.load(source, weights_only=True)
    state["history"].append({"iteration": 0, "lr": Planted(marker)})
    torch.save(state, target)


def test_a_planted_object_is_refused_without_running(tiny_run, tmp_path):
    _, work = tiny_run
    marker, path = tmp_path / "marker", tmp_path / "planted.pt"
    planted_copy(work / "ckpt" / "cam.pt", path, marker)
    with pytest.raises(ValueError) as error:
        load_checkpoint(str(path))
    message = str(error.value)
    assert message.startswith(f"checkpoint: {path} holds a pickled object (tests.models.test_checkpoint_safety.")
    assert "could run code" in message and "\n" not in message
    assert not marker.exists()


def test_truncated_foreign_and_text_files_give_one_line_naming_the_file(tiny_run, tmp_path):
    _, work = tiny_run
    data = (work / "ckpt" / "cam.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[:len(data) // 2])
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    plain_pickle = tmp_path / "plain.pkl"
    plain_pickle.write_bytes(pickle.dumps({"format": CHECKPOINT_FORMAT, "iteration": 3}))
    state_dict = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.zeros(2)}, state_dict)
    for path, expected in ((truncated, "cannot be read as a torch file"), (text, "cannot be read as a torch file"),
                           (plain_pickle, "cannot be read as a torch file"), (state_dict, "is not an sgan checkpoint")):
        with pytest.raises(ValueError) as error:
            load_checkpoint(str(path))
        message = str(error.value)
        assert message.startswith(f"checkpoint: {path} {expected}"), message
        assert "\n" not in message, message


def test_checkpoints_hold_plain_values_only(tmp_path):
    """numpy scalars (e.g. a loss term computed with numpy) are stored as Python numbers, so the
    checkpoint loads with weights_only=True; an object of another type is an error when writing."""
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    cfg = load_config(base={"work_dir": str(tmp_path)})
    history = [{"iteration": np.int64(2), "lr": 0.1, "cls": np.float32(0.5)}]
    record = {"settings": {"train_cam": {"lr": np.float64(0.1)}}, "inputs": {"images": "files:ab"}}
    state = _checkpoint("train-cam", model, {"kind": "cam", "size": (np.int64(3), 4)}, 2, history, cfg,
                        record, optimizer)
    save_torch(tmp_path / "ckpt.last.pt", state)
    loaded = load_checkpoint(str(tmp_path / "ckpt.last.pt"))
    assert loaded["history"] == [{"iteration": 2, "lr": 0.1, "cls": 0.5}]
    assert type(loaded["history"][0]["cls"]) is float and type(loaded["history"][0]["iteration"]) is int
    assert loaded["model_info"] == {"kind": "cam", "size": (3, 4)}
    assert loaded["config"] == cfg.to_dict() and "momentum_buffer" in loaded["optimizer"]["state"][0]
    assert loaded["record"] == record and type(loaded["record"]["settings"]["train_cam"]["lr"]) is float
    with pytest.raises(TypeError, match=r"checkpoint history\[0\]\.cls: object"):
        _checkpoint("train-cam", model, {}, 2, [{"cls": object()}], cfg, {})


def test_weights_files_are_read_without_running_code(tmp_path):
    marker, path = tmp_path / "marker", tmp_path / "vgg16.pth"
    torch.save({"features.0.weight": torch.zeros(4, 3, 3, 3), "extra": Planted(marker)}, path)
    with pytest.raises(ValueError, match=rf"^model.weights: {path} holds a pickled object .*could run code$"):
        read_state_dict(str(path), "model.weights")
    assert not marker.exists()


def test_initial_seeds_refuses_a_planted_checkpoint(tiny_run, tmp_path, capsys):
    config, work = tiny_run
    marker = tmp_path / "marker"
    planted_copy(work / "ckpt" / "cam.pt", work / "ckpt" / "planted.pt", marker)
    capsys.readouterr()
    code = cli.main(["initial-seeds", config, "initial_seeds.checkpoint=ckpt/planted.pt",
                     f"initial_seeds.out_dir={tmp_path / 'seeds0'}"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert error[-1].startswith(f"sgan initial-seeds: error: checkpoint: {work / 'ckpt' / 'planted.pt'} holds a "
                                "pickled object"), error
    assert not marker.exists()
    assert not (tmp_path / "seeds0").exists()
