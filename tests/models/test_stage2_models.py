"""DeepLab-v2 ASPP (VGG-16, ResNet-101): architecture, frozen BN, weight loading in both namings."""
import pytest
import torch

from sgan.models.deeplab import DeepLabResNet101, DeepLabVGG16, ElementwiseDropout, load_pretrained
from sgan.models.resnet import resnet_caffe_names

TV_VGG_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)   # torchvision vgg16().features
CAFFE_VGG_CONVS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
                   "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3")
WIDTH = 1 / 16   # VGG channels 4..32, fc 64; ResNet stem 4, output 256


def vgg_conv_shapes(width):
    full = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
    shapes, previous = [], 3
    for channels in full:
        channels = round(channels * width)
        shapes.append((channels, previous, 3, 3))
        previous = channels
    return shapes


def torchvision_vgg_state(width, generator):
    """A torchvision-named VGG-16 ImageNet state dict at reduced width (classifier 4096·width)."""
    state = {}
    for index, shape in zip(TV_VGG_CONVS, vgg_conv_shapes(width)):
        state[f"features.{index}.weight"] = torch.randn(shape, generator=generator)
        state[f"features.{index}.bias"] = torch.randn(shape[0], generator=generator)
    hidden, channels = round(4096 * width), round(512 * width)
    state["classifier.0.weight"] = torch.randn(hidden, channels * 49, generator=generator)
    state["classifier.0.bias"] = torch.randn(hidden, generator=generator)
    state["classifier.3.weight"] = torch.randn(hidden, hidden, generator=generator)
    state["classifier.3.bias"] = torch.randn(hidden, generator=generator)
    state["classifier.6.weight"] = torch.randn(1000, hidden, generator=generator)
    state["classifier.6.bias"] = torch.randn(1000, generator=generator)
    return state


@pytest.mark.parametrize("make", [lambda: DeepLabVGG16(width=WIDTH),
                                  lambda: DeepLabResNet101(width=WIDTH, blocks=(1, 2, 2, 1))],
                         ids=["vgg16", "resnet101"])
def test_output_stride_8_and_41x41_at_321(make):
    model = make().eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 321, 321)).shape == (1, 21, 41, 41)
        assert model(torch.randn(2, 3, 97, 65)).shape == (2, 21, 13, 9)


def test_vgg_architecture_matches_deeplab_v2():
    model = DeepLabVGG16()
    trunk = model.backbone
    assert [trunk.pool1.stride, trunk.pool3.stride, trunk.pool4.stride, trunk.pool5.stride] == [2, 2, 1, 1]
    assert all(getattr(trunk, f"conv5_{i}").dilation == (2, 2) for i in (1, 2, 3))
    assert trunk.conv4_3.dilation == (1, 1)
    assert [branch.fc6.dilation[0] for branch in model.aspp] == [6, 12, 18, 24]
    assert all(b.fc6.weight.shape == (1024, 512, 3, 3) and b.fc7.weight.shape == (1024, 1024, 1, 1)
               and b.fc8.weight.shape == (21, 1024, 1, 1) for b in model.aspp)
    assert all(isinstance(b.dropout, ElementwiseDropout) and b.dropout.p == 0.5 for b in model.aspp)


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_elementwise_dropout_is_caffe_dropout(p):
    """Caffe's Dropout: each element zeroed with probability p on its own (not whole channels, as
    nn.Dropout2d), the rest scaled by 1/(1-p); the gradient is the same mask; eval is the identity."""
    torch.manual_seed(0)
    dropout = ElementwiseDropout(p)
    x = (torch.rand(16, 64, 32, 32) + 0.5).requires_grad_()   # no zeros of its own
    y = dropout(x)
    dropped = y == 0
    n = dropped.numel()
    # binomial(n, p): 5 standard deviations of the dropped fraction
    assert abs(dropped.float().mean().item() - p) < 5 * (p * (1 - p) / n) ** 0.5
    assert torch.equal(y[~dropped], x[~dropped] * (1 / (1 - p)))
    per_channel = dropped.float().mean(dim=(2, 3))   # whole-channel dropout would give only 0 and 1
    assert 0.3 * p < per_channel.min() and per_channel.max() < 1 - 0.3 * (1 - p)
    y.sum().backward()
    assert torch.equal(x.grad, (~dropped).float() * (1 / (1 - p)))
    dropout.eval()
    assert dropout(x) is x
    assert ElementwiseDropout(0.0).train()(x) is x


