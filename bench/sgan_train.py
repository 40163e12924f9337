"""Benchmark ``sgan_train``: one SGAN training iteration (forward, L_cls + 0.15 L_seed, backward,
SGD step) with the fused attention against the reference attention, on the same inputs.

    python -m bench.run sgan_train                                   # CPU: B = 2, 321²
    python -m bench.run sgan_train --device cpu --batch 1 --threads 2 --sizes 641,961,1281 --warmup 0 --repeats 1
    python -m bench.run sgan_train --device cuda --batch 15 --find-max-size

The network is the full SGAN (VGG-16 stride 8, Ck = C/2, official preset, classification and seed
branches; the model section's defaults, --width to shrink it), random weights; only the attention
backend changes between the measured paths, the losses use ``--loss-backend`` for all. For every
input size of --sizes: the median and minimum time of ``--repeats`` iterations after ``--warmup``,
and the peak memory: on CUDA the allocator's peak over those iterations; on the CPU the peak
resident set size of a child process that builds the network and runs them (one per size and
backend). With ``--find-max-size`` (CUDA): the largest square input (8k + 1, like 321) at which one
iteration of batch B fits in GPU memory with each path.

For larger inputs, the steps' compute settings (sgan.models.compute), each a comma separated list
whose every combination is a case: ``--precision fp32,bf16`` (fp16 with loss scaling on CUDA),
``--memory-format contiguous,channels_last`` (network and images), ``--checkpointing off,on``
(recompute the backbone's conv blocks in the backward pass; on the CPU with the allocator setting
the training loop makes with it, sgan.models.compute.return_freed_memory). ``--memory-budget 8GiB`` (CPU): the
largest square input (8k + 1) whose one training iteration peaks under that resident set size, each
size tried in its own child process, for every backend and mode. The search grows the side, then
narrows the bracket around the side that a fit of peak = a + b·side² through the two nearest probes
predicts (bisection when there is no such fit: on CUDA, or when the prediction leaves the bracket).
"""
import argparse
import itertools
import json
import os
import re

import torch

from bench import harness
from bench.child import ChildFailed
from bench.harness import Column, MIB, choice_list, int_list, name_list, positive_int
from bench.registry import Benchmark, Plan, register
from sgan.data.logits_size import resize_seeds
from sgan.losses import classification_loss, seed_loss
from sgan.models.compute import (MEMORY_FORMATS, PRECISIONS, apply_memory_format, autocast, grad_scaler,
                                 return_freed_memory)
from sgan.models.sgan_net import MODEL_SECTION, SGANNet
from sgan.ops import saliency_attention
from sgan.train.optim import backward_and_step, build_sgd

MAX_SIZE_START, MAX_SIZE_STEP, MAX_SIZE_LIMIT = 321, 160, 4001
CHECKPOINTING = {"off": False, "on": True}
BYTE_UNITS = {"B": 1, "KiB": 2 ** 10, "MiB": 2 ** 20, "GiB": 2 ** 30}


def byte_size(text):
    """'8GiB' -> 8 * 2**30 (units B, KiB, MiB, GiB; a positive number before them)."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(B|KiB|MiB|GiB)\s*", text)
    if found is None or float(found.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive size with a unit in {list(BYTE_UNITS)} "
                                         f"such as 8GiB, got {text!r}")
    return int(float(found.group(1)) * BYTE_UNITS[found.group(2)])


def mode_name(case):
    """'bf16 channels_last ckpt': the compute mode of a case (its precision, memory format, checkpointing)."""
    return " ".join([case["precision"], case["memory_format"]] + (["ckpt"] if case["checkpointing"] else []))


def model_options(width):
    """The stage-1 model section's defaults (the full SGAN), at ``width``."""
    return dict(MODEL_SECTION["defaults"], width=width)


