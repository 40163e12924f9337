"""The modified VGG-16 of SGAN: pool4 and pool5 removed, output stride 8, no dilation (docs/design.md §5).

Input (B, 3, H, W) -> conv5_3 features after ReLU (B, 512·width, ceil(H/8), ceil(W/8)): 41×41 for
321², 65×65 for 513². pool1-3 are 3×3 max pools with stride 2 and padding 1 (the DeepLab/Caffe
ones, hence ceil). ``width`` scales every channel count and ``convs_per_block`` keeps the first
k convolutions of each of the five blocks (``[2, 2, 3, 3, 3]`` is VGG-16): a small, fast network
with the same code path for the demo and the tests. Convolutions are named like Caffe's
(``conv1_1`` ... ``conv5_3``), so ImageNet weights load with :func:`sgan.models.load_pretrained` in
torchvision naming (``features.{i}.*``) or Caffe-converted naming (``conv1_1.weight`` ...); the
networks built on this backbone implement ``convert_pretrained`` through :func:`convert_vgg16`.

Larger inputs: ``checkpointing=True`` keeps only each conv block's input for the backward pass and
recomputes the block's activations there (:func:`sgan.models.checkpoint.run_blocks`); the gradients
are the same. Channels-last: ``model.to(memory_format=torch.channels_last)`` and images converted
likewise; every layer here keeps that layout.
"""
import torch
from torch import nn

from sgan.models.checkpoint import StripMaxPool2d, StripWeightGradConv2d, relu_keeping_mask_, run_blocks

from sgan.models.deeplab import VGG16_CONVS, VGG16_TORCHVISION_INDICES
from sgan.models.width import check_width, scaled_channels

VGG16_CONVS_PER_BLOCK = tuple(len(block) for block in VGG16_CONVS)


class VGG16Stride8(nn.Module):
    """VGG-16 conv1_1..conv5_3 with pool1-3 only (stride 8, no dilation); see the module doc.

    checkpointing: recompute each conv block (pool + its convolutions + ReLUs) in the backward pass
    instead of keeping its activations, with convolutions and pools whose bfloat16/float16 backward
    runs in strips (sgan.models.checkpoint); off by default.
    """

    def __init__(self, width=1.0, convs_per_block=VGG16_CONVS_PER_BLOCK, checkpointing=False):
        super().__init__()
        self.checkpointing = bool(checkpointing)
        check_width(width)
        convs_per_block = tuple(convs_per_block)
        if len(convs_per_block) != 5 or not all(
                isinstance(n, int) and 1 <= n <= full for n, full in zip(convs_per_block, VGG16_CONVS_PER_BLOCK)):
            raise ValueError(f"convs_per_block: expected 5 ints, each between 1 and VGG-16's "
                             f"{list(VGG16_CONVS_PER_BLOCK)}, got {list(convs_per_block)}")
        self.conv_names, self._blocks = [], []
        in_channels = 3
        for block, count in enumerate(convs_per_block):
            names = [name for name, _ in VGG16_CONVS[block][:count]]
            for name, channels in VGG16_CONVS[block][:count]:
                out_channels = scaled_channels(channels, width)
                conv = StripWeightGradConv2d if checkpointing else nn.Conv2d
                self.add_module(name, conv(in_channels, out_channels, 3, padding=1))
                in_channels = out_channels
            self.conv_names += names
            self._blocks.append((block in (1, 2, 3), names))  # blocks 2-4 start with pool1, pool2, pool3
        self.pool = (StripMaxPool2d if checkpointing else nn.MaxPool2d)(3, stride=2, padding=1)
        self.out_channels = in_channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def _block(self, x, pool_before, names):
        if pool_before:
            x = self.pool(x)
        for name in names:
            x = getattr(self, name)(x)
            # in place: no second full-size tensor; a checkpointed block's output keeps no reference
            x = relu_keeping_mask_(x) if self.checkpointing and name == names[-1] else torch.relu_(x)
        return x

    def forward(self, images):
        """images (B, 3, H, W) -> features (B, out_channels, ceil(H/8), ceil(W/8))."""
        blocks = [lambda x, block=block: self._block(x, *block) for block in self._blocks]
        return run_blocks(blocks, images, self.checkpointing)


