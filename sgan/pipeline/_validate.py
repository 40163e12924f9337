"""Up-front check of every user-provided input of the steps about to run (not a step).

:func:`validate_inputs` runs before the first step starts (``sgan run``, every single-step command,
the demo once its data is generated), so that a truncated JPEG, a missing or wrongly sized saliency
map, a ground truth holding colours, an empty list file or an id without its annotation is reported
before anything trains, all of them in one ValueError grouped by kind. Images and PNGs are decoded
completely, in a thread pool. Only what the user provides is checked here (the table
:data:`STEP_INPUTS`); what a step writes for a later one (labels.json, seeds, checkpoints,
predictions) is checked by the step that reads it, when it starts.
"""
import concurrent.futures
import dataclasses
import os
import time

from sgan.data.voc import VOCPaths, image_labels, raise_problems, read_id_list, sample_problems
from sgan.utils.logging import get_logger

TRAIN_LIST = "data.train_list"


@dataclasses.dataclass(frozen=True)
class ListFiles:
    """The files a step reads for each id of the list file at config key ``list_key`` (relative to
    data.root): the image (JPEGImages/<id>.jpg), with ``saliency`` <data.saliency_dir>/<id>.png, with
    ``labels`` the annotation or label mask of data.label_source, with ``gt_key`` the ground truth
    <data.root>/<that key's folder>/<id>.png. With ``only_key`` (the config key of a list of ids)
    only those ids when it is not empty, else the first ``first_key`` (the key of a count) ids."""
    list_key: str
    image: bool = True
    saliency: bool = False
    labels: bool = False
    gt_key: str = None
    only_key: str = None
    first_key: str = None


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """A weights file named by config key ``key`` (None: not set, nothing to check)."""
    key: str


def _eval_list_key(cfg, section):
    """The key of the list that `infer` / `eval` read: ``<section>.list``, or data.val_list when null."""
    return f"{section}.list" if cfg[section]["list"] else "data.val_list"


# step -> the user-provided inputs it reads, as a function of the config (see each step's run);
# one entry per step of sgan.pipeline.STEPS, in its order
STEP_INPUTS = {
    "pretrain": lambda cfg: [],   # draws its own images (sgan.experiments.pretrain_set)
    "labels": lambda cfg: [ListFiles(TRAIN_LIST, image=False, labels=True)],
    "train-cam": lambda cfg: [ListFiles(TRAIN_LIST), WeightsFile("model.weights")],
    "initial-seeds": lambda cfg: [ListFiles(TRAIN_LIST, saliency=True)],
    "train-sgan": lambda cfg: [ListFiles(TRAIN_LIST, saliency=cfg.train_sgan.variant != "sgan-sal-seed"),
                               WeightsFile("model.weights")],
    "seeds": lambda cfg: [ListFiles(TRAIN_LIST, saliency=True)],
    "eval-seeds": lambda cfg: [ListFiles("eval_seeds.list", gt_key="eval_seeds.gt_dir")],
    "figures": lambda cfg: [ListFiles(TRAIN_LIST, saliency=True, only_key="figures.ids", first_key="figures.count")],
    "train-seg": lambda cfg: [ListFiles(TRAIN_LIST), WeightsFile("train_seg.weights")],
    "infer": lambda cfg: [ListFiles(_eval_list_key(cfg, "infer"))],
    "eval": lambda cfg: [ListFiles(_eval_list_key(cfg, "eval"), gt_key="eval.gt_dir")],
    "demo": lambda cfg: [],  # generates its data, then validates the steps it runs (demo.run)
    "study": lambda cfg: [],  # runs the demo, which validates
}


@dataclasses.dataclass
class _IdChecks:
    """What is checked of one id, merged over the lists that hold it."""
    image: bool = False
    labels: bool = False
    saliency: bool = False
    gt_dirs: set = dataclasses.field(default_factory=set)


def validate_inputs(cfg, step_names):
    """Check every user-provided input of ``step_names`` (:data:`STEP_INPUTS`); one ValueError
    naming every problem, grouped by kind, when there is any."""
    names = list(dict.fromkeys(step_names))
    needs = [need for name in names for need in STEP_INPUTS[name](cfg)]
    problems = []
    for key in dict.fromkeys(need.key for need in needs if isinstance(need, WeightsFile)):
        if _value(cfg, key):
            problems += _weights_problems(key, _value(cfg, key))
    lists = [need for need in needs if isinstance(need, ListFiles)]
    if lists:
        start = time.time()
        count = _check_list_files(cfg, lists, problems)
        get_logger("pipeline").info("inputs: checked the files of %d images in %.1f s", count, time.time() - start)
    raise_problems(problems, f"inputs of {', '.join(names)}")