def fused_backends(device, wanted=None):
    """The fused attention backends to measure on ``device`` (each probed with a tiny call), and
    the reason each candidate left out is not usable.

    wanted: backend names to measure, each that is usable; without it, the first usable of
    cuda/triton (GPU) or cpp (CPU).
    """
    candidates = list(wanted) if wanted else (["cpp"] if device.type == "cpu" else ["cuda", "triton"])
    x = torch.randn(1, 4, 3, 3, device=device)
    mask = torch.zeros(1, 3, 3, dtype=torch.bool, device=device)
    mask[0, 1, 1] = True
    usable, unusable = [], {}
    for backend in candidates:
        try:
            saliency_attention(x, x[:, :2], x[:, 2:], mask, 0.5, backend=backend)
        except (RuntimeError, ValueError, ImportError, NotImplementedError) as error:
            unusable[backend] = f"not usable on {device.type}: {str(error).splitlines()[0]}"
            continue
        usable.append(backend)
        if not wanted:
            break
    return usable, unusable


def make_batch(batch, size, device, seed=0):
    """Images, saliency maps (a salient disc + noise), multi-hot labels and seeds, all on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=generator)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((ys - size / 2) ** 2 + (xs - size / 2) ** 2 < (size / 3) ** 2).to(torch.uint8) * 200
    saliency = (disc[None] + torch.randint(0, 40, (batch, size, size), generator=generator)).to(torch.uint8)
    labels = torch.zeros(batch, 20)
    classes = torch.randint(0, 20, (batch,), generator=generator)
    labels[torch.arange(batch), classes] = 1
    seeds = torch.where(disc[None] > 0, (classes + 1)[:, None, None], torch.tensor(255)).to(torch.int64)
    return [t.to(device) for t in (images, saliency, labels, seeds)]


def train_step(network, optimizer, images, saliency, labels, seeds, loss_backend, precision="fp32", scaler=None):
    """One iteration as the training loop runs it: the forward and the losses under ``precision``'s
    autocast (sgan.models.compute), fp16 with the loss ``scaler``."""
    with autocast(images.device, precision):
        out = network(images, saliency)
        cls = classification_loss(out["cam"], labels, backend=loss_backend)
        seed = seed_loss(out["seed"], resize_seeds(seeds, out["seed"].shape[-2:]), backend=loss_backend)
        loss = cls + 0.15 * seed
    optimizer.zero_grad(set_to_none=True)
    backward_and_step(loss, optimizer, scaler)
    return loss.detach()


def add_arguments(parser):
    parser.add_argument("--batch", type=positive_int, default=None, help="default 15 on CUDA, 2 on CPU")
    parser.add_argument("--sizes", "--size", dest="sizes", type=int_list, default=[321],
                        help="square input sizes, comma separated (default 321)")
    parser.add_argument("--width", type=float, default=1.0, help="backbone width factor (1 = VGG-16)")
    parser.add_argument("--loss-backend", default="auto")
    parser.add_argument("--fused", type=name_list, default=None,
                        help="fused attention backends, comma separated (default: the first usable)")
    parser.add_argument("--find-max-size", action="store_true", help="CUDA only: largest input that fits")
    parser.add_argument("--precision", type=choice_list(PRECISIONS, "precisions"), default=["fp32"],
                        help="comma separated among fp32, bf16, fp16 (CUDA): autocast of the networks; default fp32")
    parser.add_argument("--memory-format", type=choice_list(MEMORY_FORMATS, "memory formats"), default=["contiguous"],
                        help="comma separated among contiguous, channels_last (network and images); default contiguous")
    parser.add_argument("--checkpointing", type=choice_list(CHECKPOINTING, "checkpointing values"), default=["off"],
                        help="comma separated among off, on: recompute the backbone's conv blocks; default off")
    parser.add_argument("--max-size-backends", type=name_list, default=None,
                        help="with --find-max-size / --memory-budget: the backends to search (default: every one)")
    parser.add_argument("--max-size-modes", type=name_list, default=None,
                        help="with --find-max-size / --memory-budget: the modes to search, comma separated as the "
                             "table names them, e.g. 'fp32 contiguous,bf16 channels_last ckpt' (default: every one)")
    parser.add_argument("--known-rows", default=None, metavar="JSON",
                        help="with --memory-budget: an earlier sgan_train result whose rows (and probes) of the same "
                             "batch seed the search")
    parser.add_argument("--skip-table", action="store_true",
                        help="with --find-max-size / --memory-budget: measure no table, only search")
    parser.add_argument("--memory-budget", type=byte_size, default=None,
                        help="CPU only: the largest input whose iteration peaks under this RSS, e.g. 8GiB")
    parser.add_argument("--max-size-limit", type=int, default=MAX_SIZE_LIMIT,
                        help=f"with --find-max-size / --memory-budget: the largest side tried, 8k + 1 and at "
                             f"least {MAX_SIZE_START} (default {MAX_SIZE_LIMIT}); a mode that fits there is "
                             f"reported as capped at it")


def plan(args, device):
    if args.find_max_size and device.type != "cuda":
        raise ValueError("--find-max-size needs --device cuda")
    if args.memory_budget is not None and device.type != "cpu":
        raise ValueError("--memory-budget needs --device cpu (on CUDA, --find-max-size searches the GPU's memory)")
    if args.max_size_limit < MAX_SIZE_START or (args.max_size_limit - 1) % 8:
        raise ValueError(f"--max-size-limit: expected a side of the form 8k + 1 of at least {MAX_SIZE_START}, "
                         f"got {args.max_size_limit}")
    if not args.width > 0:
        raise ValueError(f"--width: expected a positive number, got {args.width}")
    if "fp16" in args.precision and device.type != "cuda":
        raise ValueError(f"--precision: fp16 (with loss scaling) needs --device cuda, got {device.type}; use bf16")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the same for both paths: only the attention differs
    batch = args.batch or (15 if device.type == "cuda" else 2)
    fused, unusable = fused_backends(device, args.fused)
    backends = ["reference"] + fused
    unknown = sorted(set(args.max_size_backends or []) - set(backends))
    if unknown:
        raise ValueError(f"--max-size-backends: expected backends among {backends}, got {unknown}")
    unknown = sorted(set(args.max_size_modes or []) - {mode_name(mode) for mode in modes(args)})
    if unknown:
        raise ValueError(f"--max-size-modes: expected modes among {[mode_name(m) for m in modes(args)]}, got {unknown}")
    notes = [] if fused else [f"no fused attention backend is available on {device.type}: only the reference"]
    if args.skip_table and not (args.find_max_size or args.memory_budget is not None):
        raise ValueError("--skip-table: only with --find-max-size or --memory-budget (there would be nothing to do)")
    if args.known_rows is not None and args.memory_budget is None:
        raise ValueError("--known-rows: only with --memory-budget")
    if args.known_rows is not None and not os.path.isfile(args.known_rows):
        raise ValueError(f"--known-rows: {args.known_rows} is not a file")
    if args.known_rows is not None:
        known_rows(args.known_rows)  # read once before any measurement, so that a bad file stops the run here
    cases = [] if args.skip_table else [
        {"batch": batch, "input_size": [size, size], "feature_size": [(size - 1) // 8 + 1] * 2, **mode}
        for size in args.sizes for mode in modes(args)]
    config = {"batch": batch, "loss_backend": args.loss_backend, "model": model_options(args.width),
              "memory_budget_mib": None if args.memory_budget is None else args.memory_budget / MIB}
    return Plan(config=config, cases=cases, backends=backends, not_measured=unusable, notes=notes)


def training_setup(case, backend, device, width=1.0):
    """(network, [images, saliency, labels, seeds], optimizer) for one iteration of ``train_step`` in
    ``case``'s mode (``batch``, ``input_size`` or ``size``, ``memory_format``, ``checkpointing``): the
    full SGAN at ``width`` with ``backend``, seeded, γ = 0.1, on ``device``."""
    torch.manual_seed(0)
    network = SGANNet(model_options(width), "sgan", backend=backend, checkpointing=case["checkpointing"]).to(device)
    with torch.no_grad():
        network.attention.gamma.fill_(0.1)  # non-zero, as after a few iterations
    size = case["input_size"][0] if "input_size" in case else case["size"]
    inputs = make_batch(case["batch"], size, device)
    apply_memory_format(network, case["memory_format"])
    inputs[0] = inputs[0].contiguous(memory_format=MEMORY_FORMATS[case["memory_format"]])
    return network, inputs, build_sgd(network, 1e-3, 0.9, 5e-4, [1, 2, 10, 20])


def measure(case, backends, ctx):
    """Median / min time of one training iteration of one backend in the case's mode (precision,
    memory_format, checkpointing); CUDA: the allocator's peak."""
    (backend,) = backends
    device = ctx.device
    network, inputs, optimizer = training_setup(case, backend, device, ctx.args.width)
    if case["checkpointing"]:
        return_freed_memory(device)  # as the training loop does
    precision, losses = case["precision"], []
    scaler = grad_scaler(device, precision)
    step = lambda: losses.append(  # noqa: E731
        train_step(network, optimizer, *inputs, ctx.args.loss_backend, precision, scaler))
    if device.type == "cuda":
        torch.cuda.empty_cache()
        with harness.cuda_peak(device) as peak:
            timing = ctx.time(step)
        peak_memory_mb = peak.peak_bytes / MIB
    else:
        timing, peak_memory_mb = ctx.time(step), None  # on the CPU the harness records the child's RSS
    if not torch.isfinite(losses[-1]):
        raise RuntimeError(f"{backend}: non-finite loss {float(losses[-1])}")
    result = {"median_ms": timing.median_ms, "min_ms": timing.min_ms, "iterations_timed": len(timing.samples)}
    if peak_memory_mb is not None:
        result["peak_memory_mb"] = peak_memory_mb
    return {backend: result}


