"""Autotune configurations shared by the Triton kernels.

Kernels are tuned on stable sizes only (channel counts and, implicitly, tensor dtypes: Triton's
autotuner appends the dtype of every tensor argument to the key), never on the number of positions
N, so inputs of varying spatial size reuse one tuned configuration per (C, Ck, dtype). Nor are they
compiled per N: every kernel takes N (and any count derived from it) with ``do_not_specialize``, so
Triton does not compile a variant each time N changes between divisible and not divisible by 16.

Under ``TRITON_INTERPRET=1`` (CPU tests) each kernel gets a single small configuration: the
interpreter would otherwise run every candidate once per key.
"""
import os

import triton

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
MIN_DOT_SIZE = 16  # tl.dot needs at least 16 along every dimension on GPU


def configs(gpu_candidates, interpreter_choice):
    """triton.Config list from dicts of block sizes plus optional ``num_warps``/``num_stages``.

    gpu_candidates: list of dicts tried on GPU; interpreter_choice: the one dict used when interpreted.
    """
    chosen = [interpreter_choice] if INTERPRETED else gpu_candidates
    made = []
    for entry in chosen:
        blocks = {name: value for name, value in entry.items() if name not in ("num_warps", "num_stages")}
        made.append(triton.Config(blocks, num_warps=entry.get("num_warps", 4), num_stages=entry.get("num_stages", 2)))
    return made


def clamp_blocks_to_sizes(block_sizes):
    """An ``early_config_prune`` that drops candidates whose blocks overshoot the channel counts.

    block_sizes maps a block parameter to the size argument it tiles, e.g. {"BLOCK_C": "C"}. Each such
    block is clamped to max(16, next_power_of_2(size)); candidates that become identical are merged,
    so small channel counts (as in the tests) compile and benchmark only a few configurations.
    """
    def prune(candidates, named_args, **kwargs):
        sizes = {**named_args, **kwargs}
        seen, kept = set(), []
        for config in candidates:
            blocks = dict(config.kwargs)
            for block, size_name in block_sizes.items():
                if block in blocks and size_name in sizes:
                    limit = max(MIN_DOT_SIZE, triton.next_power_of_2(int(sizes[size_name])))
                    blocks[block] = min(blocks[block], limit)
            signature = (tuple(sorted(blocks.items())), config.num_warps, config.num_stages)
            if signature not in seen:
                seen.add(signature)
                kept.append(triton.Config(blocks, num_warps=config.num_warps, num_stages=config.num_stages))
        return kept
    return prune
