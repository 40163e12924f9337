"""Stage-0/1 networks: the baseline CAM network and SGAN with its ablation variants (Table II).

Both take images (B, 3, S, S) and optionally saliency maps (B, S, S) uint8 and return a dict:
``cam`` (B, 20, h, w), the class activation logits (classification = their global average);
SGAN also ``seed`` (B, 20, h, w), the seed branch, when the variant has it.

- ``CAMNet`` — "Baseline": modified VGG-16 + classification branch.
- ``SGANNet`` — backbone -> saliency-guided self-attention -> enhanced features, read by the
  classification branch and the seed branch. Variants (paper Table II):
  ``sgan`` (everything), ``sgan-seed`` (no seed branch and no seed loss),
  ``sgan-sal-seed`` (no seed branch and no saliency: the attention sees all positions as one
  group, i.e. plain self-attention).

Paper vs authors' choices (config section ``model``, docs/design.md §5): ``classifier: paper`` is a
1×1 conv C -> 20 without bias on the features (CAM + GAP); ``authors`` is 3×3 conv C -> 1024·width,
ReLU, dropout, 1×1 conv -> 20 without bias. ``key_channels: half`` (authors, Ck = C/2) or ``full``
(paper, Ck = C); ``attention_preset`` official/paper; the saliency mask is the map resized to the
feature size (``saliency_resize``: bilinear, or the authors' corner_aligned zoom), /255 >
``saliency_threshold``, with the 1-pixel border forced non-salient when ``saliency_border``
(authors). The seed branch is one ``seed_branch_kernel``×``seed_branch_kernel``
conv C -> 20 on the enhanced features. ``init``: the classifier and seed-branch convolutions get
xavier-uniform weights and zero biases (``xavier``), or keep ``nn.Conv2d``'s own initialisation,
weights and biases uniform in ±1/sqrt(fan_in) (``pytorch``, the authors'); the attention's key and
query convolutions keep ``nn.Conv2d``'s in both.

:func:`build_network` builds either from the config and loads ImageNet weights; the returned
``model_info`` (stored in checkpoints) rebuilds it with :func:`network_from_info`.

Larger inputs: ``checkpointing=True`` (constructor argument of both networks, off by default)
recomputes each backbone conv block in the backward pass instead of keeping its activations
(sgan.models.checkpoint); it is how the network runs, not what it is, so it stays out of the options
and the model_info. Channels-last: ``network.to(memory_format=torch.channels_last)`` with images in
that layout; the attention operator reads its inputs as contiguous (B, C, H·W), so it copies them
out of channels-last and returns contiguous NCHW (the classifier's convolutions take either).

The authors' weights (yaoqi-zd/SGAN): their ``vgg_init.pth`` names the backbone like Caffe
(``conv1_1`` ... ``conv5_3``) and loads as such; their SGAN checkpoints (``model_iter_8000.pth``)
load with naming ``authors`` (:func:`convert_authors`) into ``SGANNet`` with ``classifier: authors``
and ``key_channels: half``, and :func:`authors_network` builds that network for the seeds step.
"""
import pickle

import torch
from torch import nn

from sgan.data.saliency import MASK_RESIZES, saliency_to_mask
from sgan.data.voc_classes import NUM_CLASSES
from sgan.models.attention import SaliencyGuidedAttention
from sgan.models.deeplab import STAGE1_NAMINGS, detect_naming, load_pretrained, read_state_dict
from sgan.models.vgg import VGG16_CONVS_PER_BLOCK, VGG16Stride8, convert_vgg16
from sgan.models.width import scaled_channels
from sgan.utils.logging import get_logger

VARIANTS = ("sgan", "sgan-seed", "sgan-sal-seed")
CLASSIFIERS = ("paper", "authors")
INITS = ("xavier", "pytorch")  # of the new layers: xavier-uniform / zero bias, or nn.Conv2d's defaults

