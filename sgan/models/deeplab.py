"""DeepLab-v2 ASPP segmentation networks (VGG-16 and ResNet-101 backbones) and their weight loading.

Both models map an image batch (B, 3, H, W) to logits (B, num_classes, h, w) at output stride 8
(41 x 41 for a 321² crop). Parameters are split into ``backbone.*`` (initialised from ImageNet
weights) and ``aspp.*`` (the ASPP head). :func:`load_pretrained` reads a local state-dict file in
torchvision naming or in the Caffe-converted DeepLab-init naming and reports which keys were
loaded, which head keys were left freshly initialised and which file keys were ignored; missing
backbone keys, unknown file keys and shape mismatches raise one ``ValueError`` listing all of them.

Larger inputs: ``checkpointing=True`` (constructor argument, off by default) recomputes in the
backward pass each backbone block (VGG-16 conv block, ResNet bottleneck) and each VGG ASPP branch
instead of keeping their activations (sgan.models.checkpoint; a branch's dropout draws the same
mask again), and the VGG-16 convolutions and pools run their bfloat16/float16 backward in strips
(StripWeightGradConv2d, StripMaxPool2d). It is how the network runs, not what it is: ``model_info``
leaves it out. Channels-last: ``model.to(memory_format=torch.channels_last)`` with images in that
layout; every layer keeps it.
"""
import math
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from sgan.data.voc_classes import NUM_CLASSES_WITH_BACKGROUND
from sgan.models.checkpoint import StripMaxPool2d, StripWeightGradConv2d, run_block, run_blocks
from sgan.models.resnet import RESNET101_BLOCKS, DilatedResNet, resnet_caffe_names
from sgan.models.width import check_width, scaled_channels
from sgan.utils.io import load_torch

