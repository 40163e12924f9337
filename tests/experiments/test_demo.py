"""`sgan demo` end to end on a reduced configuration: every step runs, tables print, metrics are sane."""
import json
import math
import os
import socket
import subprocess
import sys
import time

import numpy as np
import torch

from sgan.cli import main
from sgan.experiments.demo import CONFIG_FILE, TABLE_ROWS, _slug, seed_summary_table, write_stage2_init
from sgan.models.deeplab import DeepLabVGG16, load_pretrained
from sgan.models.sgan_net import CAMNet
from sgan.train.loop import CHECKPOINT_FORMAT

REDUCED = [
    "demo.num_train=12", "demo.num_val=4", "demo.image_size=[64,64]", "data.input_size=64",
    "figures.count=1", "num_workers=0",
    "train_cam.iterations=6", "train_sgan.iterations=6", "train_seg.iterations=4",
    "train_cam.batch_size=4", "train_sgan.batch_size=4", "train_seg.batch_size=4",
    "train_cam.checkpoint_every=3", "train_sgan.checkpoint_every=3", "train_seg.checkpoint_every=3",
    "train_seg.resize=72", "train_seg.crop=64", "train_seg.crf_processes=1", "infer.crf_processes=1",
    "pretrain.iterations=4", "pretrain.num_images=16", "pretrain.batch_size=4", "pretrain.image_size=[48,48]",
    "pretrain.checkpoint_every=2",
]