def test_elementwise_dropout_rejects_a_bad_probability():
    with pytest.raises(ValueError, match=r"dropout: expected a probability in \[0, 1\), got 1"):
        ElementwiseDropout(1)


def test_resnet_architecture_matches_deeplab_v2():
    model = DeepLabResNet101()
    trunk = model.backbone
    assert [len(getattr(trunk, f"layer{i}")) for i in (1, 2, 3, 4)] == [3, 4, 23, 3]
    assert trunk.layer3[0].conv2.stride == (1, 1) and trunk.layer4[0].conv2.stride == (1, 1)
    assert {b.conv2.dilation for b in trunk.layer3} == {(2, 2)}
    assert {b.conv2.dilation for b in trunk.layer4} == {(4, 4)}
    assert [(c.in_channels, c.out_channels, c.dilation[0]) for c in model.aspp] == [
        (2048, 21, r) for r in (6, 12, 18, 24)]
    # frozen BN: no trainable BN parameters; only convolution weights in the trunk
    assert all(p.dim() == 4 for p in trunk.parameters())


def test_frozen_batchnorm_does_not_change_in_training():
    torch.manual_seed(0)
    model = DeepLabResNet101(width=WIDTH, blocks=(1, 1, 1, 1)).train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "bn" in k or "downsample.1" in k}
    model(torch.randn(2, 3, 33, 33)).sum().backward()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def stage2_groups(tmp_path, state, arch="vgg16"):
    """{group name: set of parameter names} of the optimiser train-seg builds from ``state``."""
    from sgan.pipeline import load_config
    from sgan.pipeline.train_seg import build_model
    from sgan.train import parameter_groups
    from sgan.utils.logging import get_logger
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    overrides = [f"train_seg.arch={arch}", "train_seg.blocks=[1, 1, 1, 1]", f"train_seg.width={WIDTH}"]
    cfg = load_config(None, overrides + ([f"train_seg.weights={path}"] if state is not None else []))
    model, _, new_names = build_model(cfg.train_seg, "auto", get_logger("test"))
    names = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: {names[id(p)] for p in g["params"]} for g in parameter_groups(model, new_names=new_names)}


def test_stage2_new_layer_rates_go_to_the_layers_the_weights_do_not_provide(tmp_path):
    """DeepLab's prototxt: fc6/fc7 loaded from ImageNet's fc layers train at x1/x2, fc8 at x10/x20;
    fc6/fc7 absent from the file (convolutions only, as the demo's weights) are new layers too."""
    fc8 = {f"aspp.{b}.fc8.{k}" for b in range(4) for k in ("weight", "bias")}
    fc67 = {f"aspp.{b}.{layer}.{k}" for b in range(4) for layer in ("fc6", "fc7") for k in ("weight", "bias")}
    full = torchvision_vgg_state(WIDTH, torch.Generator().manual_seed(0))
    groups = stage2_groups(tmp_path, full)
    assert groups["new_weight"] | groups["new_bias"] == fc8
    assert fc67 <= groups["backbone_weight"] | groups["backbone_bias"]
    convs_only = {k: v for k, v in full.items() if k.startswith("features.")}
    groups = stage2_groups(tmp_path, convs_only)
    assert groups["new_weight"] | groups["new_bias"] == fc8 | fc67
    assert all(name.startswith("backbone.") for name in groups["backbone_weight"] | groups["backbone_bias"])
    assert stage2_groups(tmp_path, None)["new_weight"] == {n for n in fc8 | fc67 if n.endswith("weight")}
    resnet = DeepLabResNet101(width=WIDTH, blocks=(1, 1, 1, 1))
    shapes = resnet.backbone.state_dict()
    caffe = {file_key: torch.ones(shapes[model_key].shape)
             for model_key, file_key in resnet_caffe_names(resnet.backbone).items()}
    groups = stage2_groups(tmp_path, caffe, arch="resnet101")
    assert groups["new_weight"] | groups["new_bias"] == {n for n, _ in resnet.named_parameters() if n.startswith("aspp.")}


