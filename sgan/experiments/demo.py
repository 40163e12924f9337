"""The whole method on a generated synthetic benchmark (CPU): stage 0, stage 1 variants, stage 2, tables.

``sgan demo`` (or ``python -m sgan.cli demo [configs/demo.yaml] [key=value ...]``) uses
``configs/demo.yaml`` when no config file is given. It chains the steps of sgan.pipeline.STEPS in
the table's order (:func:`chained_steps`):

1. generates the synthetic VOC-layout dataset (sgan.experiments.synthetic) under ``demo.data_dir`` unless a
   complete one with the same parameters is there, and points ``data.root`` / ``data.saliency_dir``
   at it (whatever the config said);
2. runs the stage-0 steps once: with ``demo.pretrain``, ``pretrain`` (the backbone as a classifier
   on a synthetic set disjoint from the benchmark: the stand-in for ImageNet weights, which
   ``model.weights`` then names, so every stage-1 network starts from it), then ``labels``,
   ``train-cam``, ``initial-seeds``;
3. for each variant of ``demo.variants`` (Table II: Baseline, SGAN-SAL-SEED, SGAN-SEED, SGAN): its
   stage-1 network (Baseline is the CAM network of step 2; the others ``train-sgan`` with
   ``train_sgan.variant``), ``seeds`` and ``eval-seeds``, then with ``demo.stage2``:
   ``train-seg`` on those seeds, ``infer`` on the val list and ``eval``; DeepLab's VGG-16 starts,
   for every variant alike, from the pretrain weights (``demo.stage2_init: pretrained``), from the
   baseline CAM network's backbone deepened with identity convolutions (``baseline``,
   :func:`write_stage2_init`) or from ``train_seg.weights`` (``config``);
4. ``figures`` for the variants (with ``demo.figures``) and a plot of every training loss;
5. prints the seed table (the authors' mean precision / recall over background and the dataset's
   classes and the mIoU of the seeds on the training images) and the Table II style table
   (per-class IoU and mIoU of stage 2 on val), and saves them with the wall time of every step in
   ``<work_dir>/metrics/demo.json``.

One run is one training seed; ``sgan study`` runs it over several on held-out data.

Every step writes its own files under the work dir, one name per variant (``ckpt/sgan_<v>.pt``,
``seeds_<v>/``, ``pred_<v>/``, ``metrics/seg_<v>.json`` ...), and skips what is already done, so an
interrupted demo continues where it stopped; ``--overwrite`` redoes everything.
"""
import os
import time

import torch

from sgan.config import resolve
from sgan.data.voc_classes import CLASS_NAMES, SHORT_NAMES
from sgan.experiments import synthetic
from sgan.metrics import format_class_table
from sgan.models.deeplab import VGG16_CONVS
from sgan.pipeline import STEPS, run_step, work_path
from sgan.pipeline._validate import validate_inputs
from sgan.pipeline.eval_seeds import authors_mean
from sgan.train import load_checkpoint
from sgan.utils.io import atomic_writer, load_json, save_json, save_torch_if_changed
from sgan.utils.logging import get_logger, print_and_log

STEP = "demo"

# The rows of Table II: name -> its train_sgan.variant (None: the baseline CAM network, no SGAN training).
TABLE_ROWS = {"Baseline": None, "SGAN-SAL-SEED": "sgan-sal-seed", "SGAN-SEED": "sgan-seed", "SGAN": "sgan"}
# the config of `sgan demo` without a config file (absent when the package is installed without the repo)
CONFIG_FILE = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "configs", "demo.yaml"))

SECTION = dict(defaults={
    "data_dir": "data",
    "num_train": 200,
    "num_val": 80,
    "image_size": [160, 160],
    "data_seed": 0,
    "classes": 6,
    "variants": list(TABLE_ROWS),
    "pretrain": True,
    "stage2": True,
    "stage2_init": "pretrained",
    "figures": True,
    "loss_plot": "figures/losses.png",
    "results": "metrics/demo.json",
}, choices={"stage2_init": ("pretrained", "baseline", "config")},
    bounds={"num_train": "[1, inf)", "num_val": "[1, inf)", "image_size": "[32, inf)", "data_seed": "[0, inf)",
            "classes": "[1, 20]"},
    doc="the demo: data_dir (relative to work_dir) receives the synthetic dataset of num_train/num_val "
        "images of image_size [H, W] with the first `classes` classes, drawn with data_seed; variants "
        "from Baseline, SGAN-SAL-SEED, SGAN-SEED, SGAN; stage2: also train/infer/eval DeepLab; "
        "stage2_init: baseline (DeepLab's VGG-16 starts from the baseline CAM network's backbone, the "
        "stand-in for ImageNet weights) or config (train_seg.weights as configured)")


