"""Where one SGAN training iteration's CPU memory goes: the peak resident set size of the iteration,
and the peak within each phase (the forward, recomputation and backward of each backbone
convolution, pooling, the attention and the heads), for every combination of the compute settings
and of the allocator setting, each in a fresh child process.

    python -m bench.memory_phases --size 1281 --precision fp32,bf16 --memory-format contiguous,channels_last \\
        --checkpointing off,on --allocator glibc,return-freed --output bench/results/memory-phases-cpu.json

The iteration is bench/sgan_train.py's (the full SGAN, official preset, one fused ``--backend``,
L_cls + 0.15 L_seed, SGD step), B = ``--batch``. ``--allocator``: ``glibc`` leaves glibc's heap as
it is; ``return-freed`` makes the setting sgan.models.compute.return_freed_memory, which the
training loop makes when ``checkpointing`` is on (so ``--checkpointing on --allocator glibc`` is a
setting no pipeline step runs: it shows what checkpointing alone does).

Memory is the process's resident set: ``peak_mib`` is the child's exact peak (VmHWM) over the whole
iteration, ``start_mib`` the resident set before it (Python, torch, the network, the inputs), and
``phases`` the highest resident set seen while each phase ran (at its start and by a thread sampling
every 0.5 ms), so a phase's figure can miss a peak shorter than that. A phase is named by the module
whose hook opened it: ``forward conv1_2``, ``recompute conv1_2`` (a checkpointed block run again in the backward
pass), ``backward conv1_2``; ``after`` is the optimiser step and what follows.
"""
import argparse
import itertools
import os
import sys
import threading
import time

import torch

from bench.child import ChildFailed, run_in_child
from bench.harness import choice_list, device_header, int_list, positive_int
from bench.sgan_train import CHECKPOINTING, train_step, training_setup
from sgan.models.compute import MEMORY_FORMATS, PRECISIONS, grad_scaler, return_freed_memory
from sgan.utils.io import save_json

ALLOCATORS = ("glibc", "return-freed")
SAMPLE_S = 0.0005
MIB = 2 ** 20


