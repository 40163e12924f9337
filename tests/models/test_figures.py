"""Stage-1 figures a reader can read: class names in the title and legend, every panel at the
image's aspect ratio (also the feature-resolution mask and attention), colour bars."""
import io

import numpy as np
import pytest
import torch

from sgan.drawing import draw
from sgan.models.sgan_net import build_network
from sgan.pipeline import load_config
from tests.pipeline.test_stage1_pipeline import tiny_config

HEIGHT, WIDTH = 40, 64  # not square: 1.6 wide
LABELS = [3, 12]  # bird, dog
PIXEL = (0.25, 0.75)


@pytest.fixture(scope="module")
def figure(tmp_path_factory):
    """The figure of a random non-square image under an untrained Baseline and SGAN, drawn."""
    torch.manual_seed(0)
    work = tmp_path_factory.mktemp("figures")
    cfg = load_config(base=tiny_config(str(work), str(work), str(work)))
    variants = []
    for name, kind, variant in (("Baseline", "cam", None), ("SGAN", "sgan", "sgan")):
        network, info = build_network(cfg, kind, variant)
        variants.append((name, network.eval(), info))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    saliency = np.zeros((HEIGHT, WIDTH), np.uint8)
    saliency[10:30, 20:50] = 255
    seeds = np.full((HEIGHT, WIDTH), 255, np.uint8)
    seeds[:5], seeds[12:28, 24:40], seeds[12:28, 40:48] = 0, 3, 12
    drawn = draw("2007_000032", image, saliency, seeds, seeds, variants, LABELS, cfg.data.input_size,
                 pixel=PIXEL, backend="reference")
    drawn.savefig(io.BytesIO(), format="png")  # lays the figure out, as render does
    return drawn


def _panels(figure):
    return {axis.get_title(): axis for axis in figure.axes if axis.get_title()}


def test_title_and_seed_legend_name_the_classes(figure):
    assert figure.get_suptitle() == "2007_000032: bird, dog"
    (legend,) = [axis.get_legend() for axis in figure.axes if axis.get_legend() is not None]
    assert [text.get_text() for text in legend.get_texts()] == ["background", "bird", "dog", "unlabelled"]


@pytest.mark.parametrize("title", ["input", "saliency mask (white: salient)", "initial seeds", "CAM Baseline",
                                   "CAM SGAN", "SGAN: attention\nto the marked pixel"])
def test_every_panel_has_the_images_aspect_ratio(figure, title):
    box = _panels(figure)[title].get_window_extent()
    assert box.width / box.height == pytest.approx(WIDTH / HEIGHT, rel=0.02)


def test_marked_pixel_sits_where_it_is_in_the_image(figure):
    axis = _panels(figure)["SGAN: attention\nto the marked pixel"]
    rows, cols = axis.get_images()[0].get_array().shape
    (x, y), = axis.lines[0].get_xydata()
    assert abs(x - PIXEL[1] * WIDTH) <= WIDTH / cols and abs(y - PIXEL[0] * HEIGHT) <= HEIGHT / rows


def test_colour_bars_for_the_cams_and_the_attention(figure):
    labels = [bar.get_ylabel() for axis in figure.axes for bar in axis.child_axes]  # bars: inset axes of a panel
    assert labels.count("CAM / max") == 1 and labels.count("attention weight") == 1
