"""Training machinery shared by the training steps: SGD groups and schedules, deterministic batch
order, DDP, the loop with atomic checkpoints and exact resume (see each module's docstring)."""
from sgan.train.distributed import barrier, init_distributed, rank_and_world
from sgan.train.loop import CHECKPOINT_FORMAT, DivergedError, last_checkpoint_path, load_checkpoint, train
from sgan.train.optim import (
    OPTIM_BOUNDS,
    OPTIM_CHOICES,
    OPTIM_DEFAULTS,
    build_sgd,
    lr_factor,
    parameter_groups,
    set_learning_rate,
)
from sgan.train.order import BatchOrder, IterationBatchSampler

__all__ = [
    "BatchOrder",
    "CHECKPOINT_FORMAT",
    "DivergedError",
    "IterationBatchSampler",
    "OPTIM_BOUNDS",
    "OPTIM_CHOICES",
    "OPTIM_DEFAULTS",
    "barrier",
    "build_sgd",
    "init_distributed",
    "last_checkpoint_path",
    "load_checkpoint",
    "lr_factor",
    "parameter_groups",
    "rank_and_world",
    "set_learning_rate",
    "train",
]