def resident_bytes():
    """This process's resident set size now (/proc/self/statm)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PhaseSampler:
    """Labels phases through module hooks and keeps the highest resident set seen in each."""

    def __init__(self, network):
        self.phase, self.peaks, self.backward_started, self._stop = "start", {}, False, threading.Event()
        self._lock = threading.Lock()
        names = [(name.rsplit(".", 1)[-1], module) for name, module in network.named_modules()
                 if name.startswith("backbone.") and name.count(".") == 1]
        names += [(name, getattr(network, name)) for name in ("attention", "classifier", "seed_branch")]
        for name, module in names:
            module.register_forward_pre_hook(lambda _m, _i, name=name: self._enter_forward(name))
            module.register_forward_hook(lambda _m, _i, output, name=name: self._watch_gradients(name, output))
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _enter_forward(self, name):
        self._enter(f"{'recompute' if self.backward_started else 'forward'} {name}")

    def _watch_gradients(self, name, output):
        """The module's backward phase opens when the gradient of one of its outputs arrives: a hook
        on the output tensors of the forward pass (a recomputation's outputs get no gradient). Tensor
        hooks, unlike full backward hooks, let the network modify the outputs in place (its ReLUs)."""
        if self.backward_started:
            return
        for tensor in torch.utils._pytree.tree_leaves(output):
            if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
                tensor.register_hook(lambda _grad, name=name: self._enter_backward(name))

    def _enter_backward(self, name):
        self.backward_started = True
        self._enter(f"backward {name}")

    def _enter(self, phase):
        self.phase = phase
        self._record(phase)  # every phase gets at least the sample at its start

    def _record(self, phase):
        resident = resident_bytes()
        with self._lock:  # the hooks (main thread) and the sampler both record
            if resident > self.peaks.get(phase, 0):
                self.peaks[phase] = resident

    def _sample(self):
        while not self._stop.is_set():
            self._record(self.phase)
            time.sleep(SAMPLE_S)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.phase = "after"
        time.sleep(10 * SAMPLE_S)
        self._stop.set()
        self._thread.join()


def one_iteration(case, threads):
    """Child side: build the network in ``case``'s mode, run one iteration, return the figures (MiB)."""
    from bench.child import peak_rss_bytes
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    network, inputs, optimizer = training_setup(case, case["backend"], device)
    returned = case["allocator"] == "return-freed" and return_freed_memory(device)
    sampler = PhaseSampler(network)
    start = resident_bytes()
    began = time.perf_counter()
    with sampler:
        loss = train_step(network, optimizer, *inputs, "auto", case["precision"], grad_scaler(device, case["precision"]))
    seconds = time.perf_counter() - began
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss {float(loss)}")
    phases = sorted(((phase, peak / MIB) for phase, peak in sampler.peaks.items()), key=lambda item: -item[1])
    return {"allocator_set": returned, "start_mib": start / MIB, "peak_mib": peak_rss_bytes() / MIB,
            "iteration_s": seconds, "phases": dict(phases)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", "--sizes", dest="sizes", type=int_list, default=[641],
                        help="square input sizes, comma separated (default 641)")
    parser.add_argument("--batch", type=positive_int, default=1)
    parser.add_argument("--backend", default="cpp", help="the fused attention backend (default cpp)")
    parser.add_argument("--precision", type=choice_list(PRECISIONS, "precisions"), default=["fp32"])
    parser.add_argument("--memory-format", type=choice_list(MEMORY_FORMATS, "memory formats"),
                        default=["contiguous"])
    parser.add_argument("--checkpointing", type=choice_list(CHECKPOINTING, "checkpointing values"), default=["off"])
    parser.add_argument("--allocator", type=choice_list(ALLOCATORS, "allocator settings"), default=["glibc"])
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--top", type=positive_int, default=4, help="phases printed per row (all go to the JSON)")
    parser.add_argument("--output", default=None, help="JSON file for the rows and the header")
    args = parser.parse_args(argv)
    if "fp16" in args.precision:
        parser.error("--precision: fp16 needs CUDA; this tool measures the CPU")
    # the children run with --threads; this process keeps its own (a caller's, e.g. pytest's)
    header = dict(device_header(torch.device("cpu")), threads=args.threads)
    rows = []
    for size, precision, memory_format, checkpointing, allocator in itertools.product(
            args.sizes, args.precision, args.memory_format, args.checkpointing, args.allocator):
        case = {"size": size, "batch": args.batch, "backend": args.backend, "precision": precision,
                "memory_format": memory_format, "checkpointing": CHECKPOINTING[checkpointing], "allocator": allocator}
        try:
            row = dict(case, **run_in_child(one_iteration, case, args.threads).value)
        except ChildFailed as error:  # out of memory, an unusable backend: one line, the rows so far kept
            print(f"bench.memory_phases: {size}² {precision} {memory_format} checkpointing {checkpointing} "
                  f"allocator {allocator}: {error}", file=sys.stderr)
            return 2
        rows.append(row)
        if args.output:  # after every row, so that a stopped or failed run keeps what it measured
            save_json(args.output, dict(header, sample_s=SAMPLE_S, rows=rows, complete=False))
        top = ", ".join(f"{phase} {mib:.0f}" for phase, mib in list(row["phases"].items())[:args.top])
        print(f"{size}² {precision} {memory_format} checkpointing {checkpointing} allocator {allocator}: "
              f"peak {row['peak_mib']:.0f} MiB (start {row['start_mib']:.0f}), {row['iteration_s']:.1f} s | {top}",
              flush=True)
    if args.output:
        save_json(args.output, dict(header, sample_s=SAMPLE_S, rows=rows, complete=True,
                                    load_average_at_end=os.getloadavg()[0]))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
