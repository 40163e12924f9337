"""How the steps compute (sgan.models.compute): ``precision``, ``memory_format`` and ``checkpointing``
as settings of the training steps and of the steps that run a trained network, through the CLI on
tiny generated data."""
import doctest

import numpy as np
import pytest
import torch
from PIL import Image

from sgan import cli
from sgan.data.voc import VOCPaths, read_id_list
from sgan.models import compute
from sgan.utils.record import EXECUTION_KEYS
from tests.pipeline.test_stage1_pipeline import make_tiny_voc, tiny_config, write_yaml
from tests.pipeline.test_stage2_pipeline import dataset, stage2_config  # noqa: F401  (fixture)

STAGE1 = ["labels", "train-cam", "initial-seeds", "train-sgan", "seeds"]


@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory):
    return make_tiny_voc(tmp_path_factory.mktemp("voc"))


def run_stage1(root, tiny_voc, *overrides, steps=STAGE1):
    """``sgan run`` of the stage-1 steps in ``root``/work with key=value ``overrides``; returns the work dir."""
    config = write_yaml(root / "exp.yaml", tiny_config(*tiny_voc, root / "work"))
    assert cli.main(["run", config, f"steps={steps}", *overrides]) == 0
    return root / "work"


def weights(work, name):
    return torch.load(work / "ckpt" / f"{name}.pt", weights_only=True)


def seed_maps(work, folder, tiny_voc):
    paths = VOCPaths(tiny_voc[0])
    ids = read_id_list(paths.resolve("ImageSets/Segmentation/train_aug.txt"))
    return np.stack([np.asarray(Image.open(work / folder / f"{i}.png")) for i in ids])


@pytest.fixture(scope="module")
def fp32_run(tiny_voc, tmp_path_factory):
    return run_stage1(tmp_path_factory.mktemp("fp32"), tiny_voc)


def test_the_module_example_runs():
    tests = doctest.DocTestFinder().find(compute, "sgan.models.compute")
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    assert sum(len(t.examples) for t in tests) >= 3 and runner.failures == 0


def test_checkpointing_writes_the_same_checkpoints_to_the_last_bit(fp32_run, tiny_voc, tmp_path):
    """Recomputing the backbone's blocks changes no gradient, so every trained weight is bit-identical;
    that is why checkpointing is an execution key (a run that toggles it finds its outputs up to date)."""
    assert "checkpointing" in EXECUTION_KEYS
    work = run_stage1(tmp_path, tiny_voc, "train_cam.checkpointing=true", "train_sgan.checkpointing=true")
    for name in ("cam", "sgan"):
        ours, plain = weights(work, name), weights(fp32_run, name)
        assert ours["model"].keys() == plain["model"].keys()
        for key, value in plain["model"].items():
            assert torch.equal(ours["model"][key], value), (name, key)
        assert ours["history"] == plain["history"], name


def test_bf16_trains_in_float32_weights_and_its_seeds_agree_with_float32(fp32_run, tiny_voc, tmp_path):
    """Every stage-1 step in bf16: finite losses, float32 weights and gamma, the setting in the record;
    the seeds step in bf16 from the float32 network labels most pixels as the float32 seeds step does."""
    steps = [f"{s}.precision=bf16" for s in ("train_cam", "initial_seeds", "train_sgan", "seeds")]
    work = run_stage1(tmp_path, tiny_voc, *steps)
    for name in ("cam", "sgan"):
        state = weights(work, name)
        assert all(value.dtype == torch.float32 for value in state["model"].values() if value.is_floating_point())
        assert all(np.isfinite(v) for h in state["history"] for v in h.values())
        assert state["record"]["settings"][f"train_{name}"]["precision"] == "bf16"
    assert weights(work, "sgan")["model"]["attention.gamma"].dtype == torch.float32
    # the inference part alone: the fp32 run's network, seeds in bf16 into another folder
    config = write_yaml(tmp_path / "seeds.yaml", tiny_config(*tiny_voc, fp32_run))
    assert cli.main(["seeds", config, "seeds.precision=bf16", "seeds.out_dir=seeds_bf16"]) == 0
    ours, plain = seed_maps(fp32_run, "seeds_bf16", tiny_voc), seed_maps(fp32_run, "seeds", tiny_voc)
    # bf16 keeps 8 bits of mantissa: only pixels within ~1% of a threshold can change side
    assert (ours == plain).mean() >= 0.95


