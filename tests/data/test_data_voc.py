"""VOC-layout data: labels from XML and masks, up-front validation naming every bad file, transforms."""
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from sgan import cli
from sgan.data.voc import (
    CAFFE_BGR_MEAN,
    VOCPaths,
    VOCTrainSet,
    image_level_labels,
    load_rgb,
    normalise,
    read_gray,
    read_id_list,
    read_label_mask,
    validate_samples,
)
from sgan.data.voc_classes import voc_palette
from tests.pipeline.test_stage1_pipeline import make_tiny_voc, tiny_config, write_yaml


def problem_groups(message):
    """{kind: [detail lines]} of a problem message grouped by sgan.data.voc.format_problems."""
    groups, kind = {}, None
    for line in message.splitlines()[1:]:
        if line.startswith("    "):
            groups[kind].append(line.strip())
        else:
            kind = line.strip().rsplit(" (", 1)[0]
            groups[kind] = []
    return groups


def has_problem(message, kind, detail):
    """True when ``message`` lists, under ``kind``, a line starting with ``detail``."""
    return any(line.startswith(detail) for line in problem_groups(message).get(kind, []))


@pytest.fixture()
def voc(tmp_path):
    root, saliency = make_tiny_voc(tmp_path / "data", num_train=8, size=40, seed=1)
    paths = VOCPaths(root)
    return paths, saliency, read_id_list(paths.resolve("ImageSets/Segmentation/train_aug.txt"))


def test_labels_from_xml_and_from_masks_agree(voc):
    paths, _, ids = voc
    from_xml = image_level_labels(paths, ids, "xml")
    assert image_level_labels(paths, ids, "mask", "SegmentationClassAug") == from_xml
    assert image_level_labels(paths, ids, "mask", "SegmentationClass") == from_xml  # palette PNGs
    assert all(from_xml[i] for i in ids)
    with Image.open(paths.mask(ids[0], "SegmentationClass")) as image:
        assert image.mode == "P"  # read as indices, never as colours
    assert set(np.unique(read_label_mask(paths.mask(ids[0], "SegmentationClass")))) <= {0, 255, *from_xml[ids[0]]}


def test_list_files_accept_deeplab_lines(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n\n2007_000039\n")
    assert read_id_list(str(path)) == ["2007_000032", "2007_000039"]
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="holds no image ids"):
        read_id_list(str(tmp_path / "empty.txt"))


def test_bad_label_files_are_all_named(voc):
    paths, _, ids = voc
    aug = paths.resolve("SegmentationClassAug")
    with Image.open(paths.mask(ids[0], "SegmentationClass")) as palette_png:  # saved as RGB colours
        palette_png.convert("RGB").save(os.path.join(aug, ids[0] + ".png"))
    colours = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
    mask = np.asarray(Image.open(os.path.join(aug, ids[1] + ".png")))
    misread = colours[mask][..., 0]  # colour values stored as if they were indices (e.g. 128)
    Image.fromarray(misread, "L").save(os.path.join(aug, ids[1] + ".png"))
    os.remove(os.path.join(aug, ids[2] + ".png"))
    Image.fromarray(np.zeros_like(mask), "L").save(os.path.join(aug, ids[3] + ".png"))  # background only
    with pytest.raises(ValueError) as info:
        image_level_labels(paths, ids, "mask", "SegmentationClassAug")
    message = str(info.value)
    assert "4 problem(s) of 3 kind(s)" in message
    assert has_problem(message, "bad label mask", f"{os.path.join(aug, ids[0])}.png: mode RGB")
    assert has_problem(message, "bad label mask", f"{os.path.join(aug, ids[1])}.png: values [128")
    assert "palette was probably misread" in message
    assert has_problem(message, "missing label mask", os.path.join(aug, ids[2] + ".png"))
    assert has_problem(message, "image with no labels", ids[3])


def test_xml_without_objects_or_with_unknown_names(voc):
    paths, _, ids = voc
    empty = "<annotation><filename>x.jpg</filename></annotation>"
    with open(paths.annotation(ids[0]), "w") as stream:
        stream.write(empty)
    with open(paths.annotation(ids[1]), "w") as stream:
        stream.write("<annotation><object><name>unicorn</name></object></annotation>")
    os.remove(paths.annotation(ids[2]))
    with pytest.raises(ValueError) as info:
        image_level_labels(paths, ids, "xml")
    message = str(info.value)
    assert "3 problem(s)" in message and has_problem(message, "image with no labels", ids[0])
    assert has_problem(message, "bad annotation", f"{paths.annotation(ids[1])}: unknown class names ['unicorn']")
    assert has_problem(message, "missing annotation", paths.annotation(ids[2]))


