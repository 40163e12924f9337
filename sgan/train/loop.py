"""The training loop shared by every training step (train-cam, train-sgan, train-seg).

:func:`train` runs SGD (parameter groups and schedule of sgan.train.optim) on a map-style dataset
indexed by ``(index, sample_seed)`` pairs (sgan.train.order), with:

- a fixed seed: the model is initialised by the caller under ``seed_everything``; before each
  iteration torch's generator is seeded from (seed, step name, iteration, rank), so dropout and
  any other draw are the same in a resumed run;
- checkpoints written atomically: ``<ckpt>.last.pt`` every ``checkpoint_every`` iterations (model,
  optimiser with momentum, iteration, history; the schedule and data order are functions of the
  iteration) and the final ``<ckpt>`` (model, model_info, config, record, git revision, loss
  history), after which ``.last.pt`` is removed. A finished checkpoint whose record (settings and
  input fingerprints) matches makes the step skip unless ``overwrite``; one made from anything else
  is retrained. A ``.last.pt`` is continued with ``resume=true`` when its record matches (or with
  ``resume_changed=true``) and refused otherwise (no silent restart);
- DDP when launched by torchrun: the model is wrapped in DistributedDataParallel, each rank takes
  its contiguous share of the same global batch, gradients are averaged by DDP, so the result
  matches one process on the whole batch when the loss is a mean over images;
- SIGTERM (under the CLI, sgan.utils.signals) ends the current iteration, writes ``.last.pt`` at it
  (with the loss terms not yet logged, so the history is the same too) and raises Terminated; a
  resumed run then gives the same weights as an uninterrupted one;
- a tqdm bar with the loss and the speed, log lines every ``log_every`` iterations.

Checkpoint format (a dict): ``format``, ``step``, ``iteration``, ``model`` (state dict),
``model_info`` (JSON-able description used to rebuild the network), ``history`` (list of
{"iteration", "lr", <loss terms>}), ``config``, ``record`` and ``git``; ``.last.pt`` adds ``optimizer``.
"""
import contextlib
import math
import os
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from sgan.config import git_revision
from sgan.models.compute import (RETURNED_BLOCK_BYTES, apply_memory_format, autocast, check_precision, grad_scaler,
                                 return_freed_memory)
from sgan.utils.record import changes, up_to_date
from sgan.train.distributed import average_across_ranks, barrier, init_distributed
from sgan.train.optim import backward_and_step, build_sgd, lr_factor, set_learning_rate
from sgan.train.order import BatchOrder, IterationBatchSampler
from sgan.utils.io import load_torch, save_torch
from sgan.utils.logging import get_logger
from sgan.utils.progress import progress
from sgan.utils.seeding import derive_seed
from sgan.utils.signals import Terminated, deferred_termination, ignore_sigterm

CHECKPOINT_FORMAT = "sgan-checkpoint-1"


def last_checkpoint_path(path):
    root, ext = os.path.splitext(path)
    return f"{root}.last{ext or '.pt'}"


class DivergedError(RuntimeError):
    """A training whose loss became NaN or infinite (raised by :func:`train`, which stops there)."""


def load_checkpoint(path):
    """Read a checkpoint written by :func:`train` (on the CPU) without running code from the file.

    Only tensors and plain values are accepted (sgan.utils.io.load_torch); a missing, truncated,
    foreign or code-carrying file is a one-line ValueError naming it.
    """
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint: {path} does not exist (run the training step first)")
    state = load_torch(path, "checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint: {path} is not an sgan checkpoint (expected format {CHECKPOINT_FORMAT})")
    return state


def checkpoint_up_to_date(cfg, name, checkpoint_path, record):
    """True when ``checkpoint_path`` is a finished checkpoint made from ``record``'s settings and
    inputs (sgan.utils.record) and ``overwrite`` is off: the training step skips."""
    if not os.path.isfile(checkpoint_path):
        return False
    return up_to_date(cfg, name, checkpoint_path, load_checkpoint(checkpoint_path).get("record"), record)