# the config section `model`, registered by sgan.pipeline.register_sections
MODEL_SECTION = dict(defaults={
    "weights": None,
    "weights_naming": "auto",
    "width": 1.0,
    "convs_per_block": list(VGG16_CONVS_PER_BLOCK),
    "classifier": "paper",
    "classifier_hidden": 1024,
    "dropout": 0.5,
    "attention_preset": "official",
    "key_channels": "half",
    "saliency_threshold": 0.06,
    "saliency_border": True,
    "saliency_resize": "bilinear",
    "seed_branch_kernel": 1,
    "init": "xavier",
}, choices={"weights_naming": STAGE1_NAMINGS, "classifier": CLASSIFIERS, "init": INITS,
            "attention_preset": ("official", "paper"), "key_channels": ("half", "full"),
            "saliency_resize": MASK_RESIZES, "seed_branch_kernel": (1, 3)},
    bounds={"width": "(0, inf)", "convs_per_block": "[1, 3]", "classifier_hidden": "[1, inf)",
            "dropout": "[0, 1)", "saliency_threshold": "[0, 1]"},
    doc="stage-1 networks (baseline CAM and SGAN): weights is a local ImageNet VGG-16 file (or the "
        "authors' vgg_init.pth / SGAN checkpoint, naming authors); width and convs_per_block shrink "
        "the backbone (demo/tests); classifier_hidden is scaled by width; saliency_resize: how the "
        "saliency reaches the feature size for the mask (bilinear, or corner_aligned as the authors); init: "
        "xavier (xavier-uniform weights, zero biases) or pytorch (nn.Conv2d's defaults, the authors') for "
        "the classifier and seed-branch convolutions")


def initialise(module, init):
    """Re-initialise every nn.Conv2d in ``module`` for ``init`` 'xavier' (xavier-uniform weights, zero
    biases); 'pytorch' leaves nn.Conv2d's own initialisation (uniform in ±1/sqrt(fan_in))."""
    if init not in INITS:
        raise ValueError(f"init: expected one of {INITS}, got {init!r}")
    if init == "pytorch":
        return
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d):
            nn.init.xavier_uniform_(conv.weight)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)


class ClassificationBranch(nn.Module):
    """Features (B, C, h, w) -> CAM logits (B, 20, h, w); ``kind`` 'paper' or 'authors', ``init``
    'xavier' or 'pytorch' (module doc)."""

    def __init__(self, in_channels, kind="paper", hidden=1024, dropout=0.5, init="xavier"):
        super().__init__()
        if kind not in CLASSIFIERS:
            raise ValueError(f"classifier: expected one of {CLASSIFIERS}, got {kind!r}")
        if kind == "paper":
            self.layers = nn.Conv2d(in_channels, NUM_CLASSES, 1, bias=False)
        else:
            self.layers = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(inplace=True),
                                        nn.Dropout2d(dropout), nn.Conv2d(hidden, NUM_CLASSES, 1, bias=False))
        initialise(self, init)

    def forward(self, features):
        return self.layers(features)


class _Stage1Net(nn.Module):
    def _build_backbone_and_classifier(self, options, checkpointing):
        self.backbone = VGG16Stride8(options["width"], options["convs_per_block"], checkpointing)
        # options.get: "init" is absent from the model_info of older checkpoints
        self.classifier = ClassificationBranch(self.backbone.out_channels, options["classifier"],
                                               scaled_channels(options["classifier_hidden"], options["width"]),
                                               options["dropout"], options.get("init", "xavier"))

    def convert_pretrained(self, state, naming):
        """For sgan.models.load_pretrained: ImageNet VGG-16 (or the authors' SGAN) keys -> model keys."""
        if naming == "authors":
            return convert_authors(self, state)
        return convert_vgg16(self.backbone, state, naming)


class CAMNet(_Stage1Net):
    """Baseline (Table II): modified VGG-16 + classification branch. forward(images) -> {"cam"}.

    checkpointing: recompute the backbone's conv blocks in the backward pass (module doc)."""

    kind = "cam"

    def __init__(self, options, checkpointing=False):
        super().__init__()
        self._build_backbone_and_classifier(options, checkpointing)

    def forward(self, images, saliency=None):
        return {"cam": self.classifier(self.backbone(images))}


