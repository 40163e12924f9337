"""Stage 1 end to end on a tiny synthetic VOC-layout dataset, on CPU, through the CLI and the runner."""
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from sgan import cli
from sgan.data.voc import VOCPaths, image_level_labels, read_id_list
from sgan.experiments.synthetic import generate
from sgan.pipeline import load_config

STAGE1 = ["labels", "train-cam", "initial-seeds", "train-sgan", "seeds", "eval-seeds"]


def make_tiny_voc(root, num_train=8, size=48, seed=0):
    """A synthetic VOC-layout dataset; returns (VOC2012 folder, saliency folder)."""
    paths = generate(str(root), num_train=num_train, num_val=2, image_size=(size, size), seed=seed, classes=3)
    return paths["voc"], paths["saliency"]


def tiny_config(voc, saliency, work_dir, iterations=4, **sections):
    """A config dict for the tiny network and data (width 1/16, one conv per block, 48² inputs)."""
    optim = {"iterations": iterations, "batch_size": 4, "checkpoint_every": 2, "log_every": 2}
    config = {
        "work_dir": str(work_dir), "num_workers": 0, "backend": "reference", "device": "cpu",
        "data": {"root": voc, "saliency_dir": saliency, "input_size": 48},
        "model": {"width": 0.0625, "convs_per_block": [1, 1, 1, 1, 1], "classifier_hidden": 256},
        "train_cam": dict(optim), "train_sgan": dict(optim),
        "figures": {"count": 1},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


def write_yaml(path, config):
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory):
    return make_tiny_voc(tmp_path_factory.mktemp("voc"))


@pytest.fixture(scope="module")
def stage1_run(tiny_voc, tmp_path_factory):
    """Run every stage-1 step (and figures) once through `sgan run`; returns (work_dir, config path)."""
    root = tmp_path_factory.mktemp("stage1")
    config_path = write_yaml(root / "exp.yaml", tiny_config(*tiny_voc, root / "work"))
    assert cli.main(["run", config_path, f"steps={STAGE1 + ['figures']}"]) == 0
    return root / "work", config_path


def test_every_step_writes_its_outputs(stage1_run, tiny_voc):
    work, _ = stage1_run
    voc, _ = tiny_voc
    paths = VOCPaths(voc)
    ids = read_id_list(paths.resolve("ImageSets/Segmentation/train_aug.txt"))
    labels = json.loads((work / "labels.json").read_text())
    assert labels["labels"] == image_level_labels(paths, ids, "xml")
    for name in ("cam", "sgan"):
        state = torch.load(work / "ckpt" / f"{name}.pt", weights_only=True)
        assert state["iteration"] == 4 and [h["iteration"] for h in state["history"]] == [2, 4]
        assert all(np.isfinite(h[k]) for h in state["history"] for k in h)
        assert not (work / "ckpt" / f"{name}.last.pt").exists()
    assert set(state["history"][0]) == {"iteration", "lr", "cls", "seed", "total"}
    for folder in ("seeds0", "seeds"):
        for image_id in ids:
            with Image.open(work / folder / f"{image_id}.png") as seeds, Image.open(paths.image(image_id)) as image:
                assert seeds.mode == "L" and seeds.size == image.size
                values = set(np.unique(np.asarray(seeds)).tolist())
            assert values <= {0, 255, *labels["labels"][image_id]}, (folder, image_id, values)
    assert (work / "figures" / f"{ids[0]}.png").stat().st_size > 0
    resolved = yaml.safe_load((work / "config.resolved.yaml").read_text())
    assert resolved["model"]["width"] == 0.0625
    assert "# git revision:" in (work / "config.resolved.yaml").read_text()
    assert "train-cam: it 4/4" in (work / "sgan.log").read_text()


def test_seed_metrics_match_a_direct_count(stage1_run, tiny_voc):
    work, _ = stage1_run
    paths = VOCPaths(tiny_voc[0])
    scores = json.loads((work / "metrics" / "seeds.json").read_text())
    correct = labelled = total = 0
    per_class_tp = np.zeros(21)
    per_class_gt = np.zeros(21)
    per_class_seeds = np.zeros(21)
    for image_id in read_id_list(paths.resolve("ImageSets/Segmentation/train.txt")):
        seeds = np.asarray(Image.open(work / "seeds" / f"{image_id}.png")).astype(int)
        gt = np.asarray(Image.open(paths.mask(image_id, "SegmentationClass"))).astype(int)
        valid = gt != 255
        hit = valid & (seeds == gt)
        correct += hit.sum()
        labelled += (valid & (seeds != 255)).sum()
        total += valid.sum()
        per_class_tp += np.bincount(gt[hit], minlength=21)
        per_class_gt += np.bincount(gt[valid], minlength=21)
        per_class_seeds += np.bincount(seeds[valid & (seeds != 255)], minlength=21)
    assert scores["overall_precision"] == pytest.approx(correct / labelled, rel=1e-12)
    assert scores["overall_recall"] == pytest.approx(correct / total, rel=1e-12)
    for c in range(21):
        expected = per_class_tp[c] / per_class_gt[c] if per_class_gt[c] else None
        assert scores["recall"][c] == (pytest.approx(expected, rel=1e-12) if expected is not None else None)
    matrix = np.asarray(scores["confusion_matrix"])
    assert matrix.shape == (21, 22) and matrix.sum() == total
    # both means: over the defined classes, and the authors' over all 21 (absent / never predicted = 0)
    precision = [tp / n for tp, n in zip(per_class_tp, per_class_seeds) if n]
    recall = [tp / n for tp, n in zip(per_class_tp, per_class_gt) if n]
    assert scores["mean_precision_defined"] == pytest.approx(np.mean(precision), rel=1e-12)
    assert scores["mean_recall_defined"] == pytest.approx(np.mean(recall), rel=1e-12)
    assert scores["mean_precision_all21"] == pytest.approx(np.sum(per_class_tp / (per_class_seeds + 1e-5)) / 21,
                                                           rel=1e-12)
    assert scores["mean_recall_all21"] == pytest.approx(np.sum(per_class_tp / (per_class_gt + 1e-5)) / 21, rel=1e-12)
    assert len(precision) < 21 and scores["mean_precision_all21"] < scores["mean_precision_defined"]
    assert set(scores["mean_conventions"]) == {"defined", "all21"}
    log = (work / "sgan.log").read_text()
    assert "mean(defined)" in log and "mean over all 21 classes, never-predicted or absent = 0 (the authors')" in log


