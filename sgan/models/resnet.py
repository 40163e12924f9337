"""Dilated ResNet trunk (bottleneck blocks, frozen BatchNorm) for DeepLab-v2, written without torchvision.

Parameter names follow torchvision's ResNet (``conv1``, ``bn1``, ``layer{1-4}.{j}.conv{1-3}``,
``bn{1-3}``, ``downsample.{0,1}``), so a torchvision state dict loads one-to-one;
:func:`resnet_caffe_names` gives the names of the Caffe ResNet-101 layers for each of them.
"""
import torch
from torch import nn

from sgan.models.checkpoint import run_blocks
from sgan.models.width import check_width, scaled_channels

RESNET101_BLOCKS = (3, 4, 23, 3)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (DeepLab-v2 never updates BN).

    All four tensors are buffers, so the optimiser never sees them and train()/eval() agree.
    Input and output: (B, C, H, W).
    """

    def __init__(self, channels, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x):
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self):
        return f"{self.weight.numel()}, eps={self.eps}"


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (dilated) -> 1x1 expand, plus the (projected) identity.

    ``stride_in_1x1`` puts the stride on the first 1x1 conv (the original MSRA/Caffe ResNet that
    DeepLab-v2 was trained from) instead of the 3x3 conv (torchvision).
    """

    def __init__(self, in_channels, mid_channels, out_channels, stride=1, dilation=1,
                 stride_in_1x1=False):
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 1, stride=stride_1x1, bias=False)
        self.bn1 = FrozenBatchNorm2d(mid_channels)
        self.conv2 = nn.Conv2d(mid_channels, mid_channels, 3, stride=stride_3x3, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn2 = FrozenBatchNorm2d(mid_channels)
        self.conv3 = nn.Conv2d(mid_channels, out_channels, 1, bias=False)
        self.bn3 = FrozenBatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                FrozenBatchNorm2d(out_channels))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class DilatedResNet(nn.Module):
    """ResNet trunk with output stride 8: layer3 and layer4 keep stride 1, dilations 2 and 4.

    blocks: bottleneck blocks per stage ((3, 4, 23, 3) is ResNet-101); width: multiplier on the
    channel counts (1.0 is the real network: 64 stem channels, 2048 output channels); smaller
    values and fewer blocks run the same code at test size. Input (B, 3, H, W); output
    (B, out_channels, h, w) with h ≈ H / 8 (41 x 41 at 321²). checkpointing: recompute each
    bottleneck block in the backward pass instead of keeping its activations (frozen BN has no
    running statistics to update twice).
    """

    def __init__(self, blocks=RESNET101_BLOCKS, width=1.0, stride_in_1x1=False, checkpointing=False):
        super().__init__()
        self.checkpointing = bool(checkpointing)
        blocks = tuple(blocks)
        if len(blocks) != 4 or not all(isinstance(n, int) and n >= 1 for n in blocks):
            raise ValueError(f"blocks: expected four positive ints (blocks per stage), got {blocks!r}")
        check_width(width)
        stem = scaled_channels(64, width)
        self.blocks, self.width = blocks, width
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        in_channels = stem
        strides, dilations = (1, 2, 1, 1), (1, 1, 2, 4)
        for stage, (count, stride, dilation) in enumerate(zip(blocks, strides, dilations)):
            mid = stem * 2 ** stage
            layer = []
            for index in range(count):
                layer.append(Bottleneck(in_channels, mid, mid * 4, stride if index == 0 else 1,
                                        dilation, stride_in_1x1))
                in_channels = mid * 4
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layer))
        self.out_channels = in_channels

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        blocks = [block for stage in (self.layer1, self.layer2, self.layer3, self.layer4) for block in stage]
        return run_blocks(blocks, x, self.checkpointing)


def _caffe_block_name(stage, index, count):
    """'2a', '3b1', '4b22', '5c': Caffe ResNet-101 names stages of more than 3 blocks a, b1, b2, ..."""
    if index == 0:
        return f"{stage}a"
    return f"{stage}b{index}" if count > 3 else f"{stage}{chr(ord('a') + index)}"


def resnet_caffe_names(trunk, prefix=""):
    """Map each state-dict key of ``trunk`` (with ``prefix``) to its key in the Caffe-converted file.

    The Caffe file holds one entry per Caffe layer blob: convolutions ``res2a_branch2a.weight``,
    BatchNorm statistics ``bn2a_branch2a.running_mean`` / ``.running_var`` and the following Scale
    layer's ``scale2a_branch2a.weight`` / ``.bias`` (stem: ``conv1``, ``bn_conv1``, ``scale_conv1``).
    Returns {model key: file key}.
    """
    names = {}

    def add_bn(model_name, caffe_suffix):
        names[f"{prefix}{model_name}.running_mean"] = f"bn{caffe_suffix}.running_mean"
        names[f"{prefix}{model_name}.running_var"] = f"bn{caffe_suffix}.running_var"
        names[f"{prefix}{model_name}.weight"] = f"scale{caffe_suffix}.weight"
        names[f"{prefix}{model_name}.bias"] = f"scale{caffe_suffix}.bias"

    names[f"{prefix}conv1.weight"] = "conv1.weight"
    add_bn("bn1", "_conv1")
    for stage, count in enumerate(trunk.blocks):
        for index in range(count):
            block = _caffe_block_name(stage + 2, index, count)
            base = f"layer{stage + 1}.{index}"
            for conv, branch in (("1", "2a"), ("2", "2b"), ("3", "2c")):
                names[f"{prefix}{base}.conv{conv}.weight"] = f"res{block}_branch{branch}.weight"
                add_bn(f"{base}.bn{conv}", f"{block}_branch{branch}")
            if getattr(trunk, f"layer{stage + 1}")[index].downsample is not None:
                names[f"{prefix}{base}.downsample.0.weight"] = f"res{block}_branch1.weight"
                add_bn(f"{base}.downsample.1", f"{block}_branch1")
    return names
