"""Faithful to the authors' code where the config says so (configs/voc_sgan_authors.yaml, docs/design.md §5).

The authors' rules are stated here again, from docs/design.md and docs/fidelity.md, with
scipy.ndimage.zoom (the function their code resizes with) as the independent reference for
corner-aligned resizing; the project's code (torch) must agree with these statements on every pixel
and every mask position.
"""
import json
import os

import numpy as np
import pytest
import scipy.ndimage as nd
import torch
from PIL import Image

from sgan import cli
from sgan.data.saliency import saliency_to_mask
from sgan.data.voc import CAFFE_BGR_MEAN, VOCTrainSet, VOCPaths, resize_as
from sgan.data.zoom import zoom_linear, zoom_nearest
from sgan.losses import PROB_FLOOR
from sgan.models import load_pretrained
from sgan.models.sgan_net import SGANNet
from sgan.models.vgg import VGG16Stride8
from sgan.pipeline import load_config
from sgan.seedmaps import class_scores, make_seeds
from tests.pipeline.test_stage1_pipeline import make_tiny_voc, tiny_config, write_yaml

AUTHORS_CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "configs", "voc_sgan_authors.yaml")
PAPER_CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "configs", "voc_sgan.yaml")
TINY_AUTHORS = {"width": 0.0625, "convs_per_block": [1, 1, 1, 1, 1], "classifier": "authors",
                "classifier_hidden": 256, "dropout": 0.5, "attention_preset": "official", "key_channels": "half",
                "saliency_threshold": 0.06, "saliency_border": True, "saliency_resize": "corner_aligned",
                "seed_branch_kernel": 1, "init": "pytorch"}
# the authors' SGAN module -> this project's (their f_query is on the row side: our key)
AUTHORS_NAMES = {"f_query": "attention.key", "f_key": "attention.query", "fc6_CAM": "classifier.layers.0",
                 "fc8": "classifier.layers.3", "fc9": "seed_branch"}


# ------------------------------------------------------------------------------------------------
# statements of the authors' rules (docs/design.md §5), with scipy

def authors_mask(saliency, input_size, feature_size, threshold=0.06):
    """Saliency uint8 (H, W) -> bool mask: zoomed (order 1) to input_size², then to feature_size²,
    each time back to uint8; / 255 > threshold; the 1-pixel border non-salient."""
    H, W = saliency.shape
    resized = nd.zoom(saliency, (input_size / H, input_size / W), order=1)
    reduced = nd.zoom(resized, (feature_size / input_size, feature_size / input_size), order=1)
    mask = reduced.astype(np.float32) / 255 > threshold
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = False
    return mask


def authors_seeds(cam, seg, saliency, labels, alpha=0.25, beta=0.06):
    """The authors' seeds: raw cam + seg logits (20, h, w), fg score > alpha * max, bg = saliency / 255
    zoomed (order 1) to (h, w) < beta; every label (background too) written by decreasing area, equal
    areas lower label last; boat/train on background -> background; zoomed (order 0) to (H, W)."""
    h, w = cam.shape[1:]
    H, W = saliency.shape
    score = cam + seg
    claims = {}
    for c in labels:
        region = score[c - 1] > np.float32(alpha) * score[c - 1].max()
        if region.any():
            claims[c] = region
    background = nd.zoom(saliency.astype(np.float32) / 255, (h / H, w / W), order=1) < beta
    if background.any():
        claims[0] = background
    label_map = np.full((h, w), 255, np.uint8)
    for label in sorted(claims, key=lambda k: (int(claims[k].sum()), k), reverse=True):
        label_map[claims[label]] = label
    label_map[np.isin(label_map, (4, 19)) & background] = 0
    seeds = nd.zoom(label_map, (H / h, W / w), order=0)
    assert seeds.shape == (H, W)
    return seeds


class FixedMaps(torch.nn.Module):
    """A stand-in network whose CAM and seed-branch logits (20, h, w) are given."""

    def __init__(self, cam, seed):
        super().__init__()
        self.cam, self.seed = torch.as_tensor(cam)[None], torch.as_tensor(seed)[None]

    def forward(self, images, saliency=None):
        return {"cam": self.cam.expand(len(images), -1, -1, -1), "seed": self.seed.expand(len(images), -1, -1, -1)}