def test_validation_names_every_bad_input_file(voc, tmp_path):
    paths, saliency, ids = voc
    labels = image_level_labels(paths, ids, "xml")
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for image_id in ids:
        with Image.open(paths.image(image_id)) as image:
            Image.fromarray(np.zeros(image.size[::-1], np.uint8), "L").save(seeds / f"{image_id}.png")
    os.remove(paths.image(ids[0]))
    os.remove(os.path.join(saliency, ids[1] + ".png"))
    Image.fromarray(np.zeros((7, 9), np.uint8), "L").save(os.path.join(saliency, ids[2] + ".png"))
    Image.fromarray(np.zeros((40, 40, 3), np.uint8), "RGB").save(os.path.join(saliency, ids[3] + ".png"))
    os.remove(seeds / f"{ids[4]}.png")
    Image.fromarray(np.full((40, 40), 77, np.uint8), "L").save(seeds / f"{ids[5]}.png")
    labels[ids[6]] = []
    with pytest.raises(ValueError) as info:
        validate_samples(paths, ids, labels, saliency_dir=saliency, seeds_dir=str(seeds))
    message = str(info.value)
    expected = [("missing image", paths.image(ids[0])),
                ("missing saliency map", os.path.join(saliency, ids[1] + ".png")),
                ("size mismatch", f"{os.path.join(saliency, ids[2] + '.png')} is 9x7"),
                ("saliency map not single-channel", f"{os.path.join(saliency, ids[3] + '.png')} has mode RGB"),
                ("missing seed file", str(seeds / (ids[4] + ".png"))),
                ("bad seed values", f"{seeds / (ids[5] + '.png')} holds [77]"),
                ("image with no labels", ids[6])]
    for kind, detail in expected:
        assert has_problem(message, kind, detail), (kind, detail, message)
    assert "7 problem(s) of 7 kind(s)" in message


def test_training_stops_before_any_iteration_on_bad_inputs(voc, tmp_path, capsys):
    paths, saliency, ids = voc
    config = write_yaml(tmp_path / "exp.yaml", tiny_config(paths.root, saliency, tmp_path / "work"))
    assert cli.main(["labels", config]) == 0
    os.remove(paths.image(ids[3]))
    os.remove(paths.image(ids[5]))
    assert cli.main(["train-cam", config]) == 2
    err = capsys.readouterr().err
    assert paths.image(ids[3]) in err and paths.image(ids[5]) in err
    assert not (tmp_path / "work" / "ckpt").exists()


def test_loaders_name_a_file_that_does_not_decode(tmp_path):
    not_an_image = tmp_path / "x.jpg"
    not_an_image.write_bytes(b"not a jpeg at all")
    with pytest.raises(ValueError, match=f"^{not_an_image}: not an image file"):
        load_rgb(str(not_an_image))
    truncated = tmp_path / "saliency.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8), "L").save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:truncated.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"^{truncated}: cannot decode the image, truncated or corrupt"):
        read_gray(str(truncated))
    with pytest.raises(ValueError, match=f"^{tmp_path / 'gone.png'}: file not found"):
        read_gray(str(tmp_path / "gone.png"))


def test_normalisations():
    pixel = np.array([[[10, 20, 30]]], dtype=np.uint8)
    bgr = normalise(pixel, "caffe_bgr")[:, 0, 0]
    assert torch.allclose(bgr, torch.tensor([30 - CAFFE_BGR_MEAN[0], 20 - CAFFE_BGR_MEAN[1], 10 - CAFFE_BGR_MEAN[2]]))
    rgb = normalise(pixel, "imagenet_rgb")[:, 0, 0]
    expected = (torch.tensor([10, 20, 30]) / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(rgb, expected)
    with pytest.raises(ValueError, match="normalisation"):
        normalise(pixel, "auto")


def test_train_set_resizes_and_flips_every_field_alike(voc, tmp_path):
    paths, saliency, ids = voc
    labels = image_level_labels(paths, ids, "xml")
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for image_id in ids:  # seeds with a left/right asymmetry so a flip shows
        with Image.open(paths.image(image_id)) as image:
            w, h = image.size
        ramp = np.tile((np.arange(w) * 20 // w).astype(np.uint8), (h, 1))
        Image.fromarray(ramp, "L").save(seeds / f"{image_id}.png")
    dataset = VOCTrainSet(paths, ids, labels, 24, "imagenet_rgb", flip=True, saliency_dir=saliency,
                          seeds_dir=str(seeds))
    no_flip = next(s for s in range(100) if random.Random(s).random() >= 0.5)
    flip = next(s for s in range(100) if random.Random(s).random() < 0.5)
    plain, mirrored = dataset[(2, no_flip)], dataset[(2, flip)]
    assert plain["image"].shape == (3, 24, 24) and plain["saliency"].shape == (24, 24)
    assert plain["seeds"].dtype == torch.int64 and plain["labels"].sum() == len(labels[ids[2]])
    for key in ("image", "saliency", "seeds"):
        assert torch.equal(mirrored[key], plain[key].flip(-1)), key
    assert not torch.equal(plain["seeds"], mirrored["seeds"])
    assert plain["seeds"][0, 0] == 0 and plain["seeds"][0, -1] == 19  # nearest resize keeps labels
    no_aug = VOCTrainSet(paths, ids, labels, 24, "imagenet_rgb", flip=False)
    assert torch.equal(no_aug[(2, flip)]["image"], plain["image"])
