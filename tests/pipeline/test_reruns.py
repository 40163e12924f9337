"""Re-runs (docs/design.md §5): an output is reused only when it was made from the same settings and
inputs; anything else is redone, naming what changed. Each case is one a user met (issue 11.2)."""
import json
import os

import pytest
import torch
import yaml

from sgan import cli
from sgan.utils.record import PARTIAL_NAME, changes, make_record
from tests.pipeline.test_stage1_pipeline import STAGE1, make_tiny_voc, tiny_config, write_yaml
from tests.pipeline.test_stage2_pipeline import stage2_config


def mtimes(folder, pattern="*"):
    return {path.name: path.stat().st_mtime_ns for path in sorted(folder.glob(pattern))}


@pytest.fixture()
def stage1(tmp_path):
    """A finished stage-1 run (2 iterations per training) on its own tiny dataset."""
    voc, saliency = make_tiny_voc(tmp_path / "voc", num_train=8)
    config_path = write_yaml(tmp_path / "exp.yaml", tiny_config(voc, saliency, tmp_path / "work", iterations=2))
    assert cli.main(["run", config_path, f"steps={STAGE1}"]) == 0
    return tmp_path / "work", config_path, voc


def test_retraining_train_cam_redoes_every_step_after_it(stage1):
    work, config_path, _ = stage1
    before = {name: mtimes(work / name) for name in ("ckpt", "seeds0", "seeds", "metrics")}
    # train-cam alone with another learning rate: it retrains (it used to keep the old checkpoint)
    assert cli.main(["train-cam", config_path, "train_cam.lr=0.002"]) == 0
    assert mtimes(work / "ckpt")["cam.pt"] != before["ckpt"]["cam.pt"]
    log = (work / "sgan.log").read_text()
    assert "train_cam.lr was 0.001, now 0.002" in log
    # `sgan run` with the same override: everything downstream of the new baseline is redone
    assert cli.main(["run", config_path, f"steps={STAGE1}", "train_cam.lr=0.002"]) == 0
    after = {name: mtimes(work / name) for name in ("ckpt", "seeds0", "seeds", "metrics")}
    assert after["ckpt"]["cam.pt"] == mtimes(work / "ckpt")["cam.pt"]  # not trained a third time
    assert after["ckpt"]["sgan.pt"] != before["ckpt"]["sgan.pt"]
    for folder in ("seeds0", "seeds"):
        assert all(after[folder][name] != before[folder][name] for name in before[folder]), folder
    assert after["metrics"]["seeds.json"] != before["metrics"]["seeds.json"]
    assert "input checkpoint changed" in (work / "sgan.log").read_text()


def test_labels_follow_a_changed_annotation(stage1):
    work, config_path, voc = stage1
    labels = json.loads((work / "labels.json").read_text())["labels"]
    image_id = sorted(labels)[0]
    xml_path = os.path.join(voc, "Annotations", image_id + ".xml")
    text = open(xml_path).read()
    # add a person (class 15) to the annotation
    person = "<object><name>person</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
    with open(xml_path, "w") as stream:
        stream.write(text.replace("</annotation>", person + "</annotation>"))
    assert 15 not in labels[image_id]
    assert cli.main(["labels", config_path]) == 0
    assert 15 in json.loads((work / "labels.json").read_text())["labels"][image_id]


def test_eval_seeds_of_another_folder_is_recomputed_and_printed(stage1, capsys):
    work, config_path, _ = stage1
    first = json.loads((work / "metrics" / "seeds.json").read_text())
    assert cli.main(["eval-seeds", config_path, "eval_seeds.seeds_dir=seeds0"]) == 0
    second = json.loads((work / "metrics" / "seeds.json").read_text())
    assert second["seeds_dir"] == str(work / "seeds0") and second["record"] != first["record"]
    assert "eval_seeds.seeds_dir was 'seeds', now 'seeds0'" in (work / "sgan.log").read_text()
    # an up-to-date output is not recomputed, and its table is shown again
    capsys.readouterr()
    mtime = (work / "metrics" / "seeds.json").stat().st_mtime_ns
    assert cli.main(["eval-seeds", config_path, "eval_seeds.seeds_dir=seeds0"]) == 0
    assert (work / "metrics" / "seeds.json").stat().st_mtime_ns == mtime
    assert "precision" in capsys.readouterr().err   # the seed table, logged to the terminal


