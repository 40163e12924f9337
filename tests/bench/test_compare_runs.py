"""bench/compare_runs.py: pixel agreement of label folders, bit-identity of checkpoints, loss ends,
metrics files, and its one-line error for a path that is not a work dir."""
import json

import numpy as np
import torch
from PIL import Image

from bench import compare_runs
from sgan.train.loop import CHECKPOINT_FORMAT


def make_run(root, seeds, weight, history):
    """A work dir with seeds/<id>.png, ckpt/sgan.pt (+ an ignored .last.pt) and metrics files."""
    (root / "seeds").mkdir(parents=True)
    for index, labels in enumerate(seeds):
        Image.fromarray(labels.astype(np.uint8), "L").save(root / "seeds" / f"{index}.png")
    (root / "ckpt").mkdir()
    state = {"format": CHECKPOINT_FORMAT, "model": {"w": weight, "steps": torch.tensor(3)}, "history": history}
    torch.save(state, root / "ckpt" / "sgan.pt")
    torch.save(state, root / "ckpt" / "sgan.last.pt")
    (root / "config.resolved.yaml").write_text("# git revision: abc123\n# command: sgan demo x.yaml\nseed: 0\n")
    (root / "metrics").mkdir()
    (root / "metrics" / "seeds.json").write_text(json.dumps({"miou": 0.5, "seeds_dir": str(root / "seeds"),
                                                             "record": {"inputs": {"seeds": str(root)}},
                                                             "timings_s": {"total": float(weight.sum())}}))
    (root / "metrics" / "train_seg_timing.json").write_text(json.dumps({"ms": float(weight.sum())}))
    return str(root)


def test_compare_counts_agreeing_pixels_and_equal_bits(tmp_path):
    seeds = [np.zeros((4, 5)), np.full((3, 2), 7)]
    changed = [seeds[0].copy(), seeds[1]]
    changed[0][0, :3] = 255   # 3 of 26 pixels
    history = [{"iteration": 10, "lr": 0.1, "cls": 2.0}, {"iteration": 20, "lr": 0.05, "cls": 1.0}]
    weight = torch.linspace(-1, 1, 6)
    a = make_run(tmp_path / "a", seeds, weight, history)
    b = make_run(tmp_path / "b", changed, weight + torch.tensor([0, 0, 0, 0, 0, 1e-3]), history[:1])
    result = compare_runs.compare(a, b)
    assert result["labels"] == {"seeds": {"images": 2, "pixels": 26, "agreeing_share": 23 / 26}}
    row = result["checkpoints"]["sgan.pt"]
    assert set(result["checkpoints"]) == {"sgan.pt"} and row["identical"] is False
    assert abs(row["max_abs_difference"] - 1e-3) < 1e-6
    assert row["losses"][0] == {"first": {"iteration": 10, "cls": 2.0}, "last": {"iteration": 20, "cls": 1.0}}
    assert row["losses"][1]["last"] == {"iteration": 10, "cls": 2.0}
    assert result["metrics_identical"] == {"seeds.json": True} and result["miou"] == {"seeds.json": [0.5, 0.5]}
    assert result["runs"][0] == {"work_dir": a, "git": "abc123", "command": "sgan demo x.yaml"}
    metrics = tmp_path / "b" / "metrics" / "seeds.json"
    metrics.write_text(metrics.read_text().replace("0.5", "0.505"))   # a 1% change of a value
    assert compare_runs.compare(a, b)["metrics_identical"] == {"seeds.json": False}
    same = compare_runs.compare(a, make_run(tmp_path / "c", seeds, weight.clone(), history))
    assert same["checkpoints"]["sgan.pt"]["identical"] is True and same["labels"]["seeds"]["agreeing_share"] == 1.0


def test_cli_writes_json_with_provenance_and_refuses_a_missing_run(tmp_path, capsys):
    run = make_run(tmp_path / "a", [np.zeros((2, 2))], torch.zeros(2), [])
    output = tmp_path / "out.json"
    assert compare_runs.main([run, run, "--output", str(output)]) == 0
    written = json.loads(output.read_text())
    assert written["git"] and written["cpu"] and written["labels"]["seeds"]["agreeing_share"] == 1.0
    assert compare_runs.main([run, str(tmp_path / "nowhere")]) == 2
    error = capsys.readouterr().err
    assert error.strip() == f"compare_runs: error: {tmp_path / 'nowhere'}: not a folder (expected a work dir)"
