"""Compare two work dirs of the same pipeline (e.g. the demo in float32 and in bf16, or one commit
against another): how many seed and prediction pixels agree, whether the trained weights are equal
to the last bit, how each training's loss went, and whether the metrics files are identical.

    python -m bench.compare_runs runs/demo-fp32 runs/demo-bf16 --output bench/results/demo-fp32-vs-bf16.json

For every folder ``seeds*`` / ``pred*`` holding PNGs in both: the share of pixels with the same label
(over the images of both). For every ``ckpt/*.pt`` training checkpoint in both: ``identical`` (every
model tensor equal, bit for bit), the largest absolute difference, and each run's first and last
logged loss terms. For every ``metrics/*.json`` in both (timing files aside): whether the two hold the
same values once each run's own folder is written ``<work_dir>`` and the records (input fingerprints,
which hash file paths) and the demo's ``timings_s`` are left out, and each one's ``miou`` in both runs.
Each run's git revision and command are read from its ``config.resolved.yaml``. The JSON starts with the usual provenance (machine, versions, git, command).
"""
import argparse
import glob
import json
import os
import sys

import numpy as np
import torch
from PIL import Image

from bench.harness import device_header
from sgan.train import load_checkpoint
from sgan.utils.io import save_json

TIMING_FILES = "train_seg_timing"   # metrics files that hold wall-clock times, never equal between runs
LEFT_OUT_KEYS = ("record", "timings_s")   # input fingerprints (they hash paths) and the demo's clock times


def label_folders(root):
    """Names of the folders of ``root`` whose name starts with seeds or pred and that hold PNGs."""
    return sorted(name for name in os.listdir(root) if name.startswith(("seeds", "pred"))
                  and glob.glob(os.path.join(root, name, "*.png")))


def pixel_agreement(folder_a, folder_b):
    """{images, pixels, agreeing share} over the PNGs present in both folders."""
    names = sorted(set(os.listdir(folder_a)) & set(os.listdir(folder_b)))
    names = [name for name in names if name.endswith(".png")]
    same = total = 0
    for name in names:
        a, b = (np.asarray(Image.open(os.path.join(f, name))) for f in (folder_a, folder_b))
        if a.shape != b.shape:
            raise ValueError(f"{name}: {folder_a} holds {a.shape}, {folder_b} {b.shape}")
        same += int((a == b).sum())
        total += a.size
    return {"images": len(names), "pixels": total, "agreeing_share": same / total if total else None}


def loss_ends(history):
    """The first and the last logged entry of a training history, loss terms only."""
    if not history:
        return None
    keep = lambda entry: {k: v for k, v in entry.items() if k not in ("iteration", "lr", "crf_wait_ms")}  # noqa: E731
    return {"first": {"iteration": history[0]["iteration"], **keep(history[0])},
            "last": {"iteration": history[-1]["iteration"], **keep(history[-1])}}


def compare_checkpoints(path_a, path_b):
    a, b = load_checkpoint(path_a), load_checkpoint(path_b)
    keys = sorted(set(a["model"]) | set(b["model"]))
    largest, identical = 0.0, a["model"].keys() == b["model"].keys()
    for key in keys:
        if key not in a["model"] or key not in b["model"]:
            continue
        x, y = a["model"][key], b["model"][key]
        identical = identical and x.dtype == y.dtype and torch.equal(x, y)
        if x.is_floating_point() and x.shape == y.shape:
            largest = max(largest, float((x.double() - y.double()).abs().max()) if x.numel() else 0.0)
    return {"identical": identical, "max_abs_difference": largest,
            "losses": [loss_ends(a.get("history")), loss_ends(b.get("history"))]}


def portable(value, root):
    """``value`` (parsed JSON) with ``root`` in its strings written ``<work_dir>`` and LEFT_OUT_KEYS left out."""
    if isinstance(value, dict):
        return {key: portable(item, root) for key, item in value.items() if key not in LEFT_OUT_KEYS}
    if isinstance(value, list):
        return [portable(item, root) for item in value]
    if isinstance(value, str):
        return value.replace(os.path.abspath(root), "<work_dir>")
    return value


def run_provenance(root):
    """{"git", "command"} from the header of ``root``/config.resolved.yaml (None where absent)."""
    found = {"git": None, "command": None}
    try:
        with open(os.path.join(root, "config.resolved.yaml")) as config:
            for line in config:
                for key, prefix in (("git", "# git revision: "), ("command", "# command: ")):
                    if line.startswith(prefix):
                        found[key] = line[len(prefix):].strip()
    except OSError:
        pass
    return found


def compare(run_a, run_b):
    """The comparison of two work dirs as a JSON-able dict (module doc)."""
    for root in (run_a, run_b):
        if not os.path.isdir(root):
            raise ValueError(f"{root}: not a folder (expected a work dir)")
    folders = sorted(set(label_folders(run_a)) & set(label_folders(run_b)))
    checkpoints = sorted(set(os.listdir(os.path.join(run_a, "ckpt"))) & set(os.listdir(os.path.join(run_b, "ckpt")))
                         if all(os.path.isdir(os.path.join(r, "ckpt")) for r in (run_a, run_b)) else [])
    metrics = sorted(set(glob.glob("*.json", root_dir=os.path.join(run_a, "metrics")))
                     & set(glob.glob("*.json", root_dir=os.path.join(run_b, "metrics"))))
    result = {"runs": [{"work_dir": root, **run_provenance(root)} for root in (run_a, run_b)],
              "labels": {name: pixel_agreement(os.path.join(run_a, name), os.path.join(run_b, name))
                         for name in folders},
              "checkpoints": {name: compare_checkpoints(os.path.join(run_a, "ckpt", name),
                                                        os.path.join(run_b, "ckpt", name))
                              for name in checkpoints if name.endswith(".pt") and not name.endswith(".last.pt")},
              "metrics_identical": {}, "miou": {}}
    for name in metrics:
        if name.startswith(TIMING_FILES):
            continue
        with open(os.path.join(run_a, "metrics", name)) as a, open(os.path.join(run_b, "metrics", name)) as b:
            values = json.load(a), json.load(b)
        result["metrics_identical"][name] = portable(values[0], run_a) == portable(values[1], run_b)
        if all(isinstance(v, dict) and "miou" in v for v in values):
            result["miou"][name] = [v["miou"] for v in values]
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.compare_runs", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    parser.add_argument("--output", default=None, help="write the comparison as JSON here")
    args = parser.parse_args(argv)
    try:
        result = {**device_header(torch.device("cpu")), **compare(args.run_a, args.run_b)}
    except ValueError as error:
        print(f"compare_runs: error: {error}", file=sys.stderr)
        return 2
    for name, row in result["labels"].items():
        print(f"{name:24s} {row['images']:4d} images, {100 * row['agreeing_share']:.2f}% of pixels agree")
    for name, row in result["checkpoints"].items():
        verdict = "identical" if row["identical"] else "differ"
        print(f"{name:24s} {verdict} (max |diff| {row['max_abs_difference']:.3g})")
    for name, same in result["metrics_identical"].items():
        miou = result["miou"].get(name)
        print(f"{name:24s} {'identical' if same else 'differ'}"
              + (f" (mIoU {100 * miou[0]:.1f} / {100 * miou[1]:.1f})" if miou else ""))
    if args.output:
        save_json(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