def train(cfg, section, *, name, model, dataset, loss_fn, checkpoint_path, model_info, device, record,
          checked=False, new_parameters=None):
    """Train ``model`` and write ``checkpoint_path``; returns it.

    section: the step's config section (its name or ``cfg.<name>``), with the keys of
    sgan.train.optim.OPTIM_DEFAULTS and sgan.models.compute.COMPUTE_DEFAULTS: the model is put in
    ``memory_format`` and ``loss_fn`` runs under ``precision``'s autocast (fp16: with loss scaling,
    whose state the interrupted-run checkpoint keeps). record: what the checkpoint is made from (settings and input
    fingerprints, sgan.utils.record.make_record); a finished checkpoint with the same record is
    kept (the step skips), one with another record is retrained, naming what changed. An
    interrupted run (``.last.pt``) is continued with ``resume`` only when its record matches, or
    with ``resume_changed`` whatever it is.
    loss_fn(model, batch, device) -> (loss tensor, {term: float}); ``model`` there may be the DDP
    wrapper, ``batch`` is the collated dict of this rank's samples.
    model_info: JSON-able dict stored with the weights to rebuild the network later.
    checked: the caller has already found, with :func:`checkpoint_up_to_date`, that the
    checkpoint must be (re)trained (the checkpoint is not loaded and compared a second time).
    new_parameters: names of the parameters trained at the new-layer rates (sgan.train.optim;
    default: those outside ``model.backbone``).
    """
    logger = get_logger("train")
    section_name = section if isinstance(section, str) else next((k for k, v in cfg.items() if v is section), None)
    if section_name not in cfg or not isinstance(cfg[section_name], dict):
        raise ValueError(f"section: expected a section name or the section object cfg.<name>, got {section!r}")
    section = cfg[section_name]
    rank, world = init_distributed(cfg)
    last_path = last_checkpoint_path(checkpoint_path)
    interrupted = os.path.isfile(last_path) and not cfg.overwrite
    if not interrupted and not checked and checkpoint_up_to_date(cfg, name, checkpoint_path, record):
        if cfg.resume:
            logger.info("%s: --resume: nothing to resume, %s is finished and up to date", name, checkpoint_path)
        return checkpoint_path
    total = int(section.iterations)  # >= 1: the config's bounds (sgan.train.optim.OPTIM_BOUNDS)
    check_precision(section.precision, device, f"{section_name}.precision")
    apply_memory_format(model.to(device), section.memory_format)
    if section.get("checkpointing") and return_freed_memory(device):
        logger.info("%s: checkpointing on the CPU: blocks of %d MiB or more are returned to the system when freed",
                    name, RETURNED_BLOCK_BYTES >> 20)
    scaler = grad_scaler(device, section.precision)
    optimizer = build_sgd(model, section.lr, section.momentum, section.weight_decay, section.lr_mult,
                          new_parameters)
    start, history, window = 0, [], {}
    if os.path.isfile(last_path) and cfg.overwrite and rank == 0:
        os.remove(last_path)  # a crash before the first new checkpoint must not resume the old run
    if interrupted:
        state = load_checkpoint(last_path)
        if not cfg.resume:
            raise ValueError(f"{name}: an interrupted run was found at {last_path} (iteration "
                             f"{state['iteration']} of {total}); pass --resume (resume=true) to continue "
                             "it or --overwrite (overwrite=true) to start again")
        found = changes(state.get("record"), record)
        if found and not cfg.resume_changed:
            raise ValueError(f"{name}: --resume refused, the interrupted run at {last_path} was started "
                             f"with other settings or inputs: {'; '.join(found)}; pass resume_changed=true "
                             "to continue it with the new ones, or --overwrite to start again")
        if state["iteration"] > total:
            raise ValueError(f"{name}: {last_path} is at iteration {state['iteration']}, beyond "
                             f"{section_name}.iterations={total}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and "grad_scaler" in state:
            scaler.load_state_dict(state["grad_scaler"])
        start, history, window = state["iteration"], state["history"], state.get("window", {})
        logger.info("%s: resuming from %s at iteration %d%s", name, last_path, start,
                    f" with changed settings ({'; '.join(found)})" if found else "")
    elif cfg.resume:
        logger.warning("%s: --resume: there is no interrupted run to resume (no %s); training from the start",
                       name, last_path)

    net = model
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    order = BatchOrder(len(dataset), int(section.batch_size), cfg.seed)
    order.rank_batch(0, rank, world)  # raises early when the batch does not split over the ranks
    loader = DataLoader(dataset, batch_sampler=IterationBatchSampler(order, start, total, rank, world),
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=False, worker_init_fn=ignore_sigterm)
    net.train()
    window_start = time.time()
    bar = progress(total=total, initial=start, desc=name, rank=rank)
    saved = start   # the iterations that .last.pt (or the start) holds

    def stop(done):
        """SIGTERM: write .last.pt at ``done`` completed iterations unless it holds them, then raise."""
        if rank == 0 and done > saved:
            save_torch(last_path, _checkpoint(name, model, model_info, done, history, cfg, record, optimizer, window,
                                              scaler))
        bar.close()
        logger.warning("%s: terminated (SIGTERM) after iteration %d of %d; %s holds it", name, done, total,
                       last_path if done > 0 else "nothing")
        raise Terminated()

    batches = iter(loader)
    # SIGTERM: stop after the current iteration; the workers end with the loop, however it ends
    with deferred_termination() as termination, _closing_workers(batches):
        for iteration in range(start, total):
            factor = lr_factor(iteration, total, section.schedule, section.step_size, section.step_gamma,
                               section.poly_power)
            try:
                batch = next(batches)
                set_learning_rate(optimizer, section.lr, factor)
                torch.manual_seed(derive_seed(cfg.seed, name, "step", iteration, rank))
                batch["iteration"] = iteration   # for losses whose weights follow the iteration
                with autocast(device, section.precision):
                    loss, terms = loss_fn(net, batch, device)
            except Exception:
                # SIGTERM sent to the whole process group also ends worker processes (the DataLoader's
                # while they start, train-seg's CRF pool): their failure, before this iteration changed
                # the model, is the stop
                if not termination.requested:
                    raise
                stop(iteration)
            if not math.isfinite(loss.item()):
                raise DivergedError(f"{name}: the loss is {loss.item()} at iteration {iteration}; terms {terms}")
            optimizer.zero_grad(set_to_none=True)
            backward_and_step(loss, optimizer, scaler)
            for key, value in terms.items():
                window.setdefault(key, []).append(float(value))
            done = iteration + 1
            bar.update(1)
            bar.set_postfix({k: f"{v[-1]:.4f}" for k, v in window.items()})
            if done % section.log_every == 0 or done == total:
                means = average_across_ranks({k: sum(v) / len(v) for k, v in window.items()}, device)
                history.append({"iteration": done, "lr": section.lr * factor, **means})
                speed = len(next(iter(window.values()), [])) / max(time.time() - window_start, 1e-9)
                logger.info("%s: it %d/%d lr %.3g %s (%.2f it/s)", name, done, total, section.lr * factor,
                            " ".join(f"{k} {v:.4f}" for k, v in means.items()), speed)
                window, window_start = {}, time.time()
            if done % section.checkpoint_every == 0 and done < total and rank == 0:
                save_torch(last_path, _checkpoint(name, model, model_info, done, history, cfg, record, optimizer,
                                                  window, scaler))
                saved = done
            if done < total and _stop_requested(termination, world, device):
                stop(done)
        bar.close()
        if rank == 0:
            save_torch(checkpoint_path, _checkpoint(name, model, model_info, total, history, cfg, record))
            if os.path.isfile(last_path):
                os.remove(last_path)
            logger.info("%s: wrote %s", name, checkpoint_path)
    barrier()
    return checkpoint_path


@contextlib.contextmanager
def _closing_workers(batches):
    """Shut the worker processes of the DataLoader iterator ``batches`` down when the block ends,
    also on an exception whose traceback keeps the iterator alive: they ignore SIGTERM
    (sgan.utils.signals.ignore_sigterm), so the terminate() at the interpreter's exit cannot end them."""
    try:
        yield
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)   # absent without worker processes
        if shutdown is not None:
            shutdown()


