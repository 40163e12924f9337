"""Stage-1 networks (VGG-16 stride 8, CAM, SGAN variants), weight loading, seed rules."""
import numpy as np
import pytest
import torch

from sgan.models import load_pretrained
from sgan.models.deeplab import VGG16_CONVS, VGG16_TORCHVISION_INDICES
from sgan.models.sgan_net import CAMNet, SGANNet, build_network
from sgan.models.vgg import VGG16Stride8
from sgan.pipeline import load_config
from sgan.seedmaps import class_scores, make_seeds

TINY = {"width": 0.0625, "convs_per_block": [2, 2, 3, 3, 3], "classifier": "paper", "classifier_hidden": 64,
        "dropout": 0.5, "attention_preset": "official", "key_channels": "half", "saliency_threshold": 0.06,
        "saliency_border": True, "saliency_resize": "bilinear", "seed_branch_kernel": 1, "init": "xavier"}
CONV_NAMES = [name for block in VGG16_CONVS for name, _ in block]


@pytest.mark.parametrize("side,expected", [(321, 41), (513, 65), (64, 8)])
def test_backbone_has_stride_8_without_pool4_pool5(side, expected):
    backbone = VGG16Stride8(width=0.03125, convs_per_block=[1, 1, 1, 1, 1])
    with torch.no_grad():
        out = backbone(torch.zeros(1, 3, side, side))
    assert out.shape == (1, 16, expected, expected)
    assert VGG16Stride8().out_channels == 512 and len(VGG16Stride8().conv_names) == 13


def test_backbone_rejects_bad_shapes():
    with pytest.raises(ValueError, match="convs_per_block"):
        VGG16Stride8(convs_per_block=[2, 2, 4, 3, 3])
    with pytest.raises(ValueError, match="width"):
        VGG16Stride8(width=0)


def _imagenet_state(naming, reference):
    """A state dict in ``naming`` holding the backbone tensors of ``reference`` (+ unused classifier)."""
    state = {}
    for name, index in zip(CONV_NAMES, VGG16_TORCHVISION_INDICES):
        key = f"features.{index}" if naming == "torchvision" else name
        state[f"{key}.weight"] = torch.randn_like(getattr(reference.backbone, name).weight)
        state[f"{key}.bias"] = torch.randn_like(getattr(reference.backbone, name).bias)
    if naming == "torchvision":
        state["classifier.0.weight"] = torch.randn(8, 4)
        state["classifier.6.bias"] = torch.randn(1000)
    else:
        state["fc6.weight"] = torch.randn(8, 4)
        state["fc8_voc12.bias"] = torch.randn(21)
    return state


@pytest.mark.parametrize("naming", ["torchvision", "caffe"])
def test_weights_load_in_both_namings(naming, tmp_path):
    network = SGANNet(TINY, "sgan", backend="reference")
    state = _imagenet_state(naming, network)
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    config = load_config(base={"work_dir": str(tmp_path), "backend": "reference", "model": dict(TINY, weights=str(path))})
    loaded, info = build_network(config, "sgan", "sgan")
    conv3_1 = "features.10" if naming == "torchvision" else "conv3_1"
    assert torch.equal(loaded.backbone.conv3_1.weight, state[f"{conv3_1}.weight"])
    assert torch.equal(loaded.backbone.conv5_3.bias, state[("features.28" if naming == "torchvision" else "conv5_3") + ".bias"])
    assert info["normalisation"] == ("caffe_bgr" if naming == "caffe" else "imagenet_rgb")
    assert info == {"kind": "sgan", "variant": "sgan", "options": dict(TINY), "normalisation": info["normalisation"]}


