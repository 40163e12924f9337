"""Stage-2 building blocks: prediction at the original size (scales, flip), palette PNGs, the
training samples (crop, flip, jitter) of train-seg."""
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sgan.data.seg_dataset import SegTrainSet, jitter_colours
from sgan.data.voc import VOCPaths
from sgan.data.voc_classes import voc_palette
from sgan.experiments.synthetic import generate
from sgan.models.deeplab import build_deeplab
from sgan.predict import label_image, predict_probabilities, read_label_png, save_label_png, scaled_size


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_deeplab("resnet101", width=1 / 16, blocks=[1, 1, 1, 1]).eval()


def test_prediction_is_at_the_image_size_from_upsampled_logits(tiny_model):
    image = torch.randn(3, 37, 29)
    probabilities = predict_probabilities(tiny_model, image)
    assert probabilities.shape == (21, 37, 29)
    torch.testing.assert_close(probabilities.sum(0), torch.ones(37, 29))
    with torch.no_grad():
        logits = tiny_model(image[None])
    assert logits.shape[2:] == (5, 4)
    expected = F.interpolate(logits, size=(37, 29), mode="bilinear", align_corners=False).softmax(1)[0]
    torch.testing.assert_close(probabilities, expected)


def test_flip_averaging_is_mirror_symmetric(tiny_model):
    image = torch.randn(3, 33, 41)
    plain = predict_probabilities(tiny_model, image)
    mirrored = predict_probabilities(tiny_model, image.flip(-1))
    assert not torch.allclose(plain, mirrored.flip(-1), atol=1e-4)  # the network itself is not symmetric
    with_flip = predict_probabilities(tiny_model, image, flip=True)
    torch.testing.assert_close(with_flip, (plain + mirrored.flip(-1)) / 2)
    torch.testing.assert_close(predict_probabilities(tiny_model, image.flip(-1), flip=True), with_flip.flip(-1))


def test_multi_scale_is_the_mean_of_the_single_scales(tiny_model):
    image = torch.randn(3, 40, 30)
    scales = [1.0, 0.75, 48]
    combined = predict_probabilities(tiny_model, image, scales)
    singles = [predict_probabilities(tiny_model, image, [s]) for s in scales]
    torch.testing.assert_close(combined, sum(singles) / 3)


def test_scaled_size_factor_and_longer_side():
    assert scaled_size(300, 500, 0.5) == (150, 250)
    assert scaled_size(300, 500, 385) == (231, 385)
    assert scaled_size(500, 300, 481) == (481, 289)
    for bad in (0, -1.0, True, "1.0"):
        with pytest.raises(ValueError, match="scale: expected"):
            scaled_size(10, 10, bad)


def test_palette_png_round_trip(tmp_path):
    labels = np.random.default_rng(0).integers(0, 21, (13, 17))
    labels[0, :5] = 255
    path = str(tmp_path / "pred.png")
    save_label_png(path, labels)
    with Image.open(path) as image:
        assert image.mode == "P"
        np.testing.assert_array_equal(np.array(image), labels)
        assert image.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]   # VOC background, aeroplane, bicycle
        assert image.getpalette()[255 * 3:256 * 3] == [224, 224, 192]
    np.testing.assert_array_equal(read_label_png(path), labels)


def test_label_png_errors(tmp_path):
    with pytest.raises(ValueError, match="palette index 0..255"):
        label_image(np.array([[0, 300]]))
    with pytest.raises(ValueError, match="2-d integer array"):
        label_image(np.zeros((2, 2), np.float32))
    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (4, 4), (128, 0, 0)).save(rgb)
    with pytest.raises(ValueError, match="got mode RGB"):
        read_label_png(str(rgb), "prediction")


@pytest.fixture(scope="module")
def sample_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    info = generate(root, num_train=2, num_val=1, image_size=(48, 40), classes=2)
    seeds_dir = root / "seeds"
    seeds_dir.mkdir()
    for image_id in info["train_ids"]:
        mask = np.array(Image.open(f"{info['segmentation_class_aug']}/{image_id}.png"))
        Image.fromarray(mask).save(seeds_dir / f"{image_id}.png")
    return VOCPaths(info["voc"]), info["train_ids"], str(seeds_dir)


def make_set(sample_set, **options):
    paths, ids, seeds_dir = sample_set
    settings = dict(resize_to=41, crop=33, flip=True, color_jitter=0.3, normalisation="imagenet_rgb",
                    output_size=(5, 5))
    settings.update(options)
    return SegTrainSet(paths, ids, seeds_dir, **settings)


def test_training_sample_shapes_and_determinism(sample_set):
    dataset = make_set(sample_set)
    sample = dataset[(1, 1234)]
    assert sample["image"].shape == (3, 33, 33) and sample["image"].dtype == torch.float32
    assert sample["seeds"].shape == (5, 5) and sample["seeds"].dtype == torch.int64
    assert sample["crf_image"].shape == (5, 5, 3) and sample["crf_image"].dtype == torch.uint8
    assert set(sample["seeds"].unique().tolist()) <= set(range(21)) | {255}
    again = dataset[(1, 1234)]
    assert all(torch.equal(sample[k], again[k]) for k in ("image", "seeds", "crf_image"))
    others = [dataset[(1, seed)]["image"] for seed in range(6)]
    assert any(not torch.equal(others[0], other) for other in others[1:])


def test_flip_applies_to_image_seeds_and_crf_image_alike(sample_set):
    # resize == crop and no jitter: the only randomness left is the flip
    dataset = make_set(sample_set, resize_to=33, crop=33, color_jitter=0.0, output_size=(33, 33))
    reference = dataset[(0, 0)]
    flipped_seen = plain_seen = False
    for seed in range(1, 12):
        sample = dataset[(0, seed)]
        if torch.equal(sample["image"], reference["image"]):
            plain_seen = True
            assert torch.equal(sample["seeds"], reference["seeds"])
        else:
            flipped_seen = True
            assert torch.equal(sample["image"], reference["image"].flip(-1))
            assert torch.equal(sample["seeds"], reference["seeds"].flip(-1))
            assert torch.equal(sample["crf_image"], reference["crf_image"].flip(1))
    assert flipped_seen and plain_seen


def test_training_set_rejects_bad_crop(sample_set):
    with pytest.raises(ValueError, match="train_seg.crop: expected a positive int <= train_seg.resize"):
        make_set(sample_set, resize_to=30, crop=33)
    with pytest.raises(ValueError, match="color_jitter"):
        make_set(sample_set, color_jitter=1.5)


def test_colour_jitter_is_seeded_and_bounded():
    image = np.random.default_rng(0).integers(0, 256, (8, 9, 3)).astype(np.uint8)
    assert jitter_colours(image, random.Random(0), 0.0) is image
    first = jitter_colours(image, random.Random(5), 0.4)
    assert first.dtype == np.uint8 and first.shape == image.shape
    np.testing.assert_array_equal(first, jitter_colours(image, random.Random(5), 0.4))
    assert not np.array_equal(first, image)
    # a brightness/contrast/saturation change keeps the pixel order of a gray ramp
    ramp = np.repeat(np.arange(0, 250, 10, dtype=np.uint8)[:, None, None], 3, axis=2)
    jittered = jitter_colours(ramp, random.Random(3), 0.3)[:, 0, 0].astype(int)
    assert (np.diff(jittered) >= 0).all()


def test_voc_palette_is_the_one_written():
    assert label_image(np.zeros((1, 1), np.uint8)).getpalette() == voc_palette()