def test_channels_last_trains_as_contiguous_within_float_rounding(fp32_run, tiny_voc, tmp_path):
    """channels_last changes only the order of the convolutions' sums: after the same iterations the
    weights agree with the contiguous run's to float32 rounding (1e-4 relative; a 1% error fails)."""
    work = run_stage1(tmp_path, tiny_voc, "train_cam.memory_format=channels_last",
                      steps=["labels", "train-cam"])
    ours, plain = weights(work, "cam")["model"], weights(fp32_run, "cam")["model"]
    for key, value in plain.items():
        scale = value.abs().max().clamp_min(1e-12)
        assert (ours[key] - value).abs().max() / scale < 1e-4, key
    assert weights(work, "cam")["record"]["settings"]["train_cam"]["memory_format"] == "channels_last"


def test_a_changed_precision_retrains_and_names_the_change(tiny_voc, tmp_path):
    work = run_stage1(tmp_path, tiny_voc, steps=["labels", "train-cam"])
    config = str(tmp_path / "exp.yaml")
    written = (work / "ckpt" / "cam.pt").stat().st_mtime_ns
    assert cli.main(["train-cam", config]) == 0   # the same settings: up to date, not rewritten
    assert (work / "ckpt" / "cam.pt").stat().st_mtime_ns == written
    assert cli.main(["train-cam", config, "train_cam.precision=bf16"]) == 0
    assert weights(work, "cam")["record"]["settings"]["train_cam"]["precision"] == "bf16"
    assert "train_cam.precision was 'fp32', now 'bf16'" in (work / "sgan.log").read_text()


@pytest.mark.parametrize("key", ["train_cam.precision", "seeds.precision"])
def test_fp16_on_the_cpu_is_one_line_naming_the_key(fp32_run, tiny_voc, tmp_path, capsys, key):
    step = key.split(".")[0].replace("_", "-")
    config = write_yaml(tmp_path / "fp16.yaml", tiny_config(*tiny_voc, fp32_run))
    capsys.readouterr()
    assert cli.main([step, config, f"{key}=fp16", "seeds.out_dir=seeds_fp16"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1] == (f"sgan {step}: error: {key}: fp16 (with loss scaling) needs a CUDA device, got device "
                         "cpu; use bf16 on the CPU")


def test_an_unknown_precision_is_refused_by_the_config(tiny_voc, tmp_path, capsys):
    config = write_yaml(tmp_path / "bad.yaml", tiny_config(*tiny_voc, tmp_path / "work"))
    capsys.readouterr()
    assert cli.main(["train-cam", config, "train_cam.precision=half"]) == 2
    assert "train_cam.precision: expected one of" in capsys.readouterr().err


def test_stage2_in_bf16_channels_last_with_checkpointing(dataset, tmp_path):  # noqa: F811
    """train-seg (seed and boundary losses, CRF) and infer with every compute setting on: finite
    losses, predictions for every image, the CRF fed float32 probabilities."""
    work = tmp_path / "work"
    settings = {"precision": "bf16", "memory_format": "channels_last"}
    config = write_yaml(tmp_path / "stage2.yaml", stage2_config(
        dataset, work, train_seg={**settings, "checkpointing": True}, infer=settings))
    assert cli.main(["run", config, "steps=[train-seg, infer]"]) == 0
    state = torch.load(work / "ckpt" / "deeplab.pt", weights_only=True)
    assert all(np.isfinite(v) for h in state["history"] for k, v in h.items() if k != "crf_wait_ms")
    assert "boundary" in state["history"][-1]
    predictions = sorted(p.name for p in (work / "pred").glob("*.png"))
    assert predictions == sorted(f"{i}.png" for i in dataset["val_ids"])
