"""DDP through torchrun: process group from the environment (nccl on CUDA, gloo on CPU)."""
import datetime
import os

import torch
import torch.distributed as dist


def init_distributed(cfg=None):
    """(rank, world size); initialises the default process group once when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and (cfg is None or str(cfg.device) != "cpu")
        if use_nccl:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if use_nccl else "gloo", timeout=datetime.timedelta(hours=6))
    return dist.get_rank(), dist.get_world_size()


def rank_and_world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def average_across_ranks(values, device):
    """Mean over ranks of a dict of floats (identity with one process)."""
    _, world = rank_and_world()
    if world == 1 or not values:
        return values
    keys = sorted(values)
    stacked = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(stacked)
    return {k: float(v) / world for k, v in zip(keys, stacked.tolist())}