def derive_config(cfg, changes):
    """A new validated Config: ``cfg`` (a Config) with ``changes`` ({section: {key: value}}) applied
    over its sections; ``cfg`` itself is left as it is. ValueError as from sgan.config.resolve when a
    changed value is invalid."""
    data = cfg.to_dict()
    for section, values in changes.items():
        data[section] = {**data[section], **values}
    return resolve(data, source="demo")


def chained_steps(section):
    """The Steps the demo chains, in the table's order: those `sgan run` chains by default (stage 2
    with ``demo.stage2``) and ``figures`` with ``demo.figures``. Stage 0 runs once, stages 1 and 2 once
    per variant (all of stage 1 before stage 2), figures once after stage 1."""
    optional = {"figures": section.figures, "pretrain": section.pretrain}
    return [step for step in STEPS if step.stage is not None and (step.default or optional.get(step.name, False))
            and (step.stage != 2 or section.stage2)]


def _slug(name):
    return name.lower().replace("-", "_")


def check_demo_section(section):
    """Check the ``demo`` section's combinations that its schema cannot express: the variants are a
    non-empty list of Table II's rows, ``image_size`` is [height, width], and ``stage2_init``
    pretrained comes with ``pretrain``; ValueError naming the key otherwise."""
    unknown = [name for name in section.variants if name not in TABLE_ROWS]
    if unknown or not section.variants:
        raise ValueError(f"demo.variants: expected a non-empty list from {list(TABLE_ROWS)}, "
                         f"got {list(section.variants)}")
    if len(section.image_size) != 2:
        raise ValueError(f"demo.image_size: expected [height, width], got {list(section.image_size)}")
    if section.stage2 and section.stage2_init == "pretrained" and not section.pretrain:
        raise ValueError("demo.stage2_init: 'pretrained' needs demo.pretrain=true (the weights it reads are "
                         "the pretrain step's); set demo.stage2_init=baseline or config")


def prepare_data(cfg):
    """Generate the dataset unless present; cfg with data.root and data.saliency_dir pointing at it."""
    section = cfg.demo
    root = work_path(cfg, section.data_dir)
    params = dict(num_train=section.num_train, num_val=section.num_val,
                  image_size=tuple(section.image_size), seed=section.data_seed, classes=section.classes)
    logger = get_logger("demo")
    if synthetic.is_generated(root, **params):
        logger.info("demo: synthetic dataset found in %s", root)
    else:
        start = time.time()
        synthetic.generate(root, **params)
        logger.info("demo: generated %d + %d synthetic images in %s (%.1f s)", section.num_train,
                    section.num_val, root, time.time() - start)
    paths = synthetic.layout(root)
    return derive_config(cfg, {"data": {"root": paths["voc"], "saliency_dir": paths["saliency"]}})


def stage1_config(cfg):
    """cfg with data.root / data.saliency_dir at the demo's dataset (generated unless present) and,
    with demo.pretrain, model.weights at the pretrain step's weights (torchvision naming)."""
    cfg = prepare_data(cfg)
    if cfg.demo.pretrain:
        cfg = derive_config(cfg, {"model": {"weights": work_path(cfg, cfg.pretrain.weights), "weights_naming": "torchvision"}})
    return cfg


def variant_configs(cfg, name):
    """The config of one variant's steps: its checkpoints, seeds, predictions and metrics files."""
    slug = _slug(name)
    stage1_checkpoint = cfg.train_cam.checkpoint if TABLE_ROWS[name] is None else f"ckpt/sgan_{slug}.pt"
    changes = {
        "seeds": {"checkpoint": stage1_checkpoint, "out_dir": f"seeds_{slug}"},
        "eval_seeds": {"seeds_dir": f"seeds_{slug}", "out": f"metrics/seeds_{slug}.json"},
        "train_seg": {"seeds_dir": f"seeds_{slug}", "checkpoint": f"ckpt/deeplab_{slug}.pt",
                      "timing_file": f"metrics/train_seg_timing_{slug}.json"},
        "infer": {"checkpoint": f"ckpt/deeplab_{slug}.pt", "output_dir": f"pred_{slug}"},
        "eval": {"predictions": f"pred_{slug}", "output": f"metrics/seg_{slug}.json", "name": name},
    }
    if TABLE_ROWS[name] is not None:
        changes["train_sgan"] = {"variant": TABLE_ROWS[name], "checkpoint": stage1_checkpoint}
        if TABLE_ROWS[name] != "sgan":   # only SGAN has a seed branch
            changes["seeds"]["use_seed_branch"] = False
    return derive_config(cfg, changes)


