"""The synthetic VOC-layout generator: determinism, exact layout, masks/labels/XML/saliency agreement."""
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from sgan.data.voc_classes import CLASS_NAMES, voc_palette
from sgan.experiments import synthetic

SIZE = (64, 80)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return synthetic.generate(root, num_train=48, num_val=16, image_size=SIZE, seed=3, classes=6)


def _files(root):
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as stream:
                found[os.path.relpath(path, root)] = stream.read()
    return found


def _read_ids(path):
    with open(path) as stream:
        return [line.strip() for line in stream if line.strip()]


def _xml_objects(path):
    tree = ET.parse(path)
    objects = []
    for obj in tree.getroot().iter("object"):
        box = obj.find("bndbox")
        objects.append((obj.find("name").text, *(int(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))))
    size = tree.getroot().find("size")
    return objects, (int(size.find("height").text), int(size.find("width").text))


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    kwargs = dict(num_train=5, num_val=3, image_size=(48, 48), classes=4)
    first = _files(synthetic.generate(tmp_path / "a", seed=11, **kwargs)["root"])
    second = _files(synthetic.generate(tmp_path / "b", seed=11, **kwargs)["root"])
    other = _files(synthetic.generate(tmp_path / "c", seed=12, **kwargs)["root"])
    assert first.keys() == second.keys() == other.keys()
    assert first == second
    images = [name for name in first if name.endswith(".jpg")]
    assert len(images) == 8
    assert sum(first[name] != other[name] for name in images) == len(images)


def test_first_images_do_not_depend_on_the_count(tmp_path):
    small = synthetic.generate(tmp_path / "small", num_train=3, num_val=1, image_size=(48, 48), seed=5)
    large = synthetic.generate(tmp_path / "large", num_train=6, num_val=2, image_size=(48, 48), seed=5)
    for image_id in small["train_ids"]:
        for key, ext in (("images", ".jpg"), ("saliency", ".png"), ("annotations", ".xml")):
            with open(os.path.join(small[key], image_id + ext), "rb") as a, \
                    open(os.path.join(large[key], image_id + ext), "rb") as b:
                assert a.read() == b.read()


def test_files_are_in_the_exact_voc_layout(dataset):
    root = dataset["root"]
    voc = os.path.join(root, "VOC2012")
    expected_dirs = {"JPEGImages", "SegmentationClass", "SegmentationClassAug", "Annotations", "ImageSets"}
    assert set(os.listdir(voc)) == expected_dirs
    sets = os.path.join(voc, "ImageSets", "Segmentation")
    assert sorted(os.listdir(sets)) == ["train.txt", "train_aug.txt", "val.txt"]
    train, train_aug, val = (_read_ids(os.path.join(sets, f)) for f in ("train.txt", "train_aug.txt", "val.txt"))
    assert train == dataset["train_ids"] and train_aug == train and val == dataset["val_ids"]
    assert len(train) == 48 and len(val) == 16 and not set(train) & set(val)
    ids = set(train) | set(val)
    for folder, ext in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png"),
                        ("SegmentationClassAug", ".png"), ("Annotations", ".xml")):
        assert set(os.listdir(os.path.join(voc, folder))) == {i + ext for i in ids}, folder
    assert set(os.listdir(os.path.join(root, "saliency"))) == {i + ".png" for i in ids}
    for image_id in sorted(ids)[:5]:
        image = Image.open(os.path.join(voc, "JPEGImages", image_id + ".jpg"))
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (SIZE[1], SIZE[0])
        seg = Image.open(os.path.join(voc, "SegmentationClass", image_id + ".png"))
        assert seg.mode == "P" and seg.getpalette()[:3 * 256] == voc_palette()
        for folder in (os.path.join(voc, "SegmentationClassAug"), dataset["saliency"]):
            gray = Image.open(os.path.join(folder, image_id + ".png"))
            assert gray.mode == "L" and gray.size == (SIZE[1], SIZE[0])
    assert synthetic.is_generated(root, num_train=48, num_val=16, image_size=SIZE, seed=3, classes=6)
    assert not synthetic.is_generated(root, num_train=48, num_val=16, image_size=SIZE, seed=4, classes=6)


def test_voc_palette_matches_the_known_voc_colours():
    palette = np.array(voc_palette()).reshape(256, 3)
    assert palette[0].tolist() == [0, 0, 0]
    assert palette[1].tolist() == [128, 0, 0]        # aeroplane
    assert palette[15].tolist() == [192, 128, 128]   # person
    assert palette[255].tolist() == [224, 224, 192]  # void