def seeds_through_the_step(cam, seed, saliency, labels, rule, resolution, alpha=0.25, use_seed_branch=True):
    """class_scores + make_seeds, as sgan.pipeline._stage1.write_seeds calls them."""
    image = np.zeros((*saliency.shape, 3), np.uint8)
    scores = class_scores(FixedMaps(cam, seed), image, saliency, labels, 32, "caffe_bgr",
                          use_seed_branch=use_seed_branch, rule=rule, resolution=resolution)
    return make_seeds(scores.numpy(), saliency, labels, alpha, 0.06, rule, resolution)


def smooth_saliency(rng, size, cells=6):
    """uint8 (H, W) blobs: a coarse random field enlarged, like a saliency map."""
    coarse = rng.uniform(-1.0, 1.0, (cells, cells))
    field = np.asarray(Image.fromarray(coarse.astype(np.float32)).resize(size[::-1], Image.BILINEAR))
    return np.clip(128 + 400 * field, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# corner-aligned resizing, value for value

@pytest.mark.parametrize("kind", ["uint8", "uint8_steps_of_5", "float32", "rgb"])
def test_zoom_linear_matches_scipy_zoom_order_1(kind):
    rng = np.random.default_rng(["uint8", "uint8_steps_of_5", "float32", "rgb"].index(kind))
    for _ in range(25):
        H, W = (int(v) for v in rng.integers(2, 90, 2))
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        if kind == "uint8":
            image = rng.integers(0, 256, (H, W), dtype=np.uint8)
        elif kind == "uint8_steps_of_5":   # neighbours 5 apart: many exact .5 values to round
            image = (rng.integers(0, 52, (H, W)) * 5).astype(np.uint8)
        elif kind == "float32":
            image = rng.integers(0, 256, (H, W)).astype(np.float32) / 255
        else:
            image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        expected = nd.zoom(image, (h / H, w / W) + ((1,) if image.ndim == 3 else ()), order=1)
        if expected.shape[:2] != (h, w):   # scipy rounds the requested shape; compare at its shape
            h, w = expected.shape[:2]
        found = resize_as(image, (h, w), "corner_aligned") if kind == "rgb" else zoom_linear(image, (h, w))
        assert found.dtype == expected.dtype
        np.testing.assert_array_equal(found, expected, err_msg=f"{(H, W)} -> {(h, w)}")


def test_zoom_nearest_matches_scipy_zoom_order_0_with_its_overrun_row():
    rng = np.random.default_rng(4)
    for H, W, h, w in [(41, 41, 282, 300), (41, 41, 375, 500), (41, 41, 148, 333), (7, 9, 20, 5), (30, 2, 3, 17)]:
        labels = rng.integers(0, 22, (H, W))
        expected = nd.zoom(labels, (h / H, w / W), order=0)
        np.testing.assert_array_equal(zoom_nearest(labels, (h, w)), expected)
    # 41 -> 282 rows: 281 * (40 / 281) lands past row 40, and scipy writes 0 into that last row
    assert (nd.zoom(np.full((41, 41), 7), (282 / 41, 1), order=0)[-1] == 0).all()


# ------------------------------------------------------------------------------------------------
# the saliency mask

def test_authors_mask_on_every_position_of_voc_sized_maps():
    rng = np.random.default_rng(5)
    for size in [(375, 500), (500, 333), (282, 300), (97, 130)]:
        saliency = smooth_saliency(rng, size)
        expected = authors_mask(saliency, 321, 41)
        at_input = resize_as(saliency, (321, 321), "corner_aligned")     # the loader (data.resize)
        found = saliency_to_mask(at_input, (41, 41), 0.06, True, "corner_aligned").numpy()
        np.testing.assert_array_equal(found, expected, err_msg=str(size))
        assert 0.2 < expected.mean() < 0.8


def test_issue_case_a_step_at_column_26_of_a_375x500_map():
    saliency = np.zeros((375, 500), np.uint8)
    saliency[:, 26:] = 255
    first_column = {}
    for resize, mask_resize in (("pil", "bilinear"), ("corner_aligned", "corner_aligned")):
        mask = saliency_to_mask(resize_as(saliency, (321, 321), resize), (41, 41), 0.06, True, mask_resize)
        first_column[resize] = int(np.nonzero(mask[20].numpy())[0][0])
    assert first_column == {"corner_aligned": 3, "pil": 2}
    assert np.nonzero(authors_mask(saliency, 321, 41)[20])[0][0] == 3


def test_sgan_network_mask_and_loader_follow_the_config(tmp_path):
    voc, saliency_dir = make_tiny_voc(tmp_path / "voc", num_train=2, size=52)
    paths = VOCPaths(voc)
    ids = sorted(os.path.splitext(f)[0] for f in os.listdir(saliency_dir))[:2]
    dataset = VOCTrainSet(paths, ids, {i: [1] for i in ids}, 40, "caffe_bgr", flip=False,
                          saliency_dir=saliency_dir, resize="corner_aligned")
    network = SGANNet(TINY_AUTHORS, "sgan", backend="reference")
    for index, image_id in enumerate(ids):
        sample = dataset[(index, 0)]
        saliency = np.asarray(Image.open(os.path.join(saliency_dir, image_id + ".png")))
        np.testing.assert_array_equal(sample["saliency"].numpy(), nd.zoom(saliency, (40 / 52, 40 / 52), order=1))
        rgb = np.asarray(Image.open(paths.image(image_id)).convert("RGB"))
        bgr = np.asarray(nd.zoom(rgb[:, :, ::-1], (40 / 52, 40 / 52, 1), order=1), np.float32)
        bgr -= np.array(CAFFE_BGR_MEAN)   # float32 in place, as the authors' loader does
        np.testing.assert_array_equal(sample["image"].numpy(), bgr.transpose(2, 0, 1))
        features = torch.zeros(1, 1, 5, 5)
        mask = network.saliency_mask(sample["saliency"][None], features)[0].numpy()
        np.testing.assert_array_equal(mask, authors_mask(saliency, 40, 5))


# ------------------------------------------------------------------------------------------------
# seeds: the cases that separate the rules, then generated data

def test_issue_case_a_background_larger_than_nothing_is_written_in_area_order():
    labels = [15]
    score = np.zeros((20, 41, 41), np.float32)
    score[14, :31, :31] = 1.0                                   # the class: 961 positions
    saliency = np.full((41, 41), 255, np.uint8)
    saliency[:15, :31] = 0                                      # 465 of them also background
    saliency[:35, 31:] = 0
    saliency[35, 31:36] = 0                                     # background: 820 positions
    background = saliency == 0
    assert (score[14] > 0).sum() == 961 and background.sum() == 820 and (background & (score[14] > 0)).sum() == 465
    for resolution in ("image", "feature"):
        seeds = make_seeds(score, saliency, labels, 0.25, 0.06, "authors", resolution)
        # the smaller region (background) is written last and wins all 465 shared positions
        assert (seeds[background & (score[14] > 0)] == 0).all() and (seeds[score[14] > 0] == 15).sum() == 961 - 465
        np.testing.assert_array_equal(seeds, authors_seeds(score, np.zeros_like(score), saliency, labels))
    # the paper's rule leaves every contested position unlabelled
    assert (make_seeds(score, saliency, labels, 0.25, 0.06, "paper")[background & (score[14] > 0)] == 255).all()


def test_issue_case_b_raw_logits_summed_without_relu_or_normalisation():
    labels = [7]
    cam = np.full((20, 6, 6), -1.0, np.float32)
    seg = np.full((20, 6, 6), -1.0, np.float32)
    cam[6, 1, 1], seg[6, 1, 1] = 4.0, 4.0      # the peak: cam = seg = 4, sum 8
    cam[6, 3, 4], seg[6, 3, 4] = 4.0, -3.0     # sum 1 < 0.25 * 8: not the authors' foreground
    saliency = np.full((6, 6), 255, np.uint8)   # nothing is background
    for resolution in ("feature", "image"):
        authors = seeds_through_the_step(cam, seg, saliency, labels, "authors", resolution)
        np.testing.assert_array_equal(authors, authors_seeds(cam, seg, saliency, labels))
        assert authors[1, 1] == 7 and authors[3, 4] == 255
        # the paper's: ReLU, each map / its max, summed: 1 + 0 >= 0.25 * 2
        assert seeds_through_the_step(cam, seg, saliency, labels, "paper", resolution)[3, 4] == 7


def test_issue_case_c_decided_at_feature_resolution_and_enlarged_nearest():
    rng = np.random.default_rng(6)
    labels = [3, 12]
    cam = rng.normal(size=(20, 5, 5)).astype(np.float32)
    seg = rng.normal(size=(20, 5, 5)).astype(np.float32)
    saliency = smooth_saliency(rng, (23, 31), cells=4)
    feature = seeds_through_the_step(cam, seg, saliency, labels, "authors", "feature")
    np.testing.assert_array_equal(feature, authors_seeds(cam, seg, saliency, labels))
    image = seeds_through_the_step(cam, seg, saliency, labels, "authors", "image")
    assert (feature != image).mean() > 0.05     # bilinear scores against full-resolution saliency differ
    # the 5 x 5 decision enlarged: pixel (i, j) copies feature position (floor(i * 4/22 + 0.5), ...)
    rows = np.floor(np.arange(23) * (4 / 22) + 0.5).astype(int)
    columns = np.floor(np.arange(31) * (4 / 30) + 0.5).astype(int)
    first = {r: int(np.argmax(rows == r)) for r in range(5)}, {c: int(np.argmax(columns == c)) for c in range(5)}
    assert (feature == feature[[first[0][r] for r in rows]][:, [first[1][c] for c in columns]]).all()


def test_paper_rule_at_feature_resolution_follows_its_statement():
    rng = np.random.default_rng(7)
    labels = [1, 5, 9]
    cam = rng.normal(size=(20, 9, 9)).astype(np.float32)
    seg = rng.normal(size=(20, 9, 9)).astype(np.float32)
    saliency = smooth_saliency(rng, (40, 50), cells=5)
    found = seeds_through_the_step(cam, seg, saliency, labels, "paper", "feature", alpha=0.3)
    scores = {c: np.maximum(cam[c - 1], 0) / np.maximum(cam[c - 1], 0).max()
              + np.maximum(seg[c - 1], 0) / np.maximum(seg[c - 1], 0).max() for c in labels}
    claims = {c: s >= np.float32(0.3) * s.max() for c, s in scores.items()}
    claims[0] = nd.zoom(saliency.astype(np.float32) / 255, (9 / 40, 9 / 50), order=1) < 0.06
    count = sum(m.astype(int) for m in claims.values())
    label_map = np.full((9, 9), 255, np.uint8)
    for label, region in claims.items():
        label_map[region & (count == 1)] = label
    np.testing.assert_array_equal(found, nd.zoom(label_map, (40 / 9, 50 / 9), order=0))
    assert len(np.unique(found)) >= 3


@pytest.mark.parametrize("seed", range(6))
def test_authors_seeds_on_generated_data_agree_on_every_pixel(seed):
    rng = np.random.default_rng(100 + seed)
    size = [(375, 500), (282, 300), (333, 500), (64, 48), (41, 41), (148, 90)][seed]
    labels = sorted(int(c) for c in rng.choice(np.arange(1, 21), size=int(rng.integers(1, 4)), replace=False))
    if seed % 2:
        labels = sorted(set(labels) | {4})            # boat: background wins its saliency-background positions
    cam = (2.0 * rng.normal(size=(20, 41, 41))).astype(np.float32)
    seg = (2.0 * rng.normal(size=(20, 41, 41))).astype(np.float32)
    saliency = smooth_saliency(rng, size)
    found = seeds_through_the_step(cam, seg, saliency, labels, "authors", "feature")
    np.testing.assert_array_equal(found, authors_seeds(cam, seg, saliency, labels))
    assert set(np.unique(found)) >= {0, 255} and len(np.unique(found)) >= 3


# ------------------------------------------------------------------------------------------------
# the authors' weights

def _authors_state(network):
    """The state dict of ``network`` under the authors' SGAN names."""
    state = {}
    for key, value in network.state_dict().items():
        if key.startswith("backbone."):
            state[key] = value.clone()
        elif key == "attention.gamma":
            state["gamma"] = value.clone()
        else:
            theirs = next(t for t, ours in AUTHORS_NAMES.items() if key.startswith(ours + "."))
            state[theirs + key[len(AUTHORS_NAMES[theirs]):]] = value.clone()
    return state


def authors_attention(x, state, mask, eps=1e-5):
    """Their attention (docs/design.md §2 'official', with their names): Q = f_query(x), K = f_key(x),
    sim_ij = Ck^-1/2 Q_i · K_j; salient rows: (sim_ij − min_j(sim_ij·m_j)) · m_j / (Σ_j … + eps);
    non-salient rows: (1 − m_j) / (n_bg + eps); E = gamma · sim V + x with V = x."""
    B, C, H, W = x.shape
    N = H * W
    conv = lambda name: torch.nn.functional.conv2d(x, state[f"{name}.weight"], state[f"{name}.bias"]).reshape(B, -1, N)
    Q, K, V = conv("f_query"), conv("f_key"), x.reshape(B, C, N)
    sim = Q.transpose(1, 2) @ K * Q.shape[1] ** -0.5
    m = mask.reshape(B, N).to(x.dtype)
    fg = m[:, :, None] * m[:, None, :]
    bg = (1 - m)[:, :, None] * (1 - m)[:, None, :]
    weights = sim * fg
    weights = (weights - weights.amin(-1, keepdim=True)) * fg
    weights = weights / (weights.sum(-1, keepdim=True) + eps) + bg / (bg.sum(-1, keepdim=True) + eps)
    context = weights @ V.transpose(1, 2)
    return state["gamma"] * context.transpose(1, 2).reshape(B, C, H, W) + x


def test_an_authors_sgan_checkpoint_loads_and_gives_their_attention():
    torch.manual_seed(0)
    source = SGANNet(TINY_AUTHORS, "sgan", backend="reference").double()
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.normal_(0.0, 0.3)
        source.attention.gamma.fill_(0.7)
    state = _authors_state(source)
    network = SGANNet(TINY_AUTHORS, "sgan", backend="reference").double().eval()
    report = load_pretrained(network, state)               # auto: the authors' naming is detected
    assert report.naming == "authors" and not report.initialised and not report.ignored
    x = torch.relu(torch.randn(2, 32, 6, 7, dtype=torch.float64))
    mask = torch.rand(2, 6, 7) > 0.4
    expected = authors_attention(x, state, mask)
    torch.testing.assert_close(network.attention(x, mask), expected, rtol=1e-12, atol=1e-12)
    # with f_query and f_key the other way round the output differs: the naming is not symmetric
    swapped = dict(state, **{"f_query.weight": state["f_key.weight"], "f_key.weight": state["f_query.weight"],
                             "f_query.bias": state["f_key.bias"], "f_key.bias": state["f_query.bias"]})
    assert not torch.allclose(authors_attention(x, swapped, mask), expected, rtol=1e-6)


def test_authors_checkpoint_needs_their_classifier_and_vgg_init_loads_as_caffe():
    network = SGANNet(TINY_AUTHORS, "sgan", backend="reference")
    state = _authors_state(network)
    with pytest.raises(ValueError, match="model.classifier=authors"):
        load_pretrained(SGANNet(dict(TINY_AUTHORS, classifier="paper"), "sgan"), state)
    # vgg_init.pth: the authors' backbone names (conv1_1 ... conv5_3) without prefix, beside fc6/fc7 heads
    vgg_init = {key[len("backbone."):]: value for key, value in state.items() if key.startswith("backbone.")}
    vgg_init.update({"fc6.weight": torch.zeros(4, 2, 3, 3), "fc7.weight": torch.zeros(4, 4, 1, 1)})
    for naming in ("auto", "authors"):
        fresh = SGANNet(TINY_AUTHORS, "sgan", backend="reference")
        report = load_pretrained(fresh, vgg_init, naming)
        assert report.naming == ("caffe" if naming == "auto" else "authors")
        assert torch.equal(fresh.backbone.conv3_1.weight, network.backbone.conv3_1.weight)
        assert "attention.key.weight" in report.initialised and "fc6.weight" in report.ignored


# ------------------------------------------------------------------------------------------------
# the config, end to end through the CLI: an authors' checkpoint, their resizing, mask and seed rule

def test_seeds_step_under_the_authors_config_reproduces_their_seeds(tmp_path):
    voc, saliency_dir = make_tiny_voc(tmp_path / "voc", num_train=4, size=52)
    torch.manual_seed(1)
    source = SGANNet(TINY_AUTHORS, "sgan", backend="reference")
    with torch.no_grad():
        source.attention.gamma.fill_(0.8)
        for tensor in [*source.classifier.parameters(), *source.seed_branch.parameters()]:
            tensor.normal_(0.0, 0.5)
    checkpoint = tmp_path / "model_iter_8000.pth"
    torch.save(_authors_state(source), checkpoint)
    config = tiny_config(voc, saliency_dir, tmp_path / "work")
    config.update({"_base_": os.path.abspath(AUTHORS_CONFIG), "seeds": {"checkpoint": str(checkpoint)}})
    config["data"]["input_size"] = 56                      # 7 x 7 features
    config["model"].update({"weights": None, "classifier_hidden": 256})
    path = write_yaml(tmp_path / "authors.yaml", config)
    assert cli.main(["labels", path]) == 0 and cli.main(["seeds", path]) == 0

    source.eval()
    with open(tmp_path / "work" / "labels.json") as stream:
        labels = json.load(stream)["labels"]
    paths = VOCPaths(voc)
    for image_id in sorted(labels):
        rgb = np.asarray(Image.open(paths.image(image_id)).convert("RGB"))
        saliency = np.asarray(Image.open(os.path.join(saliency_dir, image_id + ".png")))
        bgr = np.asarray(nd.zoom(rgb[:, :, ::-1], (56 / 52, 56 / 52, 1), order=1), np.float32)
        bgr -= np.array(CAFFE_BGR_MEAN)
        with torch.no_grad():
            features = source.backbone(torch.from_numpy(bgr.transpose(2, 0, 1).copy())[None])
            mask = torch.from_numpy(authors_mask(saliency, 56, features.shape[-1]))[None]
            enhanced = source.attention(features, mask)
            cam, seg = source.classifier(enhanced)[0].numpy(), source.seed_branch(enhanced)[0].numpy()
        expected = authors_seeds(cam, seg, saliency, labels[image_id])
        written = np.asarray(Image.open(tmp_path / "work" / "seeds" / f"{image_id}.png"))
        np.testing.assert_array_equal(written, expected, err_msg=image_id)
        assert len(np.unique(written)) >= 2


# ------------------------------------------------------------------------------------------------
# the new layers' initialisation and the stage-1 seed loss

def _plain_construction(options, init):
    """The layers of SGANNet(options, "sgan") built as plain modules in the network's order, from the
    current RNG state: VGG-16 backbone, fc6_CAM (3x3 conv C -> hidden), fc8 (1x1 conv hidden -> 20, no
    bias), f_query (our key), f_key (our query), fc9 (the seed branch); with ``init`` "xavier" each
    classifier / seed conv re-drawn right after its branch is built (xavier-uniform weights, zero biases)."""
    backbone = VGG16Stride8(options["width"], options["convs_per_block"])
    channels = backbone.out_channels
    hidden = max(1, int(round(options["classifier_hidden"] * options["width"])))
    fc6 = torch.nn.Conv2d(channels, hidden, 3, padding=1)
    fc8 = torch.nn.Conv2d(hidden, 20, 1, bias=False)
    if init == "xavier":
        for conv in (fc6, fc8):
            torch.nn.init.xavier_uniform_(conv.weight)
            if conv.bias is not None:
                torch.nn.init.zeros_(conv.bias)
    key, query = torch.nn.Conv2d(channels, channels // 2, 1), torch.nn.Conv2d(channels, channels // 2, 1)
    fc9 = torch.nn.Conv2d(channels, 20, 1)
    if init == "xavier":
        torch.nn.init.xavier_uniform_(fc9.weight)
        torch.nn.init.zeros_(fc9.bias)
    return {"fc6_CAM": fc6, "fc8": fc8, "f_query": key, "f_key": query, "fc9": fc9}


def test_configs_state_the_seed_loss_floor_and_the_init():
    paper, authors = load_config(PAPER_CONFIG), load_config(AUTHORS_CONFIG)
    assert paper.train_sgan.seed_loss_floor == PROB_FLOOR and paper.model.init == "xavier"
    assert authors.train_sgan.seed_loss_floor == 0 and authors.model.init == "pytorch"


@pytest.mark.parametrize("init", ["pytorch", "xavier"])
def test_new_layers_are_what_plain_construction_gives(init):
    """init pytorch (the authors'): f_key, f_query, fc6_CAM, fc8, fc9 bit-identical to freshly
    constructed nn.Conv2d under the same RNG state, so weights and biases uniform in ±1/sqrt(fan_in);
    init xavier (the paper config): the classifier and seed convs xavier-uniform with zero biases,
    drawn as before this setting existed."""
    options = dict(TINY_AUTHORS, init=init)
    torch.manual_seed(3)
    network = SGANNet(options, "sgan", backend="reference")
    torch.manual_seed(3)
    plain = _plain_construction(options, init)
    modules = dict(network.named_modules())
    for theirs, ours in AUTHORS_NAMES.items():
        layer = modules[ours]
        assert torch.equal(layer.weight, plain[theirs].weight), theirs
        assert (layer.bias is None) == (plain[theirs].bias is None), theirs
        if layer.bias is not None:
            assert torch.equal(layer.bias, plain[theirs].bias), theirs
        fan_in = layer.weight[0].numel()
        bound = 1 / fan_in ** 0.5
        if init == "pytorch" or theirs in ("f_key", "f_query"):
            for values in [layer.weight.detach()] + ([layer.bias.detach()] if layer.bias is not None else []):
                assert float(values.abs().max()) <= bound, theirs
            assert float(layer.weight.detach().abs().max()) > 0.9 * bound, theirs        # spread over the whole range
        else:
            fan_out = layer.weight.shape[0] * layer.weight[0, 0].numel()
            assert float(layer.weight.detach().abs().max()) <= (6 / (fan_in + fan_out)) ** 0.5, theirs
            assert layer.bias is None or not layer.bias.any(), theirs


def test_train_sgan_under_the_authors_config_uses_their_seed_loss_and_init(tmp_path, monkeypatch, capsys):
    """Through the CLI: train-sgan under voc_sgan_authors.yaml computes the seed term without the
    floor (their cross-entropy; null is no floor too) from nn.Conv2d-initialised layers; the paper
    config floors at 1e-5; a floor outside [0, 0.05) is refused naming the key."""
    from sgan.pipeline import train_sgan

    voc, saliency_dir = make_tiny_voc(tmp_path / "voc", num_train=4, size=48)
    floors = []
    real_seed_loss = train_sgan.seed_loss

    def recording_seed_loss(*args, **kwargs):
        floors.append(kwargs["floor"])
        return real_seed_loss(*args, **kwargs)

    monkeypatch.setattr(train_sgan, "seed_loss", recording_seed_loss)
    for name, base, overrides, floor, init in (("authors", AUTHORS_CONFIG, [], 0.0, "pytorch"),
                                               ("null", AUTHORS_CONFIG, ["train_sgan.seed_loss_floor=null"], 0.0,
                                                "pytorch"),
                                               ("paper", PAPER_CONFIG, [], PROB_FLOOR, "xavier")):
        config = tiny_config(voc, saliency_dir, tmp_path / name, iterations=1)
        config.update({"_base_": os.path.abspath(base)})
        config["model"].update({"weights": None})
        path = write_yaml(tmp_path / f"{name}.yaml", config)
        assert cli.main(["labels", path]) == 0
        seeds_dir = tmp_path / name / "seeds0"
        seeds_dir.mkdir()
        with open(tmp_path / name / "labels.json") as stream:
            labels = json.load(stream)["labels"]
        rng = np.random.default_rng(0)
        for image_id in labels:                               # initial seeds: random labels at the image's size
            size = Image.open(VOCPaths(voc).image(image_id)).size
            Image.fromarray(rng.choice([0, 1, 2, 3, 255], size=size[::-1]).astype(np.uint8)).save(
                seeds_dir / f"{image_id}.png")
        floors.clear()
        assert cli.main(["train-sgan", path] + overrides) == 0
        assert floors and set(floors) == {floor}, name
        state = torch.load(tmp_path / name / "ckpt" / "sgan.pt", weights_only=True)
        assert state["model_info"]["options"]["init"] == init
    capsys.readouterr()
    for bad in ("-1e-5", "0.05"):
        assert cli.main(["train-sgan", path, f"train_sgan.seed_loss_floor={bad}"]) == 2
        error = capsys.readouterr().err
        assert "train_sgan.seed_loss_floor: expected a number in [0, 0.05)" in error and "Traceback" not in error