def interrupt_after(monkeypatch, module, name, count):
    """Make ``module.name`` (a writer) raise KeyboardInterrupt after its ``count``-th call."""
    real, calls = getattr(module, name), []

    def writer(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(args[0])
        if len(calls) == count:
            raise KeyboardInterrupt
    monkeypatch.setattr(module, name, writer)
    return lambda: monkeypatch.setattr(module, name, real)


def interrupted_status(argv):
    """cli.main's exit status, 130 when Ctrl-C reached it."""
    try:
        return cli.main(argv)
    except KeyboardInterrupt:
        return 130


def test_resume_refuses_changed_settings_and_says_when_there_is_nothing_to_resume(stage1, monkeypatch, capsys):
    import sgan.train.loop as loop
    work, config_path, _ = stage1
    assert cli.main(["train-cam", config_path, "--resume"]) == 0
    assert "nothing to resume" in (work / "sgan.log").read_text()
    # an interrupted run: stopped right after its first .last.pt (iteration 2 of 4)
    common = [config_path, "train_cam.iterations=4", "train_cam.checkpoint=ckpt/cut.pt"]
    restore = interrupt_after(monkeypatch, loop, "save_torch", 1)
    assert interrupted_status(["train-cam", *common]) == 130
    restore()
    assert (work / "ckpt" / "cut.last.pt").is_file() and not (work / "ckpt" / "cut.pt").exists()
    capsys.readouterr()
    # resumed with another learning rate, batch size or input size: refused in one line that names
    # the change and the way out
    for change, shown in (("train_cam.lr=0.01", "train_cam.lr was 0.001, now 0.01"),
                          ("train_cam.batch_size=2", "train_cam.batch_size was 4, now 2"),
                          ("data.input_size=40", "data.input_size was 48, now 40")):
        assert cli.main(["train-cam", *common, change, "--resume"]) == 2
        err = capsys.readouterr().err.strip().splitlines()   # log lines, then the error, last
        assert err[-1].startswith("sgan train-cam: error:") and shown in err[-1], err
        assert "resume_changed=true" in err[-1] and sum("error" in line for line in err) == 1
    # with the same settings it continues to the end
    assert cli.main(["train-cam", *common, "--resume"]) == 0
    assert torch.load(work / "ckpt" / "cut.pt", weights_only=True)["iteration"] == 4
    # a fresh interrupted run continued with a change it is told to accept
    restore = interrupt_after(monkeypatch, loop, "save_torch", 1)
    assert interrupted_status(["train-cam", *common, "train_cam.checkpoint=ckpt/cut2.pt"]) == 130
    restore()
    assert cli.main(["train-cam", *common, "train_cam.checkpoint=ckpt/cut2.pt", "train_cam.lr=0.01",
                     "--resume", "resume_changed=true"]) == 0
    assert "with changed settings (train_cam.lr was 0.001, now 0.01)" in (work / "sgan.log").read_text()
    # --resume where no run was interrupted and the checkpoint is stale: said, then trained from the start
    assert cli.main(["train-cam", config_path, "train_cam.lr=0.003", "--resume"]) == 0
    assert "there is no interrupted run to resume" in (work / "sgan.log").read_text()


def test_eval_with_another_list_and_infer_never_mixes_two_models(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    import sgan.pipeline.infer as infer_step
    from sgan.experiments.synthetic import generate
    info = generate(tmp_path / "voc", num_train=4, num_val=6, image_size=(64, 64), classes=3)
    seeds_dir = tmp_path / "seeds"
    seeds_dir.mkdir()
    for image_id in info["train_ids"]:
        Image.open(os.path.join(info["segmentation_class_aug"], image_id + ".png")).save(seeds_dir / f"{image_id}.png")
    config = stage2_config(dict(info, seeds=str(seeds_dir)), tmp_path / "work",
                           infer={"crf": False, "crf_processes": 1},
                           train_seg={"iterations": 2, "boundary_loss_weight": 0.0})
    path = str(tmp_path / "exp.yaml")
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(config))
    work, pred = tmp_path / "work", tmp_path / "work" / "pred"
    assert cli.main(["run", path]) == 0
    assert json.loads((work / "metrics" / "seg.json").read_text())["num_images"] == 6
    # eval on another list: recomputed, not the cached row
    short_list = tmp_path / "short.txt"
    short_list.write_text("\n".join(info["val_ids"][:2]) + "\n")
    assert cli.main(["eval", path, f"eval.list={short_list}"]) == 0
    assert json.loads((work / "metrics" / "seg.json").read_text())["num_images"] == 2

    # infer of a retrained model, interrupted after 2 of 6 images; then a model of other settings
    assert cli.main(["train-seg", path, "train_seg.lr=0.01"]) == 0
    restore = interrupt_after(monkeypatch, infer_step, "save_label_png", 2)
    assert interrupted_status(["infer", path]) == 130
    restore()
    assert (pred / PARTIAL_NAME).is_file() and not (pred / ".done.json").exists()
    assert cli.main(["train-seg", path, "train_seg.lr=0.002"]) == 0
    assert cli.main(["infer", path]) == 0
    assert cli.main(["infer", path, "infer.output_dir=pred_fresh"]) == 0   # the same model, from scratch
    for image_id in info["val_ids"]:
        assert np.array_equal(np.array(Image.open(pred / f"{image_id}.png")),
                              np.array(Image.open(work / "pred_fresh" / f"{image_id}.png"))), image_id
    assert (pred / ".done.json").exists() and not (pred / PARTIAL_NAME).exists()
    # an interrupted infer of the same model continues: the 2 written PNGs are kept
    restore = interrupt_after(monkeypatch, infer_step, "save_label_png", 2)
    assert interrupted_status(["infer", path, "--overwrite"]) == 130
    restore()
    kept = mtimes(pred, "*.png")
    assert cli.main(["infer", path]) == 0
    assert sum(mtimes(pred, "*.png")[name] == kept[name] for name in kept) == 2


def test_record_changes_name_settings_and_inputs():
    old = make_record("step", {"a": {"lr": 1, "size": 3}}, {"checkpoint": "x", "images": "y"})
    new = make_record("step", {"a": {"lr": 2, "size": 3}}, {"checkpoint": "z", "list": "w"})
    assert changes(old, new) == ["a.lr was 1, now 2", "input checkpoint changed",
                                 "input images no longer read", "input list added"]
    assert changes(old, old) == []
    assert changes({"labels": {}}, new) == ["it was written without a record of what produced it (an older version of sgan)"]