def write_stage2_init(cam_checkpoint, path):
    """The stand-in for ImageNet weights of stage 2: the baseline CAM network's backbone as a
    Caffe-named VGG-16 state dict (``conv1_1.weight`` ...), read by train-seg like any weights file.

    Convolutions that a reduced backbone (``model.convs_per_block``) leaves out get identity (Dirac)
    kernels and zero biases: after a ReLU, conv + ReLU is then the identity, so the deepened trunk
    starts out computing the trained features (Net2Net's "deeper" transform). Returns (path, the
    input normalisation the backbone was trained with: stage 2 must use the same, not the
    ``caffe_bgr`` that ``auto`` would infer from the Caffe naming). Rewritten whenever its bytes
    would differ (they are a function of the checkpoint's), so train-seg's record (a content hash)
    sees a change exactly when the baseline changed.
    """
    state = load_checkpoint(cam_checkpoint)
    weights = {key[len("backbone."):]: value for key, value in state["model"].items() if key.startswith("backbone.")}
    for block in VGG16_CONVS:
        previous = None
        for name, _ in block:
            if f"{name}.weight" not in weights:
                if previous is None:
                    raise ValueError(f"{cam_checkpoint}: its backbone has no {name}; the first convolution "
                                     "of every block is needed")
                channels = weights[f"{previous}.weight"].shape[0]
                identity = torch.empty(channels, channels, 3, 3)
                torch.nn.init.dirac_(identity)
                weights[f"{name}.weight"], weights[f"{name}.bias"] = identity, torch.zeros(channels)
            previous = name
    save_torch_if_changed(path, weights)
    return path, state["model_info"]["normalisation"]


def seed_summary_note(num_classes):
    return (f"precision, recall: the authors' convention, x / (d + 1e-5) averaged over background and the "
            f"dataset's {num_classes} classes, a class never predicted counting 0 (on VOC: all 21 classes, "
            "eval-seeds mean_*_all21); mIoU over the defined classes")