def modes(args):
    """Every combination of the --precision, --memory-format and --checkpointing values, as case fields."""
    return [{"precision": p, "memory_format": m, "checkpointing": CHECKPOINTING[c]}
            for p, m, c in itertools.product(args.precision, args.memory_format, args.checkpointing)]


def fits(backend, batch, size, ctx, mode, budget=None):
    """(fits, peak bytes or None): whether one training iteration at ``size`` in ``mode`` (case
    fields of :func:`modes`) fits. Without ``budget`` (CUDA): it runs here without running out of
    memory; an allocation failure of cuBLAS or cuDNN (harness.is_allocation_failure) counts as not
    fitting, any other error is raised; no peak is returned. With a ``budget`` in bytes (CPU): it runs
    in a child process whose peak resident set size stays at or under the budget; a child killed (out
    of memory) does not fit, any other failure is raised."""
    case, detail, peak = {"batch": batch, "input_size": [size, size], **mode}, "", None
    if budget is None:
        one_iteration = harness.Context(ctx.device, 0, 1, ctx.args)
        try:
            measure(case, [backend], one_iteration)
            found = True
        except RuntimeError as error:
            if not harness.is_allocation_failure(error):
                raise
            found = False
        finally:
            harness.free_memory(ctx.device)
    else:
        try:
            fields = harness.measure_in_child("sgan_train", case, backend, ctx.args, ctx.device.type, 0, 1)
        except ChildFailed as error:
            if "killed" not in str(error):
                raise
            fields = {"status": "out of memory"}
        if fields["status"] not in ("ok", "out of memory"):
            raise RuntimeError(f"{backend} {mode_name(case)} at {size}²: {fields['status']}")
        found = fields["status"] == "ok" and fields["peak_memory_mb"] * MIB <= budget
        detail = f" (peak RSS {fields['peak_memory_mb']:.0f} MiB)" if fields["status"] == "ok" else " (killed)"
        if fields["status"] == "ok":
            peak = fields["peak_memory_mb"] * MIB
    print(f"{backend:10s} {mode_name(case)} B={batch} {size}²: {'fits' if found else 'does not fit'}{detail}",
          flush=True)
    return found, peak