@pytest.mark.parametrize("naming", ["torchvision", "caffe"])
def test_weight_errors_list_every_missing_unexpected_and_mismatched_key(naming):
    network = CAMNet(TINY)
    state = _imagenet_state(naming, network)
    first, last = ("features.0", "features.28") if naming == "torchvision" else ("conv1_1", "conv5_3")
    del state[f"{first}.weight"], state[f"{last}.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["conv9_9.weight"] = torch.zeros(1)
    middle = "features.12" if naming == "torchvision" else "conv3_2"
    state[f"{middle}.weight"] = torch.zeros(3, 3, 3, 3)
    with pytest.raises(ValueError) as info:
        load_pretrained(network, state, naming)
    message = str(info.value)
    assert "missing keys (2): backbone.conv1_1.weight, backbone.conv5_3.bias" in message
    assert "unexpected keys (2): conv9_9.weight, extra.weight" in message
    assert "backbone.conv3_2.weight: file (3, 3, 3, 3)" in message


def test_reduced_depth_network_skips_the_convolutions_it_does_not_have():
    reduced = dict(TINY, convs_per_block=[1, 2, 1, 1, 1])
    network = CAMNet(reduced)
    state = _imagenet_state("caffe", CAMNet(TINY))
    report = load_pretrained(network, state, "caffe")
    assert "backbone.conv1_2.weight" not in report.loaded and "backbone.conv2_2.weight" in report.loaded
    assert "conv1_2.weight" in report.ignored


def test_variants_outputs_and_saliency_use():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    saliency = torch.zeros(2, 32, 32, dtype=torch.uint8)
    saliency[:, 8:24, 8:24] = 255
    outputs = {}
    for variant in ("sgan", "sgan-seed", "sgan-sal-seed"):
        torch.manual_seed(1)
        network = SGANNet(TINY, variant, backend="reference").eval()
        with torch.no_grad():
            network.attention.gamma.fill_(1.0)  # gamma starts at 0, which would hide the attention
            outputs[variant] = (network(images, saliency), network(images, 255 - saliency))
    assert set(outputs["sgan"][0]) == {"cam", "seed"} and outputs["sgan"][0]["seed"].shape == (2, 20, 4, 4)
    assert set(outputs["sgan-seed"][0]) == {"cam"} and set(outputs["sgan-sal-seed"][0]) == {"cam"}
    # the saliency changes the attention of SGAN-SEED, and is ignored without saliency guidance
    assert not torch.allclose(outputs["sgan-seed"][0]["cam"], outputs["sgan-seed"][1]["cam"])
    assert torch.equal(outputs["sgan-sal-seed"][0]["cam"], outputs["sgan-sal-seed"][1]["cam"])
    with pytest.raises(ValueError, match="needs saliency maps"):
        SGANNet(TINY, "sgan", backend="reference")(images)
    with pytest.raises(ValueError, match="variant"):
        SGANNet(TINY, "sgan-foo")


def test_authors_classifier_has_hidden_layer_without_final_bias():
    network = CAMNet(dict(TINY, classifier="authors"))
    convs = [m for m in network.classifier.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3), (1, 1)]
    assert convs[0].out_channels == 4 and convs[1].bias is None  # 64 * width 0.0625


def test_seed_rules_on_a_handmade_example():
    labels = [4, 15]  # boat, person
    scores = np.zeros((20, 2, 4), np.float32)
    scores[3] = [[1.0, 0.9, 0.5, 0.0], [0.8, 0.1, 0.0, 0.0]]  # boat: fg at >= 0.2 -> 4 pixels
    scores[14] = [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.3]]  # person: fg -> 2 pixels
    saliency = np.array([[0, 255, 255, 255], [0, 255, 10, 0]], np.uint8)  # bg where < 0.06 * 255
    paper = make_seeds(scores, saliency, labels, alpha=0.2, beta=0.06, rule="paper")
    # (0,0), (1,0) boat and bg; (0,1) boat and person; (1,3) person and bg: conflicts stay unlabelled
    assert paper.tolist() == [[255, 255, 4, 255], [255, 255, 0, 255]]
    authors = make_seeds(scores, saliency, labels, alpha=0.2, beta=0.06, rule="authors")
    # by decreasing area: boat and background (4 positions each; equal areas: the lower label, background,
    # is written last), then person (2); boat on bg-by-saliency goes back to bg
    assert authors.tolist() == [[0, 15, 4, 255], [0, 255, 0, 15]]
    with pytest.raises(ValueError, match="alpha"):
        make_seeds(scores, saliency, labels, alpha=0.0, beta=0.06)


def test_flipped_inference_is_flip_equivariant():
    torch.manual_seed(0)
    network = SGANNet(dict(TINY, classifier="authors"), "sgan", backend="reference").eval()
    with torch.no_grad():
        network.attention.gamma.fill_(0.5)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (20, 28, 3), dtype=np.uint8)
    saliency = rng.integers(0, 255, (20, 28), dtype=np.uint8)
    args = dict(labels=[3, 7], input_size=32, normalisation="imagenet_rgb", scales=(1.0, 0.5), flip=True,
                use_seed_branch=True)
    scores = class_scores(network, image, saliency, **args)
    mirrored = class_scores(network, image[:, ::-1].copy(), saliency[:, ::-1].copy(), **args)
    assert scores.shape == (20, 20, 28)
    torch.testing.assert_close(scores, mirrored.flip(-1), rtol=1e-5, atol=1e-6)
    peaks = scores.flatten(1).amax(1)  # CAM and seed maps, each max-normalised, summed
    assert all(1.0 <= float(peaks[c - 1]) <= 2.0 + 1e-6 for c in (3, 7))
    absent = [c for c in range(20) if c not in (2, 6)]
    assert float(scores[absent].abs().max()) == 0.0  # classes the image does not hold
    plain = class_scores(network, image, saliency, **dict(args, flip=False))
    assert not torch.allclose(plain, scores)
