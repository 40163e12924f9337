"""Every user-provided input of the steps about to run is checked before the first starts, and a
file that cannot be decoded later still gives one line naming it (sgan.pipeline._validate)."""
import os

import numpy as np
import pytest
from PIL import Image

from sgan import cli
from sgan.data.voc import VOCPaths, read_id_list
from sgan.experiments import synthetic
from sgan.experiments.demo import CONFIG_FILE
from sgan.pipeline import STEP_NAMES, STEPS
from sgan.pipeline._validate import STEP_INPUTS
from tests.data.test_data_voc import has_problem, problem_groups
from tests.pipeline.test_stage1_pipeline import make_tiny_voc, tiny_config, write_yaml


def truncate(path):
    """Cut a file to half its bytes (a JPEG keeps its header: it opens, then fails to decode)."""
    with open(path, "rb") as stream:
        data = stream.read()
    with open(path, "wb") as stream:
        stream.write(data[:len(data) // 2])


@pytest.fixture()
def voc(tmp_path):
    root, saliency = make_tiny_voc(tmp_path / "data", num_train=8, size=40, seed=2)
    paths = VOCPaths(root)
    return paths, saliency, read_id_list(paths.resolve("ImageSets/Segmentation/train_aug.txt"))


def test_every_step_has_an_entry_in_the_inputs_table():
    assert tuple(STEP_INPUTS) == STEP_NAMES


def test_run_names_every_bad_input_of_every_step_before_anything_trains(voc, tmp_path, capsys):
    paths, saliency, ids = voc
    truncate(paths.image(ids[0]))
    os.remove(os.path.join(saliency, ids[1] + ".png"))
    Image.fromarray(np.zeros((7, 9), np.uint8), "L").save(os.path.join(saliency, ids[2] + ".png"))
    Image.fromarray(np.zeros((40, 40, 3), np.uint8), "RGB").save(os.path.join(saliency, ids[3] + ".png"))
    gt_path = paths.mask(ids[4], "SegmentationClass")     # train.txt is eval-seeds' list
    with Image.open(gt_path) as gt:
        values = np.array(gt)
        palette = gt.getpalette()
    values[:5, :5] = 50
    bad_gt = Image.fromarray(values, "L").convert("P")
    bad_gt.putpalette(palette)
    bad_gt.save(gt_path)
    os.remove(paths.annotation(ids[5]))
    val_list = paths.resolve("ImageSets/Segmentation/val.txt")
    open(val_list, "w").close()                            # infer's and eval's list
    work = tmp_path / "work"
    config = write_yaml(tmp_path / "exp.yaml", tiny_config(paths.root, saliency, work,
                                                           model={"weights": str(tmp_path / "vgg16.pth")}))

    assert cli.main(["run", config, f"steps={[step.name for step in STEPS if step.default]}"]) == 2
    err = capsys.readouterr().err
    message = err[err.index("sgan run: error: ") + len("sgan run: error: "):]
    expected = [("unreadable image", f"{paths.image(ids[0])}: cannot decode the image, truncated or corrupt"),
                ("missing saliency map", os.path.join(saliency, ids[1] + ".png")),
                ("size mismatch", f"{os.path.join(saliency, ids[2] + '.png')} is 9x7"),
                ("saliency map not single-channel", f"{os.path.join(saliency, ids[3] + '.png')} has mode RGB"),
                ("bad ground truth", f"{gt_path}: values [50]"),
                ("missing annotation", paths.annotation(ids[5])),
                ("empty list file", f"data.val_list: {val_list} holds no image ids"),
                ("missing weights file", f"model.weights: {tmp_path / 'vgg16.pth'} does not exist")]
    for kind, detail in expected:
        assert has_problem(message, kind, detail), (kind, detail, message)
    assert sum(len(lines) for lines in problem_groups(message).values()) == len(expected)
    assert f"{len(expected)} problem(s) of {len(expected)} kind(s)" in message
    assert "Traceback" not in err
    assert not (work / "ckpt").exists() and not (work / "labels.json").exists()


def test_single_step_checks_only_what_that_step_reads(voc, tmp_path, capsys):
    paths, saliency, ids = voc
    truncate(paths.image(ids[0]))                          # read by train-cam, not by labels
    os.remove(os.path.join(saliency, ids[1] + ".png"))    # read by neither
    os.remove(paths.annotation(ids[2]))                    # read by labels only
    config = write_yaml(tmp_path / "exp.yaml", tiny_config(paths.root, saliency, tmp_path / "work"))
    assert cli.main(["labels", config]) == 2
    message = capsys.readouterr().err.split("sgan labels: error: ", 1)[1]
    assert list(problem_groups(message)) == ["missing annotation"]
    assert has_problem(message, "missing annotation", paths.annotation(ids[2]))
    assert cli.main(["train-cam", config]) == 2            # the image, before labels.json is looked for
    message = capsys.readouterr().err.split("sgan train-cam: error: ", 1)[1]
    assert list(problem_groups(message)) == ["unreadable image"]
    assert has_problem(message, "unreadable image", paths.image(ids[0]))


def test_long_problem_lists_are_cut_per_kind(tmp_path, capsys):
    root, saliency = make_tiny_voc(tmp_path / "data", num_train=13, size=32, seed=3)
    for name in os.listdir(saliency):
        os.remove(os.path.join(saliency, name))
    config = write_yaml(tmp_path / "exp.yaml", tiny_config(root, saliency, tmp_path / "work"))
    assert cli.main(["seeds", config]) == 2
    message = capsys.readouterr().err.split("sgan seeds: error: ", 1)[1]
    shown = problem_groups(message)["missing saliency map"]
    assert "missing saliency map (13):" in message and len(shown) == 11 and shown[-1] == "... and 3 more"


def test_image_corrupted_after_validation_gives_one_line_from_a_dataloader_worker(voc, tmp_path, capsys,
                                                                                  monkeypatch):
    paths, saliency, ids = voc
    config = write_yaml(tmp_path / "exp.yaml", tiny_config(paths.root, saliency, tmp_path / "work"))
    assert cli.main(["labels", config]) == 0
    truncate(paths.image(ids[3]))     # the per-step check reads headers only, so training starts
    monkeypatch.setattr("sgan.pipeline.validate_inputs", lambda cfg, names: None)
    monkeypatch.setenv("SGAN_NO_PROGRESS", "1")
    assert cli.main(["train-cam", config, "num_workers=1"]) == 2
    err = capsys.readouterr().err
    error = err.split("sgan train-cam: error: ", 1)[1]
    assert error.startswith(f"{paths.image(ids[3])}: cannot decode the image, truncated or corrupt (")
    assert error.count("\n") == 1 and error.endswith("\n")   # one line, nothing printed after it
    assert "Traceback" not in err and "DataLoader worker" not in err


def test_demo_checks_its_data_once_generated(tmp_path, capsys):
    work = tmp_path / "demo"
    layout = synthetic.generate(str(work / "data"), num_train=6, num_val=2, image_size=(40, 40), seed=0, classes=6)
    truncate(os.path.join(layout["images"], layout["train_ids"][1] + ".jpg"))
    overrides = [f"work_dir={work}", "demo.num_train=6", "demo.num_val=2", "demo.image_size=[40,40]",
                 "data.input_size=40", "num_workers=0", "train_cam.iterations=2", "train_cam.batch_size=2"]
    assert cli.main(["demo", os.path.abspath(CONFIG_FILE), *overrides]) == 2
    message = capsys.readouterr().err
    assert has_problem(message, "unreadable image", os.path.join(layout["images"], layout["train_ids"][1] + ".jpg"))
    assert not (work / "ckpt").exists()