def _stop_requested(termination, world, device):
    """Whether SIGTERM asked to stop; under DDP, whether any rank was asked (all stop at one iteration)."""
    if world == 1:
        return termination.requested
    flag = torch.tensor([float(termination.requested)], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def _checkpoint(name, model, model_info, iteration, history, cfg, record, optimizer=None, window=None,
                scaler=None):
    """The checkpoint dict (module doc), in plain types only, so it loads with weights_only=True.

    There is no RNG state to store: every draw is seeded from (seed, step, iteration). ``window``
    (with the optimizer): the loss terms of the iterations since the last history entry, so that a
    resumed run logs the same history. ``scaler``: fp16's loss scaler, whose scale a resumed run continues.
    """
    state = {"format": CHECKPOINT_FORMAT, "step": name, "iteration": iteration,
             "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "model_info": _plain(model_info, "model_info"), "history": _plain(history, "history"),
             "config": _plain(cfg.to_dict(), "config"), "record": _plain(record, "record"),
             "git": git_revision()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
        state["window"] = _plain(window or {}, "window")
    if optimizer is not None and scaler is not None:
        state["grad_scaler"] = _plain(scaler.state_dict(), "grad_scaler")
    return state


def _plain(value, where):
    """``value`` with mappings as dicts, numpy scalars as Python numbers; TypeError for anything
    else that is not a tensor, list, tuple, str, number, bool or None (weights_only would refuse it)."""
    if isinstance(value, dict):
        return {key: _plain(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, torch.Tensor)):
        return value
    raise TypeError(f"checkpoint {where}: {type(value).__name__} {value!r} is not a plain value")