def _value(cfg, key):
    section, name = key.split(".")
    return cfg[section][name]


def _folder_problems(key, path):
    """[] when ``path`` (the value of config key ``key``) is a folder, else [(kind, detail)]."""
    if not path:
        return [("missing folder", f"{key}: required, not set")]
    if not os.path.isdir(path):
        return [("missing folder", f"{key}: {path} is not a folder")]
    return []


def _weights_problems(key, path):
    """[] when the weights file named by ``key`` is a readable non-empty file, else [(kind, detail)]."""
    if not os.path.isfile(path):
        return [("missing weights file", f"{key}: {path} {'is a folder' if os.path.isdir(path) else 'does not exist'}")]
    try:
        with open(path, "rb") as stream:
            empty = not stream.read(1)
    except OSError as error:
        return [("unreadable weights file", f"{key}: {path}: {error.strerror}")]
    return [("unreadable weights file", f"{key}: {path} is empty")] if empty else []


def _read_list(paths, key, value, problems):
    """Ids of the list file of config key ``key``, or None after appending its problem."""
    if not value:
        problems.append(("missing list file", f"{key}: required, not set"))
        return None
    path = paths.resolve(value)
    if not os.path.isfile(path):
        problems.append(("missing list file", f"{key}: {path} does not exist"))
        return None
    try:
        return read_id_list(path)
    except ValueError:
        problems.append(("empty list file", f"{key}: {path} holds no image ids"))
        return None


def _threads():
    """Threads for decoding: the cores of this process's share of the machine (torchrun ranks)."""
    return max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def _check_list_files(cfg, lists, problems):
    """Append the problems of the list files ``lists`` and of every file of their ids to
    ``problems``; returns the number of ids checked."""
    try:
        paths = VOCPaths(cfg.data.root)
    except ValueError as error:
        problems.append(("missing folder", str(error)))
        return 0
    saliency_dir = cfg.data.saliency_dir
    if any(need.saliency for need in lists):
        found = _folder_problems("data.saliency_dir", saliency_dir)
        problems += found
        saliency_dir = None if found else saliency_dir
    label_source = cfg.data.label_source
    if label_source == "mask" and any(need.labels for need in lists):
        found = _folder_problems("data.label_mask_dir", paths.resolve(cfg.data.label_mask_dir))
        problems += found
        label_source = None if found else label_source
    wanted = {}  # id -> _IdChecks
    read = {}    # list key -> its ids (None: missing or empty), each list read and reported once
    for need in lists:
        if need.list_key not in read:
            read[need.list_key] = _read_list(paths, need.list_key, _value(cfg, need.list_key), problems)
        ids = read[need.list_key]
        if ids is None:
            continue
        chosen = list(_value(cfg, need.only_key)) if need.only_key else []
        if chosen:
            known = set(ids)
            problems += [("id not in its list", f"{need.only_key}: {i} is not in {need.list_key}")
                         for i in chosen if i not in known]
            ids = [i for i in chosen if i in known]
        elif need.first_key:
            ids = ids[:_value(cfg, need.first_key)]
        gt_dir = None
        if need.gt_key:
            gt_dir = paths.resolve(_value(cfg, need.gt_key))
            found = _folder_problems(need.gt_key, gt_dir)
            problems += found
            gt_dir = None if found else gt_dir
        for image_id in ids:
            checks = wanted.setdefault(image_id, _IdChecks())
            checks.image |= need.image
            checks.labels |= need.labels and bool(label_source)
            checks.saliency |= need.saliency and bool(saliency_dir)
            checks.gt_dirs.update([gt_dir] if gt_dir else [])

    def check(image_id):
        checks = wanted[image_id]
        found = []
        if checks.image:
            pngs = [("saliency map", saliency_dir)] if checks.saliency else []
            pngs += [("ground truth", folder) for folder in sorted(checks.gt_dirs)]
            found += sample_problems(paths, image_id, pngs=pngs, decode=True)
        if checks.labels:
            found += image_labels(paths, image_id, label_source, cfg.data.label_mask_dir)[1]
        return found

    with concurrent.futures.ThreadPoolExecutor(_threads()) as pool:
        problems += [problem for found in pool.map(check, wanted) for problem in found]
    return len(wanted)