ASPP_RATES = (6, 12, 18, 24)
# (name, output channels) of the 13 VGG-16 convolutions, block by block.
VGG16_CONVS = ((("conv1_1", 64), ("conv1_2", 64)),
               (("conv2_1", 128), ("conv2_2", 128)),
               (("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256)),
               (("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512)),
               (("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512)))
# torchvision's vgg16().features indices of the same convolutions, in order.
VGG16_TORCHVISION_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
NAMINGS = ("auto", "torchvision", "caffe", "native")
# Stage-1 networks also read the authors' SGAN naming (sgan.models.sgan_net.convert_authors).
STAGE1_NAMINGS = NAMINGS + ("authors",)
# Module names only the authors' SGAN state dicts hold (yaoqi-zd/SGAN, lib/network/sgan.py).
AUTHORS_SGAN_KEYS = ("f_key.weight", "f_query.weight", "fc6_CAM.weight", "fc9.weight", "gamma")
ARCHS = ("vgg16", "resnet101")


def _check_common(num_classes, width, rates):
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes: expected an int >= 2, got {num_classes!r}")
    check_width(width)
    if not rates or not all(isinstance(r, int) and r >= 1 for r in rates):
        raise ValueError(f"rates: expected a non-empty list of positive ints, got {rates!r}")


class VGG16Trunk(nn.Module):
    """DeepLab-v2's VGG-16: 3x3 max pools, pool1-3 stride 2, pool4 and pool5 stride 1, conv5 dilation 2.

    Input (B, 3, H, W), output (B, 512·width, h, w), h = 41 for H = 321. checkpointing: recompute
    each conv block (its convolutions, ReLUs and pool) in the backward pass, with
    StripWeightGradConv2d convolutions and StripMaxPool2d pools.
    """

    def __init__(self, width=1.0, checkpointing=False):
        super().__init__()
        self.checkpointing = bool(checkpointing)
        in_channels = 3
        for block, convs in enumerate(VGG16_CONVS):
            dilation = 2 if block == 4 else 1
            for name, channels in convs:
                out_channels = scaled_channels(channels, width)
                conv = StripWeightGradConv2d if checkpointing else nn.Conv2d
                self.add_module(name, conv(in_channels, out_channels, 3, padding=dilation, dilation=dilation))
                in_channels = out_channels
            stride = 2 if block < 3 else 1
            pool = StripMaxPool2d if checkpointing else nn.MaxPool2d
            self.add_module(f"pool{block + 1}", pool(3, stride=stride, padding=1, ceil_mode=True))
        self.out_channels = in_channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def _block(self, x, block):
        for name, _ in VGG16_CONVS[block]:
            x = torch.relu_(getattr(self, name)(x))  # in place: no second full-size tensor
        return getattr(self, f"pool{block + 1}")(x)

    def forward(self, x):
        blocks = [lambda x, block=block: self._block(x, block) for block in range(len(VGG16_CONVS))]
        return run_blocks(blocks, x, self.checkpointing)


class ElementwiseDropout(nn.Module):
    """Element-wise dropout (as Caffe's ``Dropout`` layer): in training, each element is zeroed with
    probability ``p`` and the others are scaled by 1 / (1 - p); the identity in eval mode.

    Same distribution as ``nn.Dropout``, drawn as ``uniform >= p``, which is faster than Bernoulli
    sampling on the CPU (docs/study.md).
    """

    def __init__(self, p):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {p!r}")
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = torch.rand_like(x).ge_(self.p)
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))

    def extra_repr(self):
        return f"p={self.p}"


class VGGASPPBranch(nn.Module):
    """One ASPP branch of DeepLab-v2 VGG: fc6 3x3 (dilation r) -> fc7 1x1 -> fc8 1x1, ReLU + dropout.

    The dropout is element-wise, as Caffe's ``Dropout`` layer in DeepLab's prototxt (each unit at
    each position dropped on its own), not channel-wise (``nn.Dropout2d`` drops whole feature maps).
    """

    def __init__(self, in_channels, fc_channels, num_classes, rate, dropout):
        super().__init__()
        self.fc6 = nn.Conv2d(in_channels, fc_channels, 3, padding=rate, dilation=rate)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.fc8 = nn.Conv2d(fc_channels, num_classes, 1)
        self.dropout = ElementwiseDropout(dropout)
        for layer in (self.fc6, self.fc7):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.fc8.weight, std=0.01)
        nn.init.zeros_(self.fc8.bias)

    def forward(self, x):
        x = self.dropout(torch.relu(self.fc6(x)))
        x = self.dropout(torch.relu(self.fc7(x)))
        return self.fc8(x)


class _DeepLab(nn.Module):
    """Shared forward: ASPP branches applied to the backbone features and summed; with
    ``checkpoint_aspp`` each branch is recomputed in the backward pass."""

    checkpoint_aspp = False

    def forward(self, images):
        """images (B, 3, H, W) -> logits (B, num_classes, h, w) at output stride 8."""
        features = self.backbone(images)
        logits = run_block(self.aspp[0], features, self.checkpoint_aspp)
        for branch in self.aspp[1:]:
            logits = logits + run_block(branch, features, self.checkpoint_aspp)
        return logits

    def model_info(self):
        """JSON-able constructor arguments: ``build_deeplab(**model.model_info())`` rebuilds the network."""
        return dict(self._info)


class DeepLabVGG16(_DeepLab):
    """DeepLab-v2 ASPP-L with VGG-16: four branches (rates 6/12/18/24) of fc6 3x3 1024 -> fc7 1x1
    1024 -> fc8 1x1 num_classes with dropout 0.5, summed. ``width`` scales every channel count.
    ``checkpointing``: recompute each backbone conv block and each ASPP branch in the backward pass."""

    arch = "vgg16"

    def __init__(self, num_classes=NUM_CLASSES_WITH_BACKGROUND, width=1.0, rates=ASPP_RATES, fc_channels=1024,
                 dropout=0.5, checkpointing=False):
        super().__init__()
        _check_common(num_classes, width, rates)
        self._info = dict(arch=self.arch, num_classes=num_classes, width=width, rates=list(rates),
                          fc_channels=fc_channels, dropout=dropout)
        self.backbone = VGG16Trunk(width, checkpointing)
        self.checkpoint_aspp = bool(checkpointing)
        self.fc_channels = scaled_channels(fc_channels, width)
        self.aspp = nn.ModuleList(VGGASPPBranch(self.backbone.out_channels, self.fc_channels,
                                                num_classes, rate, dropout) for rate in rates)

    def convert_pretrained(self, state, naming):
        """ImageNet state dict -> ({model key: tensor}, file keys used, file keys ignored on purpose).

        torchvision: ``features.{i}`` convolutions, and fc6/fc7 of every branch decimated from
        ``classifier.0``/``classifier.3`` (every k-th filter, every 3rd tap of fc6's 7x7, as
        DeepLab built its init); ``classifier.6`` (the 1000-way layer) is ignored.
        caffe: ``conv1_1`` ... ``conv5_3``, and ``fc6``/``fc7`` (shared by all branches, 7x7/4096
        ones decimated as above) or per-branch ``fc6_{b}``/``fc7_{b}``; ``fc8*`` is ignored.
        """
        _reject_authors_naming(self, naming)
        converted, used, ignored = {}, set(), set()
        conv_names = [name for convs in VGG16_CONVS for name, _ in convs]
        if naming == "torchvision":
            for name, index in zip(conv_names, VGG16_TORCHVISION_INDICES):
                for kind in ("weight", "bias"):
                    _take(converted, used, state, f"backbone.{name}.{kind}", f"features.{index}.{kind}")
            fc_sources = {b: ("classifier.0", "classifier.3") for b in range(len(self.aspp))}
            ignored |= {k for k in state if k.startswith("classifier.6.")}
        else:
            for name in conv_names:
                for kind in ("weight", "bias"):
                    _take(converted, used, state, f"backbone.{name}.{kind}", f"{name}.{kind}")
            fc_sources = {}
            for b in range(len(self.aspp)):
                if f"fc6_{b + 1}.weight" in state:
                    fc_sources[b] = (f"fc6_{b + 1}", f"fc7_{b + 1}")
                else:
                    fc_sources[b] = ("fc6", "fc7")
            ignored |= {k for k in state if k.startswith("fc8")}
        for b, sources in fc_sources.items():
            for name, source in zip(("fc6", "fc7"), sources):
                if f"{source}.weight" in state:
                    weight, bias = _decimate(state[f"{source}.weight"], state.get(f"{source}.bias"),
                                             getattr(self.aspp[b], name), source)
                    prefix = f"aspp.{b}.{name}"
                    converted[f"{prefix}.weight"] = weight
                    used.add(f"{source}.weight")
                    if bias is not None:
                        converted[f"{prefix}.bias"] = bias
                        used.add(f"{source}.bias")
        return converted, used, ignored


class DeepLabResNet101(_DeepLab):
    """DeepLab-v2 ASPP with ResNet-101 at output stride 8 (dilations 2 and 4, frozen BN): four 3x3
    convolutions 2048 -> num_classes with rates 6/12/18/24, summed. ``width`` scales the channels,
    ``blocks`` sets the bottleneck blocks per stage; ``stride_in_1x1`` selects the MSRA/Caffe
    placement of the stride (use it with Caffe weights). ``checkpointing``: recompute each bottleneck
    block in the backward pass (the ASPP heads are single convolutions whose input the backward keeps
    anyway, so they run as they are)."""

    arch = "resnet101"

    def __init__(self, num_classes=NUM_CLASSES_WITH_BACKGROUND, width=1.0, rates=ASPP_RATES,
                 blocks=RESNET101_BLOCKS, stride_in_1x1=False, checkpointing=False):
        super().__init__()
        _check_common(num_classes, width, rates)
        self._info = dict(arch=self.arch, num_classes=num_classes, width=width, rates=list(rates),
                          blocks=list(blocks), stride_in_1x1=stride_in_1x1)
        self.backbone = DilatedResNet(blocks, width, stride_in_1x1, checkpointing)
        self.aspp = nn.ModuleList(
            nn.Conv2d(self.backbone.out_channels, num_classes, 3, padding=rate, dilation=rate)
            for rate in rates)
        for conv in self.backbone.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        for conv in self.aspp:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def convert_pretrained(self, state, naming):
        """ImageNet state dict -> ({model key: tensor}, file keys used, file keys ignored on purpose).

        torchvision: the trunk keys one-to-one; ``fc.*`` and ``*.num_batches_tracked`` ignored.
        caffe: the Caffe layer names of :func:`resnet_caffe_names`; ``fc1000.*`` ignored.
        """
        _reject_authors_naming(self, naming)
        converted, used = {}, set()
        if naming == "torchvision":
            for key in self.backbone.state_dict():
                _take(converted, used, state, f"backbone.{key}", key)
            ignored = {k for k in state if k.startswith("fc.") or k.endswith(".num_batches_tracked")}
        else:
            for model_key, file_key in resnet_caffe_names(self.backbone, "backbone.").items():
                _take(converted, used, state, model_key, file_key)
            ignored = {k for k in state if k.startswith("fc1000.")}
        return converted, used, ignored


def build_deeplab(arch, **options):
    """The DeepLab network named ``arch`` ('vgg16' or 'resnet101') with its constructor ``options``."""
    if arch == "vgg16":
        return DeepLabVGG16(**options)
    if arch == "resnet101":
        return DeepLabResNet101(**options)
    raise ValueError(f"arch: expected one of {ARCHS}, got {arch!r}")


def _first_convolution(tensors):
    """(key, output channels) of the first 4-D tensor taking 3 (RGB) input channels, or None."""
    return next(((key, int(value.shape[0])) for key, value in tensors.items()
                 if value.dim() == 4 and value.shape[1] == 3), None)


def _check_width(model, state, width_key, width):
    """ValueError when the file's first convolution has another channel count than the model's."""
    found = _first_convolution(state)
    own = _first_convolution({k: v for k, v in model.state_dict().items() if k.startswith("backbone.")})
    if found is None or own is None or found[1] == own[1]:
        return
    (file_key, file_channels), (_, own_channels) = found, own
    raise ValueError(f"weights: the file was made at another width: its first convolution {file_key} "
                     f"has {file_channels} output channels, this network's {own_channels} "
                     f"({width_key}={width:g}); {width_key}={width * file_channels / own_channels:g} "
                     f"gives {file_channels}")


def _reject_authors_naming(model, naming):
    if naming == "authors":
        raise ValueError(f"weights: the authors' SGAN naming (f_key, fc6_CAM, ...) is a stage-1 network's; "
                         f"{type(model).__name__} takes torchvision or Caffe-named weights")


def _take(converted, used, state, model_key, file_key):
    if file_key in state:
        converted[model_key] = state[file_key]
        used.add(file_key)


def _decimate(weight, bias, layer, source):
    """Reduce a fully connected ImageNet layer to ``layer``'s shape by regular subsampling.

    weight: (out, in·k·k) of a fully connected layer or (out, in, k, k) of a convolution, with out
    and in multiples of the layer's; a 7x7 kernel is subsampled every 3rd tap to 3x3. bias: (out,).
    """
    out_channels, in_channels, kernel, _ = layer.weight.shape
    if weight.dim() == 2:
        side = 1 if kernel == 1 else math.isqrt(weight.shape[1] // in_channels)
        if weight.shape[1] % (side * side):
            raise ValueError(f"{source}.weight: shape {tuple(weight.shape)} is not a flattened "
                             f"{side}x{side} kernel")
        weight = weight.reshape(weight.shape[0], -1, side, side)
    if weight.dim() != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"{source}.weight: expected (out, in) or (out, in, k, k), got {tuple(weight.shape)}")
    src_out, src_in, src_kernel, _ = weight.shape
    if src_out % out_channels or src_in % in_channels:
        raise ValueError(f"{source}.weight: shape {tuple(weight.shape)} cannot be decimated to "
                         f"{tuple(layer.weight.shape)} (channel counts must be multiples)")
    tap_step = {kernel: 1, 7: 3}.get(src_kernel) if kernel in (1, 3) else None
    if tap_step is None or (src_kernel - 1) // tap_step + 1 != kernel:
        raise ValueError(f"{source}.weight: a {src_kernel}x{src_kernel} kernel cannot be reduced "
                         f"to {kernel}x{kernel}")
    out_step, in_step = src_out // out_channels, src_in // in_channels
    weight = weight[::out_step, ::in_step, ::tap_step, ::tap_step].contiguous()
    if bias is not None:
        bias = bias[::out_step].contiguous()
    return weight, bias


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did: model keys loaded, model keys left at their fresh
    initialisation (head only) and file keys ignored on purpose (ImageNet classifier)."""
    naming: str
    loaded: list = field(default_factory=list)
    initialised: list = field(default_factory=list)
    ignored: list = field(default_factory=list)

    def summary(self):
        lines = [f"pretrained weights ({self.naming} naming): {len(self.loaded)} tensors loaded"]
        if self.initialised:
            lines.append(f"  freshly initialised (not in the file): {', '.join(self.initialised)}")
        if self.ignored:
            lines.append(f"  ignored file keys: {', '.join(self.ignored)}")
        return "\n".join(lines)


def detect_naming(state):
    """'authors' (their SGAN checkpoint), 'torchvision', 'caffe' or 'native' (this project's own keys)
    from the keys of ``state``. The authors' vgg_init.pth (``conv1_1.weight`` ...) is Caffe naming."""
    keys = set(state)
    if any(k in keys for k in AUTHORS_SGAN_KEYS):
        return "authors"
    if any(k.startswith(("backbone.", "aspp.")) for k in keys):
        return "native"
    if "features.0.weight" in keys or "layer1.0.conv1.weight" in keys:
        return "torchvision"
    if "conv1_1.weight" in keys or "res2a_branch2a.weight" in keys:
        return "caffe"
    sample = ", ".join(sorted(keys)[:5])
    raise ValueError("weights: cannot tell the naming of the state dict; expected torchvision keys "
                     "('features.0.weight' / 'layer1.0.conv1.weight'), Caffe keys ('conv1_1.weight' / "
                     f"'res2a_branch2a.weight') or this project's ('backbone.*'); got keys like {sample}")


def read_state_dict(source, what="weights"):
    """A state dict from a path (torch.save file) or a dict; unwraps {'state_dict': ...} / {'model': ...}
    and strips a DistributedDataParallel ``module.`` prefix. what: the config key of the path, for
    the errors; a file holding anything but tensors and plain values is refused unread
    (sgan.utils.io.load_torch)."""
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise ValueError(f"{what}: file not found: {os.fspath(source)}")
        source = load_torch(os.fspath(source), what)
    if not isinstance(source, dict):
        raise TypeError(f"weights: expected a path or a state dict, got {type(source).__name__}")
    for wrapper in ("state_dict", "model"):
        if isinstance(source.get(wrapper), dict):
            source = source[wrapper]
    if not all(isinstance(v, torch.Tensor) for v in source.values()):
        bad = [k for k, v in source.items() if not isinstance(v, torch.Tensor)][:5]
        raise ValueError(f"weights: expected a state dict of tensors, found non-tensor entries {bad}")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in source.items()}


def load_pretrained(model, source, naming="auto", width_option=None):
    """Load ImageNet (or this project's) weights into a DeepLab model; returns a :class:`LoadReport`.

    source: path of a state-dict file or the dict itself. naming: 'auto', 'torchvision', 'caffe',
    'native' or (stage-1 networks) 'authors'. Every backbone tensor must come from the file; head
    tensors absent from the file stay freshly initialised and are listed in the report. Raises
    ValueError listing all missing backbone keys, all unknown file keys and all shape mismatches at
    once. width_option: (config key, value) the model's width came from, e.g. ("train_seg.width",
    1.0); a file made at another width is then refused in one line saying which value of that key
    fits it.
    """
    if naming not in STAGE1_NAMINGS:
        raise ValueError(f"naming: expected one of {STAGE1_NAMINGS}, got {naming!r}")
    state = read_state_dict(source)
    naming = detect_naming(state) if naming == "auto" else naming
    if width_option is not None:
        _check_width(model, state, *width_option)
    own = model.state_dict()
    if naming == "native":
        converted = {k: v for k, v in state.items() if k in own}
        used, ignored = set(converted), set()
    else:
        converted, used, ignored = model.convert_pretrained(state, naming)
    missing = sorted(k for k in own if k.startswith("backbone.") and k not in converted)
    unexpected = sorted(set(state) - used - ignored)
    mismatched = sorted(f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                        for k, v in converted.items() if k in own and v.shape != own[k].shape)
    if missing or unexpected or mismatched:
        parts = [f"weights: the {naming}-named state dict does not fit {type(model).__name__}"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
        raise ValueError("\n  ".join(parts))
    converted = {k: v.to(own[k].dtype) for k, v in converted.items()}
    model.load_state_dict(converted, strict=False)
    return LoadReport(naming=naming, loaded=sorted(converted),
                      initialised=sorted(k for k in own if k not in converted),
                      ignored=sorted(ignored & set(state)))