class SGANNet(_Stage1Net):
    """SGAN and its variants; forward(images, saliency) -> {"cam", ["seed"]} (module doc).

    checkpointing: recompute the backbone's conv blocks in the backward pass (module doc)."""

    kind = "sgan"

    def __init__(self, options, variant="sgan", backend="auto", checkpointing=False):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.uses_saliency = variant != "sgan-sal-seed"
        self.saliency_threshold = float(options["saliency_threshold"])
        self.saliency_border = bool(options["saliency_border"])
        self.saliency_resize = options.get("saliency_resize", "bilinear")   # absent in older checkpoints
        self._build_backbone_and_classifier(options, checkpointing)
        channels = self.backbone.out_channels
        key_channels = max(1, channels // 2) if options["key_channels"] == "half" else channels
        self.attention = SaliencyGuidedAttention(channels, key_channels, preset=options["attention_preset"],
                                                 backend=backend)
        self.seed_branch = None
        if variant == "sgan":
            kernel = int(options["seed_branch_kernel"])
            self.seed_branch = nn.Conv2d(channels, NUM_CLASSES, kernel, padding=kernel // 2)
            initialise(self.seed_branch, options.get("init", "xavier"))

    def saliency_mask(self, saliency, features):
        """Bool (B, h, w) mask at the features' size; all True for the variant without saliency."""
        B, _, h, w = features.shape
        if not self.uses_saliency:
            return torch.ones(B, h, w, dtype=torch.bool, device=features.device)
        if saliency is None:
            raise ValueError(f"saliency: the {self.variant} variant needs saliency maps (B, H, W), got None")
        return saliency_to_mask(saliency, (h, w), self.saliency_threshold, self.saliency_border,
                                self.saliency_resize).to(features.device)

    def attention_inputs(self, images, saliency=None):
        """(features (B, C, h, w), key, query, mask): what the attention operator receives."""
        features = self.backbone(images)
        return features, self.attention.key(features), self.attention.query(features), \
            self.saliency_mask(saliency, features)

    def forward(self, images, saliency=None):
        features = self.backbone(images)
        enhanced = self.attention(features, self.saliency_mask(saliency, features))
        out = {"cam": self.classifier(enhanced)}
        if self.seed_branch is not None:
            out["seed"] = self.seed_branch(enhanced)
        return out


# The authors' SGAN modules -> this project's. Their similarity is sim_ij = Q_i · K_j with their query
# f_query on the row side i; here the row side is the key (P_ij = K_i · Q_j), so their f_query is our
# key and their f_key our query.
AUTHORS_MODULES = {"f_query": "attention.key", "f_key": "attention.query", "fc6_CAM": "classifier.layers.0",
                   "fc8": "classifier.layers.3", "fc9": "seed_branch"}
# Heads a vgg_init.pth may carry beside the convolutions; nothing of this network reads them.
AUTHORS_IGNORED_PREFIXES = ("fc6.", "fc7.", "fc8_")


def convert_authors(network, state):
    """The authors' SGAN state dict -> ({model key: tensor}, file keys used, file keys ignored).

    Backbone convolutions ``conv1_1`` ... ``conv5_3`` with or without their ``backbone.`` prefix;
    ``f_query``/``f_key`` -> attention key/query (see AUTHORS_MODULES), ``gamma`` -> attention.gamma,
    ``fc6_CAM``/``fc8`` -> the authors' classifier, ``fc9`` -> the seed branch. A key whose module
    this network lacks stays unused, so sgan.models.load_pretrained reports it as unexpected.
    """
    if "fc6_CAM.weight" in state and not isinstance(network.classifier.layers, nn.Sequential):
        raise ValueError("weights: fc6_CAM is the authors' classification branch (3x3 conv, ReLU, dropout, "
                         "1x1 conv); set model.classifier=authors to load it")
    convs = {}
    for key in state:
        name = key[len("backbone."):] if key.startswith("backbone.") else key
        if name.startswith("conv"):
            convs[name] = key
    converted, conv_used, conv_ignored = convert_vgg16(network.backbone, {n: state[k] for n, k in convs.items()},
                                                       "caffe")
    used = {convs[name] for name in conv_used}
    ignored = {convs[name] for name in conv_ignored} | {k for k in state if k.startswith(AUTHORS_IGNORED_PREFIXES)}
    own = network.state_dict()
    pairs = [(f"{theirs}.{kind}", f"{ours}.{kind}") for theirs, ours in AUTHORS_MODULES.items()
             for kind in ("weight", "bias")] + [("gamma", "attention.gamma")]
    for file_key, model_key in pairs:
        if file_key in state and model_key in own:
            converted[model_key] = state[file_key]
            used.add(file_key)
    return converted, used, ignored


def read_authors_state(path):
    """The state dict in ``path`` when it is the authors' SGAN checkpoint, else None (unreadable too)."""
    try:
        state = read_state_dict(path)
    except (ValueError, TypeError, RuntimeError, pickle.UnpicklingError):
        return None
    try:
        return state if detect_naming(state) == "authors" else None
    except ValueError:
        return None


def authors_network(cfg, state, backend="auto", source="weights"):
    """(SGANNet with the authors' SGAN ``state`` loaded, model_info). The network is built from
    cfg.model as variant ``sgan``; every parameter must come from the file; data.normalisation auto
    means Caffe BGR (theirs)."""
    options = {k: v for k, v in cfg.model.to_dict().items() if k not in ("weights", "weights_naming")}
    info = {"kind": "sgan", "variant": "sgan", "options": options,
            "normalisation": resolve_normalisation(cfg.data.normalisation, "authors")}
    network = network_from_info(info, backend)
    report = load_pretrained(network, state, "authors")
    if report.initialised:
        raise ValueError(f"{source}: the authors' SGAN checkpoint leaves {', '.join(report.initialised)} "
                         "unset; check model.classifier=authors, model.key_channels=half and the width")
    return network, info


def network_from_info(model_info, backend="auto", checkpointing=False):
    """Rebuild a network (random weights) from the ``model_info`` stored in a checkpoint;
    ``checkpointing`` as in the networks' constructors (a way of running, not part of model_info)."""
    if model_info.get("kind") == "cam":
        return CAMNet(model_info["options"], checkpointing)
    if model_info.get("kind") == "sgan":
        return SGANNet(model_info["options"], model_info["variant"], backend, checkpointing)
    raise ValueError(f"model_info: expected kind 'cam' or 'sgan', got {model_info.get('kind')!r}")


def resolve_normalisation(normalisation, weights_naming):
    """``data.normalisation`` with ``auto`` resolved: caffe_bgr for Caffe (or the authors') weights, else
    imagenet_rgb."""
    if normalisation != "auto":
        return normalisation
    return "caffe_bgr" if weights_naming in ("caffe", "authors") else "imagenet_rgb"


def build_network(cfg, kind, variant=None, checkpointing=False):
    """(network with ImageNet weights loaded, model_info) from cfg.model and cfg.data.normalisation;
    ``checkpointing``: recompute the backbone's conv blocks in the backward pass."""
    options = {k: v for k, v in cfg.model.to_dict().items() if k not in ("weights", "weights_naming")}
    info = {"kind": kind, "variant": variant, "options": options}
    network = network_from_info(info, cfg.backend, checkpointing)
    logger = get_logger("models")
    naming = None
    if cfg.model.weights:
        state = read_state_dict(cfg.model.weights, "model.weights")
        report = load_pretrained(network, state, cfg.model.weights_naming,
                                 width_option=("model.width", cfg.model.width))
        naming = report.naming
        logger.info("%s", report.summary().replace("\n", "; "))
    else:
        logger.warning("model.weights is not set: the %s network starts from random weights", kind)
    info["normalisation"] = resolve_normalisation(cfg.data.normalisation, naming)
    return network, info