def predicted_size(probes, budget, low, high):
    """The 8k + 1 side inside the bracket (low, high) where peak = a + b·side², fitted through the two
    probed sides nearest the budget ({side: peak bytes}), reaches ``budget`` (low + 8 when the fit puts
    it at or below low); None without a usable fit or when that side is not below ``high``."""
    usable = sorted(probes.items(), key=lambda item: abs(item[1] - budget))[:2]
    if len(usable) < 2 or usable[0][0] == usable[1][0]:
        return None
    (s1, p1), (s2, p2) = usable
    slope = (p2 - p1) / (s2 * s2 - s1 * s1)
    if slope <= 0:
        return None
    side = ((budget - p1) / slope + s1 * s1) ** 0.5
    grid = max(int((side - 1) // 8) * 8 + 1, low + 8)   # at or below low: confirm that low + 8 does not fit
    return grid if grid < high else None


def find_max_size(backend, batch, ctx, mode, start=MAX_SIZE_START, step=MAX_SIZE_STEP, limit=MAX_SIZE_LIMIT,
                  budget=None, known=None):
    """Largest 8k + 1 side that fits (:func:`fits`) and the number of sides tried: grow by ``step`` from
    ``start`` until a side does not fit, then narrow the bracket on multiples of 8, each time at the
    side that :func:`predicted_size` gives (with a budget; while growing, at most ``limit``) and
    otherwise at the middle; a predicted side that fits is followed by the one 8 above it, so that a
    good prediction ends the search.
    known: {side: peak bytes} already measured in this mode (the benchmark's own rows); with a
    budget the search starts from them, at the largest known side that fits."""
    probes, tried = dict(known or {}), 0
    if budget is not None and probes:
        fitting = [side for side, peak in probes.items() if peak <= budget]
        start = max(fitting) if fitting else min(probes)

    def fits_at(size):
        nonlocal tried
        tried += 1
        found, peak = fits(backend, batch, size, ctx, mode, budget)
        if peak is not None:
            probes[size] = peak
        return found

    def try_side(side, predicted, low, high):
        """The bracket after trying ``side``; a predicted side that fits is followed by side + 8."""
        if not fits_at(side):
            return low, side
        if predicted and (high is None or side + 8 < high) and side + 8 <= limit:
            return (side + 8, high) if fits_at(side + 8) else (side, side + 8)
        return side, high

    if start in probes and budget is not None and probes[start] > budget:
        low, high = 9, start
    elif start not in probes and not fits_at(start):
        low, high = 9, start
    else:
        low, high = start, None
        while high is None and low + step <= limit:
            # a side predicted beyond the limit is tried at the limit: if that fits, the search ends there
            guess = predicted_size(probes, budget, low, float("inf")) if budget is not None else None
            guess = None if guess is None else min(guess, limit)
            low, high = try_side(guess or low + step, guess is not None, low, high)
        if high is None:
            return {"max_size": low, "capped_at_limit": True, "sides_tried": tried, "probes_mib": probed(probes)}
    while high - low > 8:
        guess = predicted_size(probes, budget, low, high) if budget is not None else None
        low, high = try_side(guess or low + ((high - low) // 16) * 8, guess is not None, low, high)
    return {"max_size": low, "capped_at_limit": False, "sides_tried": tried, "probes_mib": probed(probes)}


def probed(probes):
    """{side: peak MiB} of every side whose peak is known (JSON keys are strings)."""
    return {str(side): peak / MIB for side, peak in sorted(probes.items())}


def known_rows(path):
    """The ok rows of an earlier sgan_train result, plus one row per side its searches probed."""
    try:
        with open(path) as f:
            earlier = json.load(f)
        rows = [row for row in earlier.get("results", []) if row.get("status") == "ok" and "peak_memory_mb" in row]
        batch = earlier.get("config", {}).get("batch")
        for key, found in earlier.get("max_size", {}).items():
            backend, *words = key.split(" ")
            mode = {"precision": words[0], "memory_format": words[1], "checkpointing": words[2:] == ["ckpt"]}
            rows += [{"backend": backend, "status": "ok", "batch": batch, "input_size": [int(side), int(side)],
                      "peak_memory_mb": peak, **mode} for side, peak in found.get("probes_mib", {}).items()]
    except (OSError, ValueError, AttributeError, IndexError, TypeError) as error:
        raise ValueError(f"--known-rows: {path}: expected an sgan_train result (JSON with 'results' and "
                         f"'max_size'), got {type(error).__name__}: {error}") from None
    return rows


def summarize(rows, plan, ctx):
    """With --find-max-size (CUDA) or --memory-budget (CPU): the largest input of each backend in each
    mode, keyed 'backend mode' (:func:`mode_name`)."""
    budget = ctx.args.memory_budget
    if not ctx.args.find_max_size and budget is None:
        return {}
    batch, found = plan.config["batch"], {}
    if ctx.args.known_rows is not None:
        rows = list(rows) + known_rows(ctx.args.known_rows)
    searched = [mode for mode in modes(ctx.args)
                if not ctx.args.max_size_modes or mode_name(mode) in ctx.args.max_size_modes]
    for backend in ctx.args.max_size_backends or plan.backends:
        for mode in searched:
            key = f"{backend} {mode_name(mode)}"
            known = {row["input_size"][0]: row["peak_memory_mb"] * MIB for row in rows
                     if budget is not None and row["backend"] == backend and row.get("status") == "ok"
                     and row["batch"] == batch and all(row[k] == v for k, v in mode.items())}
            found[key] = find_max_size(backend, batch, ctx, mode, limit=ctx.args.max_size_limit, budget=budget,
                                       known=known)
            print(f"{key:30s} largest input for B={batch}: {found[key]['max_size']}² "
                  f"({found[key]['sides_tried']} sides tried)", flush=True)
    return {"max_size": found}


register(Benchmark(
    name="sgan_train",
    description="one SGAN (stage 1) training iteration, fused attention against the reference attention",
    baseline="reference",
    add_arguments=add_arguments,
    plan=plan,
    measure=measure,
    compare={"median_ms": "speedup", "min_ms": "speedup_min"},
    columns=[Column("input_size", "input", lambda s: f"{s[0]}²"), Column("batch", "B"),
             Column("precision", "precision"), Column("memory_format", "layout"),
             Column("checkpointing", "ckpt", lambda c: "on" if c else "off"), Column("backend", "backend"),
             Column("median_ms", "median ms", "{:.1f}"),
             Column("min_ms", "min ms", "{:.1f}"), Column("peak_memory_mb", "peak MiB", "{:.0f}"),
             Column("speedup", "ref / it", "{:.2f}x"), Column("speedup_min", "(min)", "{:.2f}x")],
    status_column="median_ms",
    warmup={"cpu": 1, "cuda": 3},
    repeats={"cpu": 3, "cuda": 10},
    memory_method={"cpu": "peak resident set size (VmHWM) of a child process that builds the network and runs the "
                          "warm-up and timed iterations of one size and backend; memory_at_start_mb is its peak "
                          "before (Python, torch and the imports)",
                   "cuda": "torch.cuda.max_memory_allocated over the warm-up and timed iterations (absolute)"},
    output=lambda header: f"sgan_train_{header['device_type']}.json",
    cpu_memory="rss",
    summarize=summarize,
))
