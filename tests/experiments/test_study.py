"""sgan study: the demo over training seeds on held-out data, its statistics, findings and properties."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from sgan.cli import main
from sgan.experiments import synthetic
from sgan.experiments.demo import CONFIG_FILE, TABLE_ROWS
from sgan.experiments.study import _lambda_row, _mean_std, benchmark_properties, findings
from tests.experiments.test_demo import REDUCED


def test_reduced_study_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)   # the config's relative work_dir, as a user runs it
    monkeypatch.setenv("SGAN_NO_PROGRESS", "1")
    args = ["study", os.path.abspath(CONFIG_FILE), *REDUCED, "study.training_seeds=[0,1]", "study.lambdas=[0.05,0.15]"]
    assert main(args) == 0
    out = capsys.readouterr().out
    root = tmp_path / "runs" / "demo" / "study"
    results = json.loads((root / "metrics" / "study.json").read_text())
    assert results["data_seed"] == 1 and results["tuning_data_seed"] == 0 and results["training_seeds"] == [0, 1]
    assert set(results["summary"]) == set(TABLE_ROWS)
    for name, entry in results["summary"].items():
        for key in ("mean_precision_authors", "mean_recall_authors", "seed_miou", "segmentation_miou"):
            stats = entry[key]
            values = [run[name]["seeds"].get(key.replace("seed_", ""), None) if key != "segmentation_miou"
                      else run[name]["segmentation"]["miou"] for run in results["per_run"]]
            assert stats["n"] == 2 and stats["mean"] == pytest.approx(np.mean(values))
            assert stats["std"] == pytest.approx(np.std(values, ddof=1))
    # the two training seeds are two runs: different networks, different seeds
    first, second = (root / "seed_0" / "ckpt" / "cam.pt"), (root / "seed_1" / "ckpt" / "cam.pt")
    assert first.read_bytes() != second.read_bytes()
    # one dataset (the held-out seed) and one pretraining, shared by both
    assert json.loads((root / "data" / "synthetic.json").read_text())["seed"] == 1
    assert not (root / "seed_0" / "data").exists() and (root / "pretrain" / "pretrained_vgg16.pth").is_file()
    assert [row["lambda"] for row in results["table3"]] == [0.05, 0.15]
    assert (root / "seed_1" / "metrics" / "seeds_sgan_lambda0p05.json").is_file()
    assert results["table3"][1]["seed_miou"] == results["summary"]["SGAN"]["seed_miou"]   # λ 0.15 is the SGAN row
    assert set(results["properties"]["seed_recall_part"]) == set(TABLE_ROWS)
    assert len(results["findings"]) == 7
    assert open(root / "figures" / "study.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "Table II style" in out and "Table III" in out and " ± " in out and "Findings:" in out
    report = out[out.index("Study on held-out data seed 1"):].rstrip("\n")   # tables and findings, also logged
    assert (tmp_path / "runs" / "demo" / "sgan.log").read_text().count(report) == 1

    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*.pt")}
    assert main(args) == 0   # everything done: nothing retrained
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.pt")} == stamps


def _summary(means, std=0.01):
    return {name: {"seed_miou": {"mean": m, "std": std, "n": 3}, "segmentation_miou": {"mean": m, "std": std, "n": 3},
                   "seed_iou": {"aeroplane": {"mean": m - (0.2 if name == "SGAN-SAL-SEED" else 0), "std": std, "n": 3},
                                "cat": {"mean": m, "std": std, "n": 3}}}
            for name, m in means.items()}


def test_findings_follow_the_means_and_the_error_bars():
    paper_order = _summary({"Baseline": 0.50, "SGAN-SAL-SEED": 0.45, "SGAN-SEED": 0.60, "SGAN": 0.62})
    checks = findings(paper_order, [1, 8])   # aeroplane (typical background sky), cat (none)
    assert all(c["holds"] for c in checks)
    assert all(c["beyond_one_std"] for c in checks if c["beyond_one_std"] is not None)
    typical = checks[-1]
    assert typical["difference"] == pytest.approx(0.2)
    noisy = findings(_summary({"Baseline": 0.50, "SGAN-SAL-SEED": 0.45, "SGAN-SEED": 0.52, "SGAN": 0.51}, std=0.05),
                     [1, 8])
    by_name = {c["finding"]: c for c in noisy}
    above = by_name["SGAN-SEED above Baseline (seed_miou)"]
    assert above["holds"] and not above["beyond_one_std"]   # +0.02 with stds of 0.05
    assert not by_name["SGAN at or above SGAN-SEED (seed_miou)"]["holds"]


def test_mean_std_is_the_sample_std_and_skips_undefined_values():
    stats = _mean_std([0.2, 0.4, None, 0.6])
    assert stats == {"mean": pytest.approx(0.4), "std": pytest.approx(0.2), "n": 3}
    assert _mean_std([None]) is None and _mean_std([0.3])["std"] == 0.0


def test_benchmark_properties_measure_parts_and_bodies(tmp_path):
    paths = synthetic.generate(tmp_path, num_train=6, num_val=1, image_size=(64, 64), seed=2, classes=4)
    perfect, empty = tmp_path / "perfect", tmp_path / "empty"
    perfect.mkdir(), empty.mkdir()
    parts_seen = 0
    for image_id in paths["train_ids"]:
        gt = np.array(Image.open(os.path.join(paths["segmentation_class_aug"], image_id + ".png")))
        parts = np.array(Image.open(os.path.join(paths["parts"], image_id + ".png"))) > 0
        assert (gt[parts] > 0).all()   # every part pixel belongs to an object
        parts_seen += parts.sum()
        Image.fromarray(gt).save(perfect / f"{image_id}.png")
        only_parts = np.where(parts, gt, 0).astype(np.uint8)
        Image.fromarray(only_parts).save(empty / f"{image_id}.png")
    assert parts_seen > 0
    props = benchmark_properties(tmp_path, paths["train_ids"], {"gt": str(perfect), "parts": str(empty)},
                                 [1, 4, 7, 8], (64, 64))
    assert props["seed_recall_part"]["gt"] == 1.0 and props["seed_recall_body"]["gt"] == 1.0
    assert props["seed_recall_part"]["parts"] == 1.0 and props["seed_recall_body"]["parts"] == 0.0
    assert props["feature_map"] == [8, 8] and 0 < props["part_share_of_object_median"] < 0.5
    assert 0 <= props["two_class_image_share"] <= 1 and set(props["typical_background_share"]) <= {
        "aeroplane", "boat", "car", "cow"}


def test_a_diverged_lambda_is_counted_not_averaged():
    scores = {"seeds": {"mean_precision_authors": 0.5, "mean_recall_authors": 0.4, "miou": 0.3},
              "seed_iou": [0.6] + [None] * 20}
    row = _lambda_row([None, scores], [1])
    assert row["diverged"] == 1 and row["runs"] == 2
    assert row["seed_miou"] == {"mean": 0.3, "std": 0.0, "n": 1}
    assert _lambda_row([None, None], [1])["seed_miou"] is None
