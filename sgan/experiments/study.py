"""The demo's variants over several training seeds on held-out data: Table II and III with error bars.

``sgan study`` (or ``python -m sgan.cli study [configs/demo.yaml] [key=value ...]``) uses
``configs/demo.yaml`` when no config file is given and, under ``<work_dir>/<study.out_dir>``:

1. generates the synthetic benchmark once with ``study.data_seed`` (default 1: held out; the
   demo's design and every hyperparameter were chosen on ``demo.data_seed`` 0) into ``data/``,
   and pretrains the backbone once (``pretrain/``): the stand-in for ImageNet weights is fixed, as
   ImageNet weights are for every run of the paper;
2. for each of ``study.training_seeds``: the whole demo (every variant of ``demo.variants``,
   stages 1 and 2, figures) in ``seed_<s>/`` with root key ``seed`` = s, which seeds the
   initialisation of every new layer, the batch order and the dropout of every training;
3. Table III: for each ``study.lambdas`` (λ, ``train_sgan.seed_loss_weight``) other than the
   config's, SGAN's stage 1 again in the same ``seed_<s>/`` (``ckpt/sgan_sgan_lambda<λ>.pt``,
   its seeds and their scores); stage 2 is not run for these;
4. :func:`benchmark_properties` on the held-out data and each variant's seeds (object and part
   sizes in feature positions, seed recall on parts and on bodies (mean ± std over the training
   seeds), co-occurrence, saliency quality);
5. mean ± sample std over the training seeds of every figure (per class too), the paper's
   qualitative findings checked against those error bars (:func:`findings`), the tables printed
   and saved with the per-run values in ``metrics/study.json``, and a plot ``figures/study.png``.

Each run skips what is already done, so an interrupted study continues where it stopped.
"""
import os
import time

import numpy as np
from PIL import Image

from sgan.config import resolve
from sgan.data.voc import VOCPaths, read_id_list
from sgan.data.voc_classes import CLASS_NAMES, SHORT_NAMES
from sgan.experiments import demo
from sgan.experiments import synthetic
from sgan.pipeline import run_step, run_steps, work_path
from sgan.pipeline.eval_seeds import authors_mean
from sgan.train import DivergedError
from sgan.utils.io import atomic_writer, load_json, save_json
from sgan.utils.logging import get_logger, print_and_log, setup_logging

STEP = "study"
CONFIG_FILE = demo.CONFIG_FILE
FEATURE_STRIDE = 8   # the backbone's output stride (sgan.models.vgg)

SECTION = dict(defaults={
    "training_seeds": [0, 1, 2, 3, 4],
    "data_seed": 1,
    "lambdas": [0.05, 0.15, 0.5],
    "out_dir": "study",
    "results": "metrics/study.json",
    "plot": "figures/study.png",
}, bounds={"training_seeds": "[0, inf)", "data_seed": "[0, inf)", "lambdas": "[0, inf)"},
    doc="the study: the demo for each of training_seeds on the benchmark drawn with data_seed (held out: "
        "the demo's design was chosen on demo.data_seed), SGAN's stage 1 for each of lambdas "
        "(train_sgan.seed_loss_weight), under <work_dir>/<out_dir>; results and plot relative to it")


def _config(cfg, root, seed):
    """The demo's config of one training seed: its own work dir, the shared data and pretraining."""
    data = cfg.to_dict()
    data["work_dir"] = os.path.join(root, f"seed_{seed}")
    data["seed"] = seed
    data["steps"] = ["demo"]
    data["demo"] = {**data["demo"], "data_dir": os.path.join(root, "data"), "data_seed": cfg.study.data_seed}
    data["pretrain"] = {**data["pretrain"], "checkpoint": os.path.join(root, "pretrain", "pretrain.pt"),
                        "weights": os.path.join(root, "pretrain", "pretrained_vgg16.pth")}
    return resolve(data, source="study")


def _lambda_slug(value):
    return f"lambda{value:g}".replace(".", "p")