def seed_summary_table(rows, classes):
    """Rows (variant, eval-seeds scores) -> the seed table: the authors' mean precision and recall
    over background and the dataset's ``classes`` (VOC indices; on VOC, where every class occurs,
    this is their mean over all 21) and the mIoU of the seeds (%), with a note saying which is which."""
    columns = [0] + sorted(classes)
    header = ("variant", "precision", "recall", "mIoU")
    cells = [header] + [(name, f"{100 * authors_mean(s['confusion_matrix'], 'precision', columns):.1f}",
                         f"{100 * authors_mean(s['confusion_matrix'], 'recall', columns):.1f}",
                         f"{100 * s['miou']:.1f}") for name, s in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    lines = [line[0].ljust(widths[0]) + "  " + "  ".join(c.rjust(w) for c, w in zip(line[1:], widths[1:]))
             for line in cells]
    return "\n".join(lines + [seed_summary_note(len(classes))])


def class_table(rows, labels, metric, summary, summary_name):
    """format_class_table restricted to background and the dataset's classes (VOC indices)."""
    columns = [0] + sorted(labels)
    restricted = [(name, {metric: [scores[metric][c] for c in columns], summary: scores[summary]})
                  for name, scores in rows]
    return format_class_table(restricted, [SHORT_NAMES[c] for c in columns], metric, summary, summary_name)


def plot_losses(path, histories):
    """One PNG: a panel per training (name -> history list of {"iteration", <terms>}), log-scale y."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    count = len(histories)
    columns = min(4, count)
    rows = (count + columns - 1) // columns
    figure, axes = pyplot.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for axis, (name, history) in zip(axes.ravel(), histories.items()):
        iterations = [entry["iteration"] for entry in history]
        for term in history[0]:
            if term in ("iteration", "lr", "top1") or term.endswith("_ms"):
                continue
            axis.plot(iterations, [entry[term] for entry in history], marker=".", markersize=3, label=term)
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("iteration")
        axis.set_yscale("log")
        axis.legend(fontsize=8)
    for axis in axes.ravel()[count:]:
        axis.axis("off")
    figure.tight_layout()
    with atomic_writer(path, "wb") as stream:
        figure.savefig(stream, format="png", dpi=90)
    pyplot.close(figure)
    return path


def run(cfg):
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        raise ValueError(f"WORLD_SIZE: expected 1, got {world}: the demo runs in one process (under torchrun "
                         f"only rank 0 would run it while the other ranks wait); start it without torchrun: "
                         f"sgan demo [CONFIG] [key=value ...]")
    section = cfg.demo
    check_demo_section(section)
    logger = get_logger("demo")
    start, timings = time.time(), {}

    def step(name, step_cfg, label=None):
        began = time.time()
        run_step(name, step_cfg)
        timings[label or name] = round(time.time() - began, 1)

    began = time.time()
    cfg = stage1_config(cfg)
    timings["generate"] = round(time.time() - began, 1)
    chained = chained_steps(section)
    unwritten = {}   # weights files this run writes before the steps that read them
    if section.pretrain:
        unwritten["model"] = {"weights": None}
    if section.stage2_init != "config":
        unwritten["train_seg"] = {"weights": None}
    validate_inputs(derive_config(cfg, unwritten), [s.name for s in chained])
    once = [s.name for s in chained if s.stage == 0]
    per_variant = [s.name for s in chained if s.stage == 1 and s.default]   # figures: once, after them all
    stage2 = [s.name for s in chained if s.stage == 2]
    for name in once:
        step(name, cfg)
    variants = {name: variant_configs(cfg, name) for name in section.variants}
    for name, variant_cfg in variants.items():
        for step_name in per_variant:
            if step_name != "train-sgan" or TABLE_ROWS[name] is not None:   # the Baseline is train-cam's
                step(step_name, variant_cfg, f"{step_name} {name}")
    if section.figures:
        last = variants[section.variants[-1]]
        figures_cfg = derive_config(last, {"figures": {
            "variants": {name: work_path(c, c.seeds.checkpoint) for name, c in variants.items()},
            "seeds_dir": last.seeds.out_dir}})
        step("figures", figures_cfg)
    if section.stage2:
        if section.stage2_init == "pretrained":
            variants = {name: derive_config(c, {"train_seg": {"weights": c.model.weights, "weights_naming": "torchvision"}})
                        for name, c in variants.items()}
        elif section.stage2_init == "baseline":
            init, normalisation = write_stage2_init(work_path(cfg, cfg.train_cam.checkpoint),
                                                    work_path(cfg, "ckpt/stage2_init.pt"))
            variants = {name: derive_config(c, {"train_seg": {"weights": init, "weights_naming": "caffe"},
                                          "data": {"normalisation": normalisation}})
                        for name, c in variants.items()}
        for name, variant_cfg in variants.items():
            for step_name in stage2:
                step(step_name, variant_cfg, f"{step_name} {name}")

    histories = {"pretrain": load_checkpoint(work_path(cfg, cfg.pretrain.checkpoint))["history"]} if section.pretrain else {}
    histories["train-cam"] = load_checkpoint(work_path(cfg, cfg.train_cam.checkpoint))["history"]
    for name, variant_cfg in variants.items():
        if TABLE_ROWS[name] is not None:
            histories[f"train-sgan {name}"] = load_checkpoint(work_path(variant_cfg, variant_cfg.train_sgan.checkpoint))["history"]
    if section.stage2:
        for name, variant_cfg in variants.items():
            histories[f"train-seg {name}"] = load_checkpoint(work_path(variant_cfg, variant_cfg.train_seg.checkpoint))["history"]
    loss_plot = plot_losses(work_path(cfg, section.loss_plot), histories)

    labels = [CLASS_NAMES.index(n) + 1 for n in synthetic.resolve_classes(section.classes)]
    seed_rows = [(name, load_json(work_path(c, c.eval_seeds.out))) for name, c in variants.items()]
    tables = {"seeds": seed_summary_table(seed_rows, labels),
              "seeds_per_class_iou": class_table(seed_rows, labels, "iou", "miou", "mIoU")}
    seg_rows = []
    if section.stage2:
        seg_rows = [(name, load_json(work_path(c, c.eval.output))) for name, c in variants.items()]
        tables["segmentation"] = class_table(seg_rows, labels, "iou", "miou", "mIoU")
    timings["total"] = round(time.time() - start, 1)
    results = {
        "seeds": {name: {"mean_precision_authors": authors_mean(scores["confusion_matrix"], "precision", [0] + labels),
                         "mean_recall_authors": authors_mean(scores["confusion_matrix"], "recall", [0] + labels),
                         **{key: scores[key] for key in ("miou", "mean_precision_defined", "mean_recall_defined",
                                                         "overall_precision", "overall_recall")}}
                  for name, scores in seed_rows},
        "segmentation_miou": {name: scores["miou"] for name, scores in seg_rows},
        "tables": tables, "timings_s": timings, "loss_plot": loss_plot,
        "figures": work_path(cfg, cfg.figures.out_dir) if section.figures else None,
    }
    save_json(work_path(cfg, section.results), results)
    report = [f"Seeds on the {section.num_train} training images (stage 1):", tables["seeds"], "",
              "Seed IoU per class (%):", tables["seeds_per_class_iou"]]
    if section.stage2:
        report += ["", f"Stage 2 (DeepLab-ASPP) on the {section.num_val} val images, IoU per class (%), "
                       "Table II style:", tables["segmentation"]]
    report += ["", f"loss plot: {loss_plot}", f"results: {work_path(cfg, section.results)}",
               f"demo wall time: {timings['total']:.0f} s"]
    print_and_log("\n".join(report), "demo")
    logger.info("demo: done in %.1f s (%s)", timings["total"], ", ".join(f"{k} {v}s" for k, v in timings.items()))
    return results