def convert_vgg16(backbone, state, naming, prefix="backbone."):
    """ImageNet VGG-16 state dict -> ({model key: tensor}, file keys used, file keys ignored).

    naming: 'torchvision' (``features.{i}``; ``classifier.*`` ignored) or 'caffe' (``conv1_1`` ...;
    ``fc6``/``fc7``/``fc8*`` ignored: this network has no fully connected layers). Only the
    convolutions present in ``backbone`` are taken; the unused ones of a reduced network are not
    reported as unexpected.
    """
    converted, used = {}, set()
    all_names = [name for block in VGG16_CONVS for name, _ in block]
    sources = dict(zip(all_names, (f"features.{i}" for i in VGG16_TORCHVISION_INDICES))) \
        if naming == "torchvision" else {name: name for name in all_names}
    for name in all_names:
        for kind in ("weight", "bias"):
            file_key = f"{sources[name]}.{kind}"
            if name in backbone.conv_names and file_key in state:
                converted[f"{prefix}{name}.{kind}"] = state[file_key]
                used.add(file_key)
    skipped_convs = {f"{sources[n]}.{kind}" for n in all_names if n not in backbone.conv_names
                     for kind in ("weight", "bias")}
    heads = ("classifier.",) if naming == "torchvision" else ("fc6", "fc7", "fc8")
    ignored = {k for k in state if k.startswith(heads) or k in skipped_convs}
    return converted, used, ignored


class PretrainClassifier(nn.Module):
    """The backbone as a multi-label classifier for ``sgan pretrain``: every convolution followed by
    batch normalisation (so the full depth trains from scratch), a 1×1 convolution to
    ``num_classes`` CAM logits, global average pooling. forward(images (B, 3, H, W)) -> (B, num_classes).

    :func:`folded_torchvision_state` folds each batch normalisation into its convolution, giving
    plain VGG-16 weights that compute the same features (in eval mode) without it.
    """

    def __init__(self, num_classes, width=1.0, convs_per_block=VGG16_CONVS_PER_BLOCK):
        super().__init__()
        self.backbone = VGG16Stride8(width, convs_per_block)
        for name in self.backbone.conv_names:
            conv = getattr(self.backbone, name)
            setattr(self.backbone, name, nn.Sequential(conv, nn.BatchNorm2d(conv.out_channels)))
        self.classifier = nn.Conv2d(self.backbone.out_channels, num_classes, 1)

    def forward(self, images):
        return self.classifier(self.backbone(images)).mean(dim=(2, 3))


def folded_torchvision_state(state, conv_names, prefix="backbone."):
    """A PretrainClassifier state dict -> {``features.{i}.weight|bias``: tensor}: torchvision VGG-16
    naming, each batch normalisation (eval mode: running statistics) folded into its convolution:
    w' = w · g / sqrt(v + eps), b' = (b − m) · g / sqrt(v + eps) + beta, per output channel."""
    all_names = [name for block in VGG16_CONVS for name, _ in block]
    folded = {}
    for name in conv_names:
        index = VGG16_TORCHVISION_INDICES[all_names.index(name)]
        conv, norm = f"{prefix}{name}.0.", f"{prefix}{name}.1."
        scale = state[norm + "weight"].double() / torch.sqrt(state[norm + "running_var"].double() + 1e-5)
        weight = state[conv + "weight"].double() * scale.view(-1, 1, 1, 1)
        bias = (state[conv + "bias"].double() - state[norm + "running_mean"].double()) * scale + state[norm + "bias"]
        folded[f"features.{index}.weight"] = weight.float().contiguous()
        folded[f"features.{index}.bias"] = bias.float().contiguous()
    return folded
