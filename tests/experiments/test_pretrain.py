"""sgan pretrain: the synthetic pretraining set, the folded torchvision weights, the CLI step."""
import os

import numpy as np
import pytest
import torch

from sgan.cli import main
from sgan.data.voc_classes import CLASS_NAMES
from sgan.experiments import pretrain_set, synthetic
from sgan.experiments.demo import CONFIG_FILE
from sgan.models.deeplab import DeepLabVGG16, load_pretrained
from sgan.models.vgg import PretrainClassifier, VGG16Stride8, convert_vgg16, folded_torchvision_state
from sgan.utils.io import load_torch

SMALL = ["model.width=0.0625", "pretrain.iterations=3", "pretrain.num_images=8", "pretrain.batch_size=4",
         "pretrain.image_size=[40,40]", "pretrain.checkpoint_every=2", "num_workers=0"]


def test_the_set_is_reproducible_and_shares_nothing_with_the_benchmark():
    first, labels = pretrain_set.draw(3, 17, (64, 64))
    again, labels_again = pretrain_set.draw(3, 17, (64, 64))
    other, _ = pretrain_set.draw(4, 17, (64, 64))
    assert first.dtype == np.uint8 and first.shape == (64, 64, 3)
    assert np.array_equal(first, again) and np.array_equal(labels, labels_again) and not np.array_equal(first, other)
    assert labels.shape == (24,) and 1 <= labels.sum() <= 2
    # disjoint from the benchmark: no VOC class, no shape, texture or background recipe of sgan.experiments.synthetic
    assert not set(pretrain_set.CLASSES) & set(CLASS_NAMES)
    benchmark = set(synthetic.BODY_SHAPES) | set(synthetic.PART_PATTERNS) | {"blotches"} | \
        set(synthetic.SCENE_BACKGROUNDS) | set(synthetic.GENERIC_BACKGROUNDS)
    assert not (set(pretrain_set.SHAPES) | set(pretrain_set.TEXTURES)) & benchmark
    # the colour families are centred between the benchmark's part hues (k/6)
    hues = [(k + 0.5) / 6 for k in range(len(pretrain_set.HUE_FAMILIES))]
    assert all(abs(h * 6 - round(h * 6)) == 0.5 for h in hues)
    counts = sum(pretrain_set.draw(0, i, (48, 48))[1] for i in range(200))
    assert (counts > 0).all()   # every class is drawn


def test_folding_gives_plain_vgg16_weights_with_the_same_features():
    torch.manual_seed(0)
    network = PretrainClassifier(16, width=0.125)
    images = torch.randn(4, 3, 48, 48)
    with torch.no_grad():
        for _ in range(3):   # running statistics away from their initial values
            network(images * 3 + 1)
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    network.eval()
    folded = folded_torchvision_state(network.state_dict(), network.backbone.conv_names)
    assert set(folded) == {f"features.{i}.{kind}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
                           for kind in ("weight", "bias")}
    plain = VGG16Stride8(width=0.125)
    converted, _, _ = convert_vgg16(plain, folded, "torchvision", prefix="")
    plain.load_state_dict(converted)
    with torch.no_grad():
        expected, got = network.backbone(images), plain(images)
    # 13 float32 layers: a few units of float32 rounding per layer relative to the largest activation
    assert (expected - got).abs().max() <= 1e-5 * 13 * expected.abs().max()


def test_pretrain_command_writes_weights_the_loaders_read_and_skips_when_done(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)   # the config's relative work_dir (runs/demo), as a user runs it
    assert main(["pretrain", os.path.abspath(CONFIG_FILE), *SMALL]) == 0
    weights = tmp_path / "runs" / "demo" / "weights" / "pretrained_vgg16.pth"
    state = load_torch(str(weights), "weights")
    assert "features.0.weight" in state and state["features.28.weight"].shape[0] == 32   # 512 / 16
    deeplab = DeepLabVGG16(width=0.0625)
    report = load_pretrained(deeplab, state, "auto")   # raises on any missing backbone key
    assert report.naming == "torchvision" and len(report.loaded) == 26
    assert all(key.startswith("aspp.") for key in report.initialised)
    stamp = weights.stat().st_mtime_ns
    checkpoint = tmp_path / "runs" / "demo" / "ckpt" / "pretrain.pt"
    checkpoint_stamp = checkpoint.stat().st_mtime_ns
    assert main(["pretrain", os.path.abspath(CONFIG_FILE), *SMALL]) == 0
    assert weights.stat().st_mtime_ns == stamp and checkpoint.stat().st_mtime_ns == checkpoint_stamp
    assert main(["pretrain", os.path.abspath(CONFIG_FILE), *SMALL, "seed=3"]) == 0   # another training seed
    assert checkpoint.stat().st_mtime_ns == checkpoint_stamp   # one pretraining serves every training seed
    assert main(["pretrain", os.path.abspath(CONFIG_FILE), *SMALL, "pretrain.seed=5"]) == 0
    assert checkpoint.stat().st_mtime_ns != checkpoint_stamp   # another set: retrained
    assert not torch.equal(load_torch(str(weights), "weights")["features.0.weight"], state["features.0.weight"])


@pytest.mark.parametrize("override, key", [("pretrain.image_size=[40]", "pretrain.image_size"),
                                           ("pretrain.num_images=0", "pretrain.num_images")])
def test_bad_pretrain_settings_are_one_line_errors(tmp_path, capsys, override, key):
    assert main(["pretrain", os.path.abspath(CONFIG_FILE), f"work_dir={tmp_path}", *SMALL, override]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and key in err and "Traceback" not in err, err