def test_rerun_skips_up_to_date_work_and_overwrite_redoes_it(stage1_run):
    work, config_path = stage1_run
    watched = [work / "ckpt" / "cam.pt", work / "seeds" / ".done.json", work / "metrics" / "seeds.json"]
    before = [p.stat().st_mtime_ns for p in watched]
    assert cli.main(["run", config_path, f"steps={STAGE1}"]) == 0
    assert [p.stat().st_mtime_ns for p in watched] == before
    assert "is up to date" in (work / "sgan.log").read_text()
    assert cli.main(["eval-seeds", config_path, "--overwrite"]) == 0
    assert watched[2].stat().st_mtime_ns != before[2]


def test_baseline_checkpoint_gives_seeds_and_variants_train(stage1_run, tiny_voc, tmp_path):
    """The Baseline's seeds come from ckpt/cam.pt through the same step; the two ablation variants
    train (with no seed term) into their own checkpoints."""
    work, config_path = stage1_run
    argv = [config_path, f"work_dir={work}"]
    assert cli.main(["seeds"] + argv + ["seeds.checkpoint=ckpt/cam.pt", "seeds.out_dir=seeds_baseline",
                                        "seeds.rule=authors", "seeds.flip=true", "seeds.scales=[1.0, 0.75]"]) == 0
    assert len(list((work / "seeds_baseline").glob("*.png"))) == 8
    for variant in ("sgan-seed", "sgan-sal-seed"):
        assert cli.main(["train-sgan"] + argv + [f"train_sgan.variant={variant}", "train_sgan.iterations=2",
                                                 f"train_sgan.checkpoint=ckpt/{variant}.pt"]) == 0
        state = torch.load(work / "ckpt" / f"{variant}.pt", weights_only=True)
        assert state["model_info"]["variant"] == variant
        assert not any(k.startswith("seed_branch") for k in state["model"])
        assert set(state["history"][0]) == {"iteration", "lr", "cls"}
    # the seed branch is asked for but the variant has none: a clear error, no output
    assert cli.main(["seeds"] + argv + ["seeds.checkpoint=ckpt/sgan-seed.pt", "seeds.out_dir=bad",
                                        "seeds.use_seed_branch=true"]) == 2
    assert not (work / "bad" / ".done.json").exists()


def test_missing_inputs_and_config_errors_exit_with_a_message(tiny_voc, tmp_path, capsys):
    config = tiny_config(*tiny_voc, tmp_path / "work")
    path = write_yaml(tmp_path / "exp.yaml", config)
    assert cli.main(["train-cam", path]) == 2  # labels.json not there yet
    assert "run the `labels` step first" in capsys.readouterr().err
    assert cli.main(["run", path, "train_cam.lr=fast", "trian_cam.lr=1"]) == 2
    err = capsys.readouterr().err
    assert "train_cam.lr: expected float" in err and "did you mean 'train_cam'" in err
    assert load_config(path).train_cam.iterations == 4


def test_classes_without_seeds_are_those_in_the_ground_truth_that_no_seed_labels():
    from sgan.pipeline.eval_seeds import classes_without_seeds
    names = ["bkg", "aero", "boat", "car"]
    counts = np.zeros((4, 5), dtype=np.int64)   # rows: GT; columns: seed labels, then unlabelled
    counts[0, 0] = 50                           # background, seeded
    counts[1, 1] = 7                            # aeroplane, seeded correctly
    counts[2, 4] = 30                           # boat: only unlabelled seeds on it ...
    counts[2, 0] = 3                            # ... or seeds of another class
    counts[0, 3] = 2                            # car seeds on background, and no car in the GT
    assert classes_without_seeds(counts, names) == ["boat"]
    counts[1, 2] = 1                            # one boat seed anywhere is enough
    assert classes_without_seeds(counts, names) == []