def lambda_config(variant_cfg, value):
    """SGAN's stage-1 config with seed_loss_weight ``value`` and its own file names."""
    slug = f"sgan_{_lambda_slug(value)}"
    return demo.derive_config(variant_cfg, {
        "train_sgan": {"seed_loss_weight": value, "checkpoint": f"ckpt/{slug}.pt"},
        "seeds": {"checkpoint": f"ckpt/{slug}.pt", "out_dir": f"seeds_{slug}"},
        "eval_seeds": {"seeds_dir": f"seeds_{slug}", "out": f"metrics/seeds_{slug}.json"}})


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    array = np.asarray(values, np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "n": len(array)}


def _cell(stats, digits=1):
    return "-" if stats is None else f"{100 * stats['mean']:.{digits}f} ± {100 * stats['std']:.{digits}f}"


def _table(header, rows):
    cells = [header] + rows
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(row[0].ljust(widths[0]) + "  " + "  ".join(c.rjust(w) for c, w in zip(row[1:], widths[1:]))
                     for row in cells)


def benchmark_properties(data_root, ids, seeds_dirs, classes, image_size):
    """Measured properties of a synthetic benchmark (sgan.experiments.synthetic) and of seeds on it.

    data_root: the dataset root (synthetic.layout); ids: training ids; seeds_dirs: {name: folder of
    seed PNGs}; classes: VOC indices; image_size (H, W). Returns a dict of figures (fractions, and
    areas in feature positions of stride 8): object and part areas, the parts' share of the object,
    each seed set's recall on part and on body pixels (a pixel counts when the seed gives it its
    ground-truth class), the share of each class's images on its typical background, the share of
    images with two classes, and the saliency's pixel precision / recall at 0.5.
    """
    paths = synthetic.layout(data_root)
    scenes = load_json(paths["scenes"])
    positions = FEATURE_STRIDE * FEATURE_STRIDE
    object_areas, part_shares, part_areas = [], [], []
    hits = {name: {"part": 0, "body": 0} for name in seeds_dirs}
    totals = {"part": 0, "body": 0}
    saliency_tp = saliency_predicted = foreground_total = 0
    two_class, typical = 0, {c: [0, 0] for c in classes if CLASS_NAMES[c - 1] in synthetic.TYPICAL_BACKGROUND}
    for image_id in ids:
        gt = np.array(Image.open(os.path.join(paths["segmentation_class_aug"], image_id + ".png")))
        parts = np.array(Image.open(os.path.join(paths["parts"], image_id + ".png"))) > 0
        saliency = np.array(Image.open(os.path.join(paths["saliency"], image_id + ".png"))) >= 128
        present = [int(c) for c in np.unique(gt) if c != 0]
        two_class += len(present) == 2
        for c in present:
            area = (gt == c).sum()
            object_areas.append(area / positions)
            part_areas.append(((gt == c) & parts).sum() / positions)
            part_shares.append(((gt == c) & parts).sum() / area)
            if c in typical:
                typical[c][1] += 1
                typical[c][0] += scenes[image_id] == synthetic.TYPICAL_BACKGROUND[CLASS_NAMES[c - 1]]
        foreground = gt > 0
        saliency_tp += (saliency & foreground).sum()
        saliency_predicted += saliency.sum()
        foreground_total += foreground.sum()
        regions = {"part": foreground & parts, "body": foreground & ~parts}
        for key, region in regions.items():
            totals[key] += region.sum()
        for name, folder in seeds_dirs.items():
            seeds = np.array(Image.open(os.path.join(folder, image_id + ".png")))
            for key, region in regions.items():
                hits[name][key] += ((seeds == gt) & region).sum()
    return {
        "feature_map": [image_size[0] // FEATURE_STRIDE, image_size[1] // FEATURE_STRIDE],
        "object_area_positions_median": float(np.median(object_areas)),
        "part_area_positions_median": float(np.median(part_areas)),
        "part_share_of_object_median": float(np.median(part_shares)),
        "seed_recall_part": {name: float(h["part"] / max(totals["part"], 1)) for name, h in hits.items()},
        "seed_recall_body": {name: float(h["body"] / max(totals["body"], 1)) for name, h in hits.items()},
        "typical_background_share": {CLASS_NAMES[c - 1]: float(k / max(n, 1)) for c, (k, n) in typical.items()},
        "two_class_image_share": float(two_class / len(ids)),
        "saliency_precision_at_0.5": float(saliency_tp / max(saliency_predicted, 1)),
        "saliency_recall_at_0.5": float(saliency_tp / max(foreground_total, 1)),
    }


def format_properties(properties):
    """The study's benchmark properties as lines of text (recalls as mean ± std over training seeds)."""
    h, w = properties["feature_map"]
    recall = ", ".join(f"{name} {_cell(properties['seed_recall_part'][name])} / {_cell(properties['seed_recall_body'][name])}"
                       for name in properties["seed_recall_part"])
    typical = ", ".join(f"{name} {100 * share:.0f}%" for name, share in properties["typical_background_share"].items())
    return "\n".join([
        f"  feature map {h}x{w}; an object covers {properties['object_area_positions_median']:.1f} feature positions "
        f"(median), its discriminative part {properties['part_area_positions_median']:.1f} "
        f"({100 * properties['part_share_of_object_median']:.0f}% of the object)",
        f"  seed recall on part / body pixels (%): {recall}",
        f"  images of the class on its typical background: {typical}",
        f"  images with two classes: {100 * properties['two_class_image_share']:.0f}%; saliency >= 0.5 against the "
        f"objects: precision {100 * properties['saliency_precision_at_0.5']:.0f}%, "
        f"recall {100 * properties['saliency_recall_at_0.5']:.0f}%"])


def findings(summary, classes):
    """The paper's qualitative findings (Table II) checked on the study's means and stds.

    Each: the two means, their difference, the larger std; ``holds`` when the difference has the
    paper's sign, ``beyond_one_std`` when it also exceeds the larger std ("at or above" holds when
    the difference is >= 0). Seed mIoU and stage-2 mIoU alike; plus the per-class seed IoU loss of
    SGAN-SAL-SEED against SGAN-SEED on classes with a typical background and on the others.
    """
    checks = []
    pairs = (("SGAN-SEED", "Baseline", "above"), ("SGAN", "SGAN-SEED", "at or above"),
             ("SGAN-SEED", "SGAN-SAL-SEED", "above"))
    for metric in ("seed_miou", "segmentation_miou"):
        for first, second, relation in pairs:
            a, b = summary.get(first, {}).get(metric), summary.get(second, {}).get(metric)
            if a is None or b is None:
                continue
            difference, spread = a["mean"] - b["mean"], max(a["std"], b["std"])
            checks.append({"finding": f"{first} {relation} {second} ({metric})", "difference": difference,
                           "larger_std": spread,
                           "holds": difference >= 0 if relation == "at or above" else difference > 0,
                           "beyond_one_std": difference > spread})
    if "SGAN-SEED" in summary and "SGAN-SAL-SEED" in summary:
        drops = {}
        for c in classes:
            a = summary["SGAN-SEED"]["seed_iou"].get(CLASS_NAMES[c - 1])
            b = summary["SGAN-SAL-SEED"]["seed_iou"].get(CLASS_NAMES[c - 1])
            if a is not None and b is not None:
                drops[CLASS_NAMES[c - 1]] = a["mean"] - b["mean"]
        with_typical = [v for k, v in drops.items() if k in synthetic.TYPICAL_BACKGROUND]
        others = [v for k, v in drops.items() if k not in synthetic.TYPICAL_BACKGROUND]
        if with_typical and others:
            checks.append({"finding": "SGAN-SAL-SEED loses more seed IoU to SGAN-SEED on classes with a typical "
                                      "background than on the others",
                           "difference": float(np.mean(with_typical) - np.mean(others)),
                           "per_class_drop": drops, "holds": float(np.mean(with_typical)) > float(np.mean(others)),
                           "beyond_one_std": None})
    return checks


def _summarise(runs, classes):
    """runs: [{variant: {"seeds": demo seed scores, "seed_iou": [21], "segmentation": {...} or None}}]."""
    summary = {}
    for name in runs[0]:
        rows = [run[name] for run in runs]
        entry = {key: _mean_std([row["seeds"][key] for row in rows])
                 for key in ("mean_precision_authors", "mean_recall_authors", "miou")}
        entry["seed_miou"] = entry.pop("miou")
        entry["seed_iou"] = {CLASS_NAMES[c - 1] if c else "background": _mean_std([row["seed_iou"][c] for row in rows])
                             for c in [0] + classes}
        if rows[0].get("segmentation") is not None:
            entry["segmentation_miou"] = _mean_std([row["segmentation"]["miou"] for row in rows])
            entry["segmentation_iou"] = {CLASS_NAMES[c - 1] if c else "background":
                                         _mean_std([row["segmentation"]["iou"][c] for row in rows])
                                         for c in [0] + classes}
        summary[name] = entry
    return summary


def _lambda_row(values, classes):
    """Table III's row of one λ: SGAN's figures over its finished runs (``values``: scores, or None
    for a run that diverged), with how many diverged."""
    finished = [{"SGAN": value} for value in values if value is not None]
    row = _summarise(finished, classes)["SGAN"] if finished else \
        {"mean_precision_authors": None, "mean_recall_authors": None, "seed_miou": None}
    return {**row, "diverged": len(values) - len(finished), "runs": len(values)}


def _tables(summary, lambda_summary, classes, seeds_count):
    columns = ["background"] + [CLASS_NAMES[c - 1] for c in classes]
    short = ["bkg"] + [SHORT_NAMES[c] for c in classes]
    main = _table(("variant", "seed precision", "seed recall", "seed mIoU", "stage-2 mIoU"),
                  [(name, _cell(s["mean_precision_authors"]), _cell(s["mean_recall_authors"]), _cell(s["seed_miou"]),
                    _cell(s.get("segmentation_miou"))) for name, s in summary.items()])
    tables = {"table2": main,
              "seed_iou_per_class": _table(["variant"] + short, [[name] + [_cell(s["seed_iou"][c], 0) for c in columns]
                                                                  for name, s in summary.items()])}
    if all("segmentation_iou" in s for s in summary.values()):
        tables["segmentation_iou_per_class"] = _table(
            ["variant"] + short, [[name] + [_cell(s["segmentation_iou"][c], 0) for c in columns]
                                  for name, s in summary.items()])
    if lambda_summary:
        tables["table3"] = _table(("λ", "seed precision", "seed recall", "seed mIoU", "diverged"),
                                  [(f"{value:g}", _cell(s["mean_precision_authors"]), _cell(s["mean_recall_authors"]),
                                    _cell(s["seed_miou"]), f"{s['diverged']}/{s['runs']}") for value, s in lambda_summary])
    tables["note"] = (f"mean ± sample std over {seeds_count} training seeds (%); seed precision / recall: the authors' "
                      "convention over background and the dataset's classes; seeds on the training images, "
                      "stage 2 on val")
    return tables


def plot(path, summary, lambda_summary, classes):
    """One PNG: seed and stage-2 mIoU per variant, per-class seed IoU, and seed mIoU against λ, with std bars."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(1, 3, figsize=(15, 4))
    names = list(summary)
    x = np.arange(len(names))
    for offset, (metric, label) in zip((-0.2, 0.2), (("seed_miou", "seed mIoU"), ("segmentation_miou", "stage-2 mIoU"))):
        stats = [summary[n].get(metric) for n in names]
        if all(s is not None for s in stats):
            axes[0].bar(x + offset, [100 * s["mean"] for s in stats], 0.4, yerr=[100 * s["std"] for s in stats],
                        capsize=3, label=label)
    axes[0].set_xticks(x, names, fontsize=8)
    axes[0].set_ylabel("%")
    axes[0].set_title("Table II (mean ± std)")
    axes[0].legend(fontsize=8)
    columns = ["background"] + [CLASS_NAMES[c - 1] for c in classes]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        stats = [summary[name]["seed_iou"][c] or {"mean": 0, "std": 0} for c in columns]
        axes[1].bar(np.arange(len(columns)) + (i - (len(names) - 1) / 2) * width, [100 * s["mean"] for s in stats],
                    width, yerr=[100 * s["std"] for s in stats], capsize=2, label=name)
    axes[1].set_xticks(np.arange(len(columns)), ["bkg"] + [SHORT_NAMES[c] for c in classes], fontsize=8)
    axes[1].set_title("seed IoU per class")
    axes[1].legend(fontsize=7)
    finished = [(value, s["seed_miou"]) for value, s in lambda_summary if s["seed_miou"] is not None]
    if finished:
        axes[2].errorbar([v for v, _ in finished], [100 * m["mean"] for _, m in finished],
                         yerr=[100 * m["std"] for _, m in finished], marker="o", capsize=3)
        axes[2].set_xscale("log")
        axes[2].set_xticks([v for v, _ in finished], [f"{v:g}" for v, _ in finished])
        axes[2].minorticks_off()   # log-scale minor labels overlap between close λ values
        axes[2].set_xlabel("λ (seed loss weight)")
        axes[2].set_title("Table III: SGAN seed mIoU")
    else:
        axes[2].axis("off")
    figure.tight_layout()
    with atomic_writer(path, "wb") as stream:
        figure.savefig(stream, format="png", dpi=90, metadata={"Software": None})  # the same bytes for the same figures
    pyplot.close(figure)
    return path


def plot_results(results, path):
    """:func:`plot` from the dict a study saved (``metrics/study.json``): its summary, Table III rows
    and classes, so that a committed result replots without the run's folders. Returns ``path``.

    >>> import json
    >>> results = json.load(open("results/study/study.json"))          # doctest: +SKIP
    >>> plot_results(results, "results/study/study.png")                # doctest: +SKIP
    'results/study/study.png'
    """
    summary = results["summary"]
    columns = next(iter(summary.values()))["seed_iou"]
    classes = [CLASS_NAMES.index(name) + 1 for name in columns if name != "background"]
    return plot(path, summary, [(row["lambda"], row) for row in results["table3"]], classes)


def _run_scores(variant_cfg, classes, with_segmentation):
    """One variant's figures in one run: seed precision / recall (authors' convention over background
    and ``classes``), seed mIoU and IoU per VOC index, and with_segmentation stage 2's mIoU and IoU."""
    seeds = load_json(work_path(variant_cfg, variant_cfg.eval_seeds.out))
    columns = [0] + list(classes)
    scores = {"seeds": {"mean_precision_authors": authors_mean(seeds["confusion_matrix"], "precision", columns),
                        "mean_recall_authors": authors_mean(seeds["confusion_matrix"], "recall", columns),
                        "miou": seeds["miou"]},
              "seed_iou": seeds["iou"]}
    if with_segmentation:
        segmentation = load_json(work_path(variant_cfg, variant_cfg.eval.output))
        scores["segmentation"] = {"miou": segmentation["miou"], "iou": segmentation["iou"]}
    return scores