def test_vgg_torchvision_weights_load_and_fc_layers_are_decimated(tmp_path):
    generator = torch.Generator().manual_seed(0)
    state = torchvision_vgg_state(WIDTH, generator)
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    model = DeepLabVGG16(width=WIDTH)
    report = load_pretrained(model, str(path))
    assert report.naming == "torchvision"
    assert torch.equal(model.backbone.conv3_2.weight, state["features.12.weight"])
    assert torch.equal(model.backbone.conv5_3.bias, state["features.28.bias"])
    hidden, channels = round(4096 * WIDTH), round(512 * WIDTH)
    full_fc6 = state["classifier.0.weight"].view(hidden, channels, 7, 7)
    expected_fc6 = full_fc6[[4 * i for i in range(hidden // 4)]][:, :, [0, 3, 6]][:, :, :, [0, 3, 6]]
    expected_fc7 = state["classifier.3.weight"][0::4, 0::4].reshape(hidden // 4, hidden // 4, 1, 1)
    for branch in model.aspp:
        assert torch.equal(branch.fc6.weight, expected_fc6)
        assert torch.equal(branch.fc6.bias, state["classifier.0.bias"][0::4])
        assert torch.equal(branch.fc7.weight, expected_fc7)
    assert report.initialised == [f"aspp.{b}.fc8.{k}" for b in range(4) for k in ("bias", "weight")]
    assert report.ignored == ["classifier.6.bias", "classifier.6.weight"]


def test_vgg_caffe_weights_load_shared_fc_into_every_branch():
    generator = torch.Generator().manual_seed(1)
    fc = round(1024 * WIDTH)
    state = {}
    for name, shape in zip(CAFFE_VGG_CONVS, vgg_conv_shapes(WIDTH)):
        state[f"{name}.weight"] = torch.randn(shape, generator=generator)
        state[f"{name}.bias"] = torch.randn(shape[0], generator=generator)
    state["fc6.weight"] = torch.randn(fc, round(512 * WIDTH), 3, 3, generator=generator)
    state["fc6.bias"] = torch.randn(fc, generator=generator)
    state["fc7.weight"] = torch.randn(fc, fc, 1, 1, generator=generator)
    state["fc7.bias"] = torch.randn(fc, generator=generator)
    state["fc8.weight"] = torch.randn(1000, fc, 1, 1, generator=generator)
    model = DeepLabVGG16(width=WIDTH)
    report = load_pretrained(model, {"state_dict": {f"module.{k}": v for k, v in state.items()}})
    assert report.naming == "caffe" and report.ignored == ["fc8.weight"]
    assert torch.equal(model.backbone.conv1_1.weight, state["conv1_1.weight"])
    assert all(torch.equal(b.fc6.weight, state["fc6.weight"]) and torch.equal(b.fc7.bias, state["fc7.bias"])
               for b in model.aspp)


def test_resnet_caffe_names_follow_the_resnet101_layer_names():
    names = resnet_caffe_names(DeepLabResNet101(width=1 / 32).backbone)
    values = set(names.values())
    for key in ("conv1.weight", "bn_conv1.running_mean", "scale_conv1.weight", "res2c_branch2c.weight",
                "res3b3_branch2a.weight", "res4b22_branch2c.weight", "bn4b22_branch2c.running_var",
                "scale5c_branch2b.bias", "res5a_branch1.weight", "scale2a_branch1.bias"):
        assert key in values, key
    assert "res4b23_branch2a.weight" not in values and "res3d_branch2a.weight" not in values
    assert names["layer3.22.conv3.weight"] == "res4b22_branch2c.weight"
    assert names["layer1.0.downsample.1.weight"] == "scale2a_branch1.weight"


@pytest.mark.parametrize("naming", ["torchvision", "caffe"])
def test_resnet_weights_load_in_both_namings(tmp_path, naming):
    generator = torch.Generator().manual_seed(2)
    model = DeepLabResNet101(width=WIDTH, blocks=(1, 2, 2, 1))
    if naming == "torchvision":
        keys = {k: k for k in model.backbone.state_dict()}
        extra = {"fc.weight": torch.randn(1000, 256, generator=generator),
                 "bn1.num_batches_tracked": torch.tensor(5)}
    else:
        keys = resnet_caffe_names(model.backbone)
        extra = {"fc1000.weight": torch.randn(1000, 256, generator=generator)}
    shapes = model.backbone.state_dict()
    state = {file_key: torch.randn(shapes[model_key].shape, generator=generator).abs()
             for model_key, file_key in keys.items()}
    state.update(extra)
    torch.save(state, tmp_path / "resnet.pth")
    report = load_pretrained(model, str(tmp_path / "resnet.pth"), naming=naming)
    assert report.naming == naming
    assert report.ignored == sorted(extra)
    assert report.initialised == [f"aspp.{b}.{k}" for b in range(4) for k in ("bias", "weight")]
    assert torch.equal(model.backbone.layer3[1].conv2.weight, state[keys["layer3.1.conv2.weight"]])
    assert torch.equal(model.backbone.layer2[0].downsample[1].running_var,
                       state[keys["layer2.0.downsample.1.running_var"]])
    assert torch.equal(model.backbone.bn1.weight, state[keys["bn1.weight"]])


def test_weight_errors_list_every_missing_unexpected_and_mismatched_key():
    generator = torch.Generator().manual_seed(3)
    state = torchvision_vgg_state(WIDTH, generator)
    del state["features.5.weight"], state["features.28.bias"]
    state["features.99.weight"] = torch.zeros(1)
    state["features.0.weight"] = torch.zeros(4, 3, 5, 5)
    with pytest.raises(ValueError) as error:
        load_pretrained(DeepLabVGG16(width=WIDTH), state)
    message = str(error.value)
    assert "missing keys (2): backbone.conv2_1.weight, backbone.conv5_3.bias" in message
    assert "unexpected keys (1): features.99.weight" in message
    assert "backbone.conv1_1.weight: file (4, 3, 5, 5) vs model (4, 3, 3, 3)" in message


def test_weight_errors_for_unknown_naming_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="cannot tell the naming.*got keys like foo.weight"):
        load_pretrained(DeepLabVGG16(width=WIDTH), {"foo.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="file not found"):
        load_pretrained(DeepLabVGG16(width=WIDTH), str(tmp_path / "nothing.pth"))
    with pytest.raises(ValueError, match="naming: expected one of"):
        load_pretrained(DeepLabVGG16(width=WIDTH), {}, naming="keras")


def test_native_checkpoint_round_trip():
    source = DeepLabResNet101(width=WIDTH, blocks=(1, 1, 1, 1))
    target = DeepLabResNet101(width=WIDTH, blocks=(1, 1, 1, 1))
    report = load_pretrained(target, source.state_dict())
    assert report.naming == "native" and report.initialised == []
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


@pytest.mark.parametrize("file_width", [1 / 32, 1 / 8])
def test_weights_of_another_width_name_the_width_that_fits(file_width):
    """Narrower torchvision weights used to fail in the fc6 decimation, wider ones with a list of
    every shape; both are one line saying which width fits."""
    state = torchvision_vgg_state(file_width, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError) as error:
        load_pretrained(DeepLabVGG16(width=WIDTH), state, width_option=("train_seg.width", WIDTH))
    channels = round(64 * file_width)
    assert str(error.value) == (
        f"weights: the file was made at another width: its first convolution features.0.weight has "
        f"{channels} output channels, this network's 4 (train_seg.width=0.0625); "
        f"train_seg.width={file_width:g} gives {channels}")


def test_train_seg_passes_its_width_key(tmp_path):
    from sgan.pipeline import load_config
    from sgan.pipeline.train_seg import build_model
    from sgan.utils.logging import get_logger
    path = tmp_path / "resnet.pth"
    torch.save(DeepLabResNet101(width=1 / 8, blocks=(1, 1, 1, 1)).state_dict(), path)
    cfg = load_config(None, ["train_seg.arch=resnet101", "train_seg.blocks=[1, 1, 1, 1]",
                             f"train_seg.width={WIDTH}", f"train_seg.weights={path}"])
    with pytest.raises(ValueError, match=r"backbone.conv1.weight has 8 output channels, this network's 4 "
                                         r"\(train_seg.width=0.0625\); train_seg.width=0.125 gives 8$"):
        build_model(cfg.train_seg, "auto", get_logger("test"))
