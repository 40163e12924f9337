"""The pipeline as one ordered table of steps (:data:`STEPS`), the config schema it registers, the runner.

:data:`STEPS` is the single source of the step names and their order: the CLI's subcommands and
``sgan steps``, the default ``steps`` that ``sgan run`` chains, the config schema, the demo's order
and the input checks (``_validate.STEP_INPUTS``, one entry per step) all read it. Step ``name``
lives in the module ``<package>.<name with - as _>``, where ``package`` is the Step's: sgan.pipeline,
or sgan.experiments for the steps on the synthetic benchmark (pretrain, demo, study), which sit above
the pipeline and are imported only through the table. The module defines::

    STEP = "train-cam"     # its name again, for its records and logs (checked against the table)
    def run(cfg): ...      # reads and writes files under cfg.work_dir; skips work already done
                           # from the same settings and inputs (sgan.utils.record) unless
                           # cfg.overwrite; cfg is a validated sgan.config.Config
    SECTION = dict(defaults={...}, choices={...}, bounds={...}, doc="...")
                           # its config section, plain data (when the table names one)

and optionally ``CONFIG_FILE``, the config used when the command line names none (``sgan demo``).
The module's docstring's first line is the CLI help.

Schema: :func:`register_sections` registers, explicitly, the root keys (:data:`ROOT_SECTION`), the
shared sections (:data:`SHARED_SECTIONS`: ``data``, ``model``) and each step's section;
:func:`load_config` does so before it reads a config. Importing a module registers nothing.

Runner: :func:`run_steps` runs ``cfg.steps`` (or a given list) in order after :func:`prepare`
(work dir, logging to ``<work_dir>/sgan.log``, ``config.resolved.yaml`` with the git revision).
Helpers for steps: :func:`work_path` (paths relative to the work dir) and :func:`resolve_device`;
what produced an output, and whether it is up to date, is sgan.utils.record's.
"""
import copy
import dataclasses
import importlib
import os
import time

import torch

from sgan.config import ROOT, read_config, register_section, resolve, save_resolved
from sgan.ops.dispatch import BACKENDS
from sgan.pipeline._validate import validate_inputs
from sgan.utils.io import remove_stale_temporaries
from sgan.utils.logging import get_logger, setup_logging


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of the pipeline.

    name: the CLI command (and the name in its records); section: the config section its module
    declares (SECTION), or None; reads / writes: the config keys naming the files it reads that an
    earlier step writes, and the files it writes (the user's own inputs are _validate.STEP_INPUTS');
    stage: the method's stage (0 the backbone's pretraining (demo), the baseline CAM and its seeds,
    1 SGAN, 2 DeepLab; None: the demo and the study, which chain the others); default: one of the ``steps`` that ``sgan run`` chains by default;
    distributed: under torchrun every rank runs it (training, inference), else rank 0 only while the
    other ranks wait at a barrier; package: the package holding its module.
    """
    name: str
    section: str = None
    reads: tuple = ()
    writes: tuple = ()
    stage: int = None
    default: bool = True
    distributed: bool = False
    package: str = __name__

    @property
    def module(self):
        """The module that defines the step: its package, then its name with - as _."""
        return f"{self.package}.{self.name.replace('-', '_')}"


EXPERIMENTS = "sgan.experiments"   # the package of the steps on the synthetic benchmark
STEPS = (
    Step("pretrain", "pretrain", writes=("pretrain.checkpoint", "pretrain.weights"), stage=0, default=False,
         distributed=True, package=EXPERIMENTS),
    Step("labels", writes=("data.labels_file",), stage=0),
    Step("train-cam", "train_cam", reads=("data.labels_file",), writes=("train_cam.checkpoint",),
         stage=0, distributed=True),
    Step("initial-seeds", "initial_seeds", reads=("data.labels_file", "initial_seeds.checkpoint"),
         writes=("initial_seeds.out_dir",), stage=0),
    Step("train-sgan", "train_sgan", reads=("data.labels_file", "train_sgan.seeds_dir"),
         writes=("train_sgan.checkpoint",), stage=1, distributed=True),
    Step("seeds", "seeds", reads=("data.labels_file", "seeds.checkpoint"), writes=("seeds.out_dir",), stage=1),
    Step("eval-seeds", "eval_seeds", reads=("eval_seeds.seeds_dir",), writes=("eval_seeds.out",), stage=1),
    Step("figures", "figures", reads=("data.labels_file", "train_cam.checkpoint", "train_sgan.checkpoint",
                                      "figures.initial_seeds_dir", "figures.seeds_dir"),
         writes=("figures.out_dir",), stage=1, default=False),
    Step("train-seg", "train_seg", reads=("train_seg.seeds_dir",),
         writes=("train_seg.checkpoint", "train_seg.timing_file"), stage=2, distributed=True),
    Step("infer", "infer", reads=("infer.checkpoint",), writes=("infer.output_dir",), stage=2, distributed=True),
    Step("eval", "eval", reads=("eval.predictions",), writes=("eval.output",), stage=2),
    Step("demo", "demo", writes=("demo.data_dir", "demo.loss_plot", "demo.results"), default=False,
         package=EXPERIMENTS),
    Step("study", "study", writes=("study.out_dir",), default=False, package=EXPERIMENTS),
)
STEP_NAMES = tuple(step.name for step in STEPS)

# the top-level keys of a config
ROOT_SECTION = dict(defaults={
    "work_dir": None,
    "seed": 0,
    "overwrite": False,
    "resume": False,
    "resume_changed": False,
    "device": "auto",
    "backend": "auto",
    "num_workers": 2,
    "steps": [step.name for step in STEPS if step.default],
}, choices={"backend": BACKENDS}, bounds={"num_workers": "[0, inf)"},
    doc="work_dir: output directory (required); seed: global seed; overwrite: redo finished work; "
        "resume: continue an interrupted training from its last checkpoint (refused when its settings or inputs "
        "changed, unless resume_changed); device: auto|cpu|cuda|cuda:N; "
        "backend: kernels of the attention and the losses; steps: what `sgan run` chains")

# sections read by several steps: (name, module, attribute holding its spec)
SHARED_SECTIONS = (("data", "sgan.data.voc", "DATA_SECTION"), ("model", "sgan.models.sgan_net", "MODEL_SECTION"))


def step_named(name):
    """The Step called ``name``; ValueError naming the known steps otherwise."""
    for step in STEPS:
        if step.name == name:
            return step
    raise ValueError(f"step: unknown step {name!r}; known steps: {list(STEP_NAMES)}")


def load_step(step):
    """Import the module of ``step`` (a Step), checked against the table; the module."""
    module = importlib.import_module(step.module)
    if getattr(module, "STEP", None) != step.name or not callable(getattr(module, "run", None)):
        raise TypeError(f"step module {step.module}: expected STEP = {step.name!r} and run(cfg), "
                        f"got STEP = {getattr(module, 'STEP', None)!r}")
    if (step.section is None) != (getattr(module, "SECTION", None) is None):
        raise TypeError(f"step module {step.module}: the step table says its config section is {step.section!r}, "
                        f"but it {'defines' if step.section is None else 'lacks'} SECTION")
    return module


def register_sections():
    """Register the config schema: the root keys, the shared sections and every step's section."""
    register_section(ROOT, **ROOT_SECTION)
    for name, module, attribute in SHARED_SECTIONS:
        register_section(name, **getattr(importlib.import_module(module), attribute))
    for step in STEPS:
        module = load_step(step)
        if step.section is not None:
            register_section(step.section, **module.SECTION)