def run(cfg):
    section = cfg.study
    if not section.training_seeds:
        raise ValueError("study.training_seeds: expected at least one seed, got []")
    demo.check_demo_section(cfg.demo)
    root = work_path(cfg, section.out_dir)
    logger = get_logger("study")
    start, timings = time.time(), {}
    classes = [CLASS_NAMES.index(n) + 1 for n in synthetic.resolve_classes(cfg.demo.classes)]
    runs, lambda_runs, seed_dirs = [], {}, []
    default_lambda = cfg.train_sgan.seed_loss_weight
    for seed in section.training_seeds:
        seed_cfg = _config(cfg, root, seed)
        began = time.time()
        run_steps(seed_cfg, ["demo"])
        stage1_cfg = demo.stage1_config(seed_cfg)
        variant_cfgs = {name: demo.variant_configs(stage1_cfg, name) for name in cfg.demo.variants}
        runs.append({name: _run_scores(c, classes, cfg.demo.stage2) for name, c in variant_cfgs.items()})
        if "SGAN" in variant_cfgs:
            for value in section.lambdas:
                if value == default_lambda:
                    lambda_runs.setdefault(value, []).append(runs[-1]["SGAN"])
                    continue
                lambda_cfg = lambda_config(variant_cfgs["SGAN"], value)
                try:
                    for step_name in ("train-sgan", "seeds", "eval-seeds"):
                        run_step(step_name, lambda_cfg)
                except DivergedError as error:   # a result of this λ, not a failure of the study
                    logger.warning("study: SGAN with λ = %g diverged for training seed %d (%s)", value, seed, error)
                    lambda_runs.setdefault(value, []).append(None)
                    continue
                lambda_runs.setdefault(value, []).append(_run_scores(lambda_cfg, classes, False))
        seed_dirs.append({name: work_path(c, c.seeds.out_dir) for name, c in variant_cfgs.items()})
        training_ids = read_id_list(VOCPaths(stage1_cfg.data.root).resolve(stage1_cfg.data.train_list))
        timings[f"seed {seed}"] = round(time.time() - began, 1)
    # each seed's demo logged into its own folder; the study's summary goes to the work dir's log
    setup_logging(cfg.work_dir)
    summary = _summarise(runs, classes)
    lambda_summary = [(value, _lambda_row(values, classes)) for value, values in sorted(lambda_runs.items())]
    measured = [benchmark_properties(os.path.join(root, "data"), training_ids, dirs, classes, cfg.demo.image_size)
                for dirs in seed_dirs]
    properties = {**measured[0], **{key: {name: _mean_std([m[key][name] for m in measured]) for name in measured[0][key]}
                                    for key in ("seed_recall_part", "seed_recall_body")}}
    tables = _tables(summary, lambda_summary, classes, len(runs))
    checks = findings(summary, classes)
    timings["total"] = round(time.time() - start, 1)
    results = {"training_seeds": list(section.training_seeds), "data_seed": section.data_seed,
               "tuning_data_seed": cfg.demo.data_seed, "summary": summary,
               "table3": [{"lambda": v, **s} for v, s in lambda_summary], "per_run": runs,
               "properties": properties, "findings": checks, "tables": tables, "timings_s": timings,
               "figures": {seed: os.path.join(root, f"seed_{seed}", cfg.figures.out_dir) for seed in section.training_seeds}}
    results_path = os.path.join(root, section.results)
    save_json(results_path, results)
    plot_path = plot(os.path.join(root, section.plot), summary, lambda_summary, classes)
    report = [f"Study on held-out data seed {section.data_seed} ({cfg.demo.num_train} training, {cfg.demo.num_val} val "
              f"images), training seeds {list(section.training_seeds)}:", "", "Table II style:", tables["table2"], "",
              "Seed IoU per class:", tables["seed_iou_per_class"]]
    if "segmentation_iou_per_class" in tables:
        report += ["", "Stage-2 IoU per class:", tables["segmentation_iou_per_class"]]
    if "table3" in tables:
        report += ["", "Table III (SGAN, stage 1):", tables["table3"]]
    report += [tables["note"], "", "Findings:"]
    report += [f"  {'yes' if c['holds'] else 'NO '} {'(beyond one std)' if c['beyond_one_std'] else ''} "
               f"{c['finding']}: difference {100 * c['difference']:+.1f}" for c in checks]
    report += ["", "Benchmark properties (held-out data, training images):", format_properties(properties),
               f"results: {results_path}", f"plot: {plot_path}",
               f"study wall time: {timings['total']:.0f} s"]
    print_and_log("\n".join(report), "study")
    logger.info("study: done in %.1f s (%s)", timings["total"], ", ".join(f"{k} {v}s" for k, v in timings.items()))
    return results