def test_masks_labels_and_annotations_agree(dataset):
    voc, allowed = dataset["voc"], {CLASS_NAMES.index(n) + 1 for n in dataset["classes"]}
    two_class_images = multi_instance_images = 0
    for image_id in dataset["train_ids"] + dataset["val_ids"]:
        aug = np.array(Image.open(os.path.join(voc, "SegmentationClassAug", image_id + ".png")))
        palette_indices = np.array(Image.open(os.path.join(voc, "SegmentationClass", image_id + ".png")))
        objects, size = _xml_objects(os.path.join(voc, "Annotations", image_id + ".xml"))
        assert size == SIZE and aug.shape == SIZE
        mask_classes = set(np.unique(aug).tolist()) - {0}
        xml_classes = {CLASS_NAMES.index(obj[0]) + 1 for obj in objects}
        assert mask_classes and mask_classes == xml_classes <= allowed
        # the palette PNG holds the same indices, with 255 only on the boundaries of objects
        void = palette_indices == 255
        assert set(np.unique(palette_indices).tolist()) - {255} <= mask_classes | {0}
        assert np.array_equal(palette_indices[~void], aug[~void])
        assert (aug[void] > 0).all() and void.sum() < (aug > 0).sum()
        assert set(np.unique(palette_indices).tolist()) - {0, 255} == mask_classes
        # every pixel of a class lies in a box of that class, and every box touches its class
        for label in mask_classes:
            inside = np.zeros(SIZE, bool)
            for name, x0, y0, x1, y1 in objects:
                if CLASS_NAMES.index(name) + 1 == label:
                    assert (aug[y0 - 1:y1, x0 - 1:x1] == label).any()
                    inside[y0 - 1:y1, x0 - 1:x1] = True
            assert inside[aug == label].all()
        two_class_images += len(mask_classes) == 2
        multi_instance_images += len(objects) > len(mask_classes)
    assert 5 <= two_class_images <= 45 and multi_instance_images >= 5


def test_saliency_correlates_with_the_foreground_but_has_errors(dataset):
    correlations, missed, false_positive, foreground_total, background_total = [], 0, 0, 0, 0
    background_far_below_threshold = []
    for image_id in dataset["train_ids"] + dataset["val_ids"]:
        saliency = np.array(Image.open(os.path.join(dataset["saliency"], image_id + ".png"))) / 255.0
        foreground = np.array(Image.open(os.path.join(dataset["segmentation_class_aug"], image_id + ".png"))) > 0
        correlations.append(np.corrcoef(saliency.ravel(), foreground.ravel())[0, 1])
        missed += (foreground & (saliency < 0.3)).sum()
        false_positive += (~foreground & (saliency > 0.3)).sum()
        foreground_total += foreground.sum()
        background_total += (~foreground).sum()
        background_far_below_threshold.append((saliency[~foreground] < 0.06).mean())
    assert np.median(correlations) > 0.7
    assert max(correlations) < 0.99                      # never the mask itself
    assert 0.02 < missed / foreground_total < 0.4        # parts of objects missed
    assert 0.01 < false_positive / background_total < 0.2  # distractors and blobs marked salient
    assert np.median(background_far_below_threshold) > 0.6  # usable background seeds (β = 0.06)


def test_objects_have_a_class_specific_part_and_a_larger_body():
    height, width = 96, 96
    part_fractions, part_colours = [], {}
    for index in range(40):
        rng = np.random.default_rng(np.random.SeedSequence([0, index]))
        labels = synthetic._image_labels(rng, np.array([1, 4, 7, 10]))
        image, mask, instances, _, _ = synthetic._draw_scene(rng, height, width, labels)
        for inst in instances:
            assert (mask[inst["mask"]] == inst["label"]).all()
            if inst["part"].sum() >= 10:
                part_fractions.append(inst["part"].sum() / inst["mask"].sum())
                part_colours.setdefault(inst["label"], []).append(image[inst["part"]].mean(0))
    assert 0.05 < np.median(part_fractions) < 0.25   # the part is a small piece of a large body
    means = {label: np.mean(colours, 0) for label, colours in part_colours.items()}
    assert len(means) == 4
    labels = sorted(means)
    distances = [np.abs(means[a] - means[b]).sum() for a in labels for b in labels if a < b]
    assert min(distances) > 0.15   # mean part colours differ between classes


@pytest.mark.parametrize("kwargs, name", [
    (dict(num_train=0), "num_train"),
    (dict(num_val=-1), "num_val"),
    (dict(image_size=(16, 64)), "image_size"),
    (dict(image_size=64), "image_size"),
    (dict(seed=-2), "seed"),
    (dict(classes=0), "classes"),
    (dict(classes=["boat", "submarine"]), "classes"),
    (dict(classes=["boat", "boat"]), "classes"),
    (dict(jpeg_quality=10), "jpeg_quality"),
])
def test_bad_arguments_name_the_argument(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        synthetic.generate(tmp_path, **kwargs)
    assert not os.path.exists(os.path.join(tmp_path, "VOC2012"))


def test_classes_of_wrong_type_is_a_type_error(tmp_path):
    with pytest.raises(TypeError, match="classes"):
        synthetic.generate(tmp_path, classes="boat")