def load_config(path=None, overrides=(), base=None):
    """The validated Config of the YAML file ``path`` (with its ``_base_`` files; or of ``base``, a
    mapping, when path is None) with ``overrides`` (``key.sub=value``), over the registered schema.

    Example::

        >>> cfg = load_config("configs/voc_sgan_authors.yaml", ["train_sgan.iterations=100"])
        >>> cfg.train_sgan.iterations, cfg.train_sgan.seed_loss_floor, cfg.model.init
        (100, 0, 'pytorch')
    """
    register_sections()
    if path is None:
        return resolve(copy.deepcopy(base) if base is not None else {}, overrides, source="<defaults>")
    return resolve(read_config(path), overrides, source=path)


def work_path(cfg, path):
    """``path`` if absolute, else ``<work_dir>/<path>``."""
    return path if os.path.isabs(path) else os.path.join(cfg.work_dir, path)


def resolve_device(cfg):
    """torch.device from cfg.device: "auto" is cuda:<LOCAL_RANK> when CUDA is available, else cpu."""
    name = cfg.device
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but CUDA is not available")
    return device


def prepare(cfg):
    """Create the work dir, start logging there, save config.resolved.yaml (rank 0)."""
    if not cfg.work_dir:
        raise ValueError("work_dir: required; set it in the config file or pass work_dir=PATH")
    rank = int(os.environ.get("RANK", 0))
    os.makedirs(cfg.work_dir, exist_ok=True)
    setup_logging(cfg.work_dir, rank=rank)
    remove_stale_temporaries(cfg.work_dir)
    if rank == 0:
        save_resolved(cfg)


def run_step(name, cfg):
    """Run one step (under torchrun, only on rank 0 unless the step is distributed)."""
    from sgan.train.distributed import barrier, init_distributed
    step = step_named(name)
    module = load_step(step)
    rank, world = init_distributed(cfg)
    logger = get_logger("pipeline")
    start = time.time()
    if world == 1 or step.distributed or rank == 0:
        logger.info("step %s: start", name)
        module.run(cfg)
        logger.info("step %s: done in %.1f s", name, time.time() - start)
    barrier()


def run_steps(cfg, names=None):
    """prepare(cfg), then run ``names`` (default ``cfg.steps``) in order; unknown names fail first.
    Every user input the steps read is checked before the first one starts.

    Example (the labels step on a VOC-layout folder)::

        cfg = load_config("configs/voc_sgan.yaml", ["data.root=/data/VOC2012", "work_dir=/tmp/run"])
        run_steps(cfg, ["labels"])          # writes /tmp/run/labels.json
    """
    names = list(cfg.steps if names is None else names)
    unknown = [n for n in names if n not in STEP_NAMES]
    if unknown:
        raise ValueError(f"steps: unknown step(s) {unknown}; known steps: {list(STEP_NAMES)}")
    prepare(cfg)
    validate_inputs(cfg, names)
    for name in names:
        run_step(name, cfg)