def _numbers(value):
    """Every number inside a nested JSON value."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)


def test_reduced_demo_runs_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SGAN_NO_PROGRESS", "1")
    work_dir = tmp_path / "demo"
    assert main(["demo", os.path.abspath(CONFIG_FILE), f"work_dir={work_dir}", *REDUCED]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    report = printed[printed.index("Seeds on the 12 training images"):]   # the demo's closing report
    # printed once on stdout, logged once to the work dir's log, not again on the terminal
    assert (work_dir / "sgan.log").read_text().count(report.rstrip("\n")) == 1
    assert "Table II style" not in captured.err
    with open(work_dir / "metrics" / "demo.json") as stream:
        results = json.load(stream)

    assert set(results["seeds"]) == set(TABLE_ROWS) and set(results["segmentation_miou"]) == set(TABLE_ROWS)
    for name in TABLE_ROWS:
        seeds = results["seeds"][name]
        for key in ("mean_precision_authors", "mean_recall_authors", "overall_precision", "overall_recall", "miou"):
            assert math.isfinite(seeds[key]) and 0.0 <= seeds[key] <= 1.0, (name, key, seeds[key])
        miou = results["segmentation_miou"][name]
        assert math.isfinite(miou) and 0.0 <= miou <= 1.0, (name, miou)
        # every per-class score written by eval and eval-seeds is a fraction too
        slug = _slug(name)
        for path in (work_dir / "metrics" / f"seg_{slug}.json", work_dir / "metrics" / f"seeds_{slug}.json"):
            with open(path) as stream:
                scores = json.load(stream)
            for key in ("iou", "precision", "recall"):
                values = [v for v in scores[key] if v is not None]
                assert values and all(0.0 <= v <= 1.0 for v in values), (path, key)
        assert len(os.listdir(work_dir / f"pred_{slug}")) >= 4
        assert len([f for f in os.listdir(work_dir / f"seeds_{slug}") if f.endswith(".png")]) == 12
        # the report's three tables (seeds, seed IoU per class, Table II) hold one row per variant
        assert sum(line.startswith(name + " ") for line in report.splitlines()) == 3, name
    assert all(math.isfinite(v) for v in _numbers(results["timings_s"]))
    assert "Table II style" in report and "the authors' convention" in report

    loss_plot = work_dir / "figures" / "losses.png"
    assert loss_plot.stat().st_size > 0 and open(loss_plot, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    figures = [f for f in os.listdir(work_dir / "figures") if f.endswith(".png") and f != "losses.png"]
    assert len(figures) == 1

    # a second run finds every output and skips the work: no checkpoint rewritten, same tables
    checkpoints = {path: path.stat().st_mtime_ns for path in (work_dir / "ckpt").iterdir()}
    assert len(checkpoints) == 9   # the pretraining, cam, 3 SGAN variants, 4 DeepLabs
    assert main(["demo", os.path.abspath(CONFIG_FILE), f"work_dir={work_dir}", *REDUCED]) == 0
    assert {path: path.stat().st_mtime_ns for path in (work_dir / "ckpt").iterdir()} == checkpoints
    with open(work_dir / "metrics" / "demo.json") as stream:
        again = json.load(stream)
    assert again["tables"] == results["tables"]


def test_demo_rejects_an_unknown_variant(tmp_path, capsys):
    assert main(["demo", os.path.abspath(CONFIG_FILE), f"work_dir={tmp_path}", "demo.variants=[Baseline,SGAN-X]"]) == 2
    assert "demo.variants" in capsys.readouterr().err


def test_torchrun_demo_refuses_at_once(tmp_path):
    """Under torchrun only rank 0 would run the demo while the other ranks wait at a barrier."""
    repository = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             f"--master_port={port}", "-m", "sgan.cli", "demo", f"work_dir={tmp_path / 'demo'}"],
                            cwd=repository, env={**os.environ, "PYTHONPATH": repository}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=240)
    assert result.returncode != 0
    assert "sgan demo: error: WORLD_SIZE: expected 1, got 2: the demo runs in one process" in result.stdout
    assert not (tmp_path / "demo" / "data").exists()  # nothing generated
    assert time.time() - started < 120


def test_stage2_init_deepens_the_baseline_backbone_with_identity_convolutions(tmp_path):
    torch.manual_seed(0)
    options = dict(width=0.0625, convs_per_block=[1, 2, 2, 1, 3], classifier="paper",
                   classifier_hidden=64, dropout=0.5)
    cam = CAMNet(options)
    checkpoint = tmp_path / "cam.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": cam.state_dict(),
                "model_info": {"normalisation": "imagenet_rgb"}}, checkpoint)
    init, normalisation = write_stage2_init(str(checkpoint), str(tmp_path / "init.pt"))
    assert normalisation == "imagenet_rgb"

    deeplab = DeepLabVGG16(width=0.0625)
    report = load_pretrained(deeplab, init, "caffe")
    assert not [k for k in report.initialised if k.startswith("backbone.")]
    trunk = deeplab.backbone
    for name in cam.backbone.conv_names:   # trained convolutions are copied
        assert torch.equal(getattr(trunk, name).weight, getattr(cam.backbone, name).weight)
    added = ["conv1_2", "conv3_3", "conv4_2", "conv4_3"]
    assert not set(added) & set(cam.backbone.conv_names)
    for name in added:                     # the others are the identity on ReLU outputs
        conv = getattr(trunk, name)
        features = torch.relu(torch.randn(2, conv.in_channels, 7, 9))
        assert torch.equal(torch.relu(conv(features)), features)
        assert torch.equal(conv.bias, torch.zeros_like(conv.bias))


def test_seed_table_shows_the_authors_means_over_the_datasets_classes():
    counts = np.zeros((21, 22))
    counts[0, 0], counts[0, 21] = 6, 4        # background: 6 of 10 pixels seeded right, 4 unlabelled
    counts[1, 1], counts[1, 0] = 3, 1         # aeroplane: 3 right, 1 seeded as background
    counts[4, 21] = 5                         # boat: never seeded (counts 0, not left out)
    scores = {"confusion_matrix": counts.tolist(), "miou": 0.3}
    header, row, note = seed_summary_table([("SGAN", scores)], [1, 4]).splitlines()
    assert header.split() == ["variant", "precision", "recall", "mIoU"]
    precision = (6 / 7 + 3 / 3 + 0) / 3       # columns: background 7 seeds, aeroplane 3, boat none
    recall = (6 / 10 + 3 / 4 + 0 / 5) / 3
    assert row.split() == ["SGAN", f"{100 * precision:.1f}", f"{100 * recall:.1f}", "30.0"]
    assert "authors' convention" in note and "never predicted counting 0" in note and "3 classes" not in note
