"""The step registry and the runner.

A step is a module in this package (``sgan/pipeline/<anything>.py``) that defines::

    STEP = "train-cam"     # the step's name: `sgan train-cam CONFIG.yaml key=value ...`
    def run(cfg): ...      # reads and writes files under cfg.work_dir; skips work already done
                           # from the same settings and inputs (sgan.utils.record) unless
                           # cfg.overwrite; cfg is a validated sgan.config.Config

and optionally::

    DISTRIBUTED = True     # under torchrun every rank runs it (training); otherwise (default) only
                           # rank 0 runs it while the other ranks wait at a barrier
    DEFAULT_CONFIG = {...} # the YAML content used when the command line names no config file
                           # (e.g. `sgan demo`)

The module's docstring's first line is the CLI help. Its config section is declared with
``sgan.config.register_section`` at import. Modules are found by :func:`discover_steps`, so a new
step (stage 2, the demo) is added by adding its module here, without editing this file or the CLI.

Runner: :func:`run_steps` runs ``cfg.steps`` (or a given list) in order after :func:`prepare`
(work dir, logging to ``<work_dir>/sgan.log``, ``config.resolved.yaml`` with the git revision).
Helpers for steps: :func:`work_path` (paths relative to the work dir) and :func:`resolve_device`;
what produced an output, and whether it is up to date, is sgan.utils.record's.
"""
import importlib
import os
import pkgutil
import time

import torch

from sgan.config import save_resolved
from sgan.pipeline._validate import validate_inputs
from sgan.utils.io import remove_stale_temporaries
from sgan.utils.logging import get_logger, setup_logging

_STEPS = {}  # name -> module


def discover_steps():
    """Import every module of this package and register those defining STEP; name -> module."""
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        name = getattr(module, "STEP", None)
        if name is None:
            continue
        if not callable(getattr(module, "run", None)):
            raise TypeError(f"step module {module.__name__} defines STEP={name!r} but no run(cfg)")
        other = _STEPS.get(name)
        if other is not None and other is not module:
            raise ValueError(f"step {name!r} is defined by both {other.__name__} and {module.__name__}")
        _STEPS[name] = module
    return dict(_STEPS)


def get_step(name):
    steps = discover_steps()
    if name not in steps:
        raise ValueError(f"step: unknown step {name!r}; known steps: {sorted(steps)}")
    return steps[name]


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
    """Run one step (only on rank 0 for non-DISTRIBUTED steps under torchrun)."""
    from sgan.train.distributed import barrier, init_distributed
    module = get_step(name)
    rank, world = init_distributed(cfg)
    logger = get_logger("pipeline")
    start = time.time()
    if world == 1 or getattr(module, "DISTRIBUTED", False) or rank == 0:
        logger.info("step %s: start", name)
        module.run(cfg)
        logger.info("step %s: done in %.1f s", name, time.time() - start)
    barrier()


def run_steps(cfg, names=None):
    """prepare(cfg), then run ``names`` (default ``cfg.steps``) in order; unknown names fail first."""
    names = list(cfg.steps if names is None else names)
    known = discover_steps()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"steps: unknown step(s) {unknown}; known steps: {sorted(known)}")
    prepare(cfg)
    validate_inputs(cfg, names)
    for name in names:
        run_step(name, cfg)
