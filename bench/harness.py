"""The one benchmark harness: timing, peak memory, device header, speed-ups, table and JSON.

A benchmark (bench/registry.py) names its cases, its backends and the baseline backend, and a
``measure`` function that measures backends on one case with :meth:`Context.time` (warm-up, then
the median and minimum of the timed repeats) and the memory helpers here. :func:`run_benchmark`
does the rest, the same for every benchmark:

- the device header: CPU model, threads and cores, GPU name and memory, torch / triton / python /
  CUDA versions, the git revision (sgan.config.git_revision), load average, command line;
- the status of every (case, backend): ok, skipped (:class:`Skip`), out of memory, failed;
- peak memory: on CUDA the allocator's peak (``cuda_peak``); on the CPU either the profiler's
  allocation timeline (``cpu_allocation_peak``) or, for benchmarks registered with
  ``cpu_memory="rss"``, the peak resident set size of a child process that runs one (case,
  backend) alone (``run_in_child``): an RSS peak belongs to a whole process, so each case needs its own;
- speed-up columns: the baseline backend's value over each backend's, per case (``add_speedups``);
- a printed table and ``bench/results/<name>.json``, written atomically after every case
  (``"complete": false``) and at the end (``"complete": true``), so a stopped run keeps its rows.
"""
import argparse
import contextlib
import dataclasses
import datetime
import gc
import os
import platform
import re
import statistics
import sys
import time

import torch

from bench.child import ChildFailed, peak_rss_bytes, run_in_child
from sgan.config import git_revision
from sgan.utils.io import save_json

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MIB = 2 ** 20


class Skip(Exception):
    """Raised by a measure function for a (case, backend) it does not run; the message says why."""


class UsageError(ValueError):
    """A benchmark option that cannot work (raised before any measurement)."""


# ---------------------------------------------------------------------------------------------
# Timing


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds of each timed repeat (warm-up runs excluded)."""
    samples: tuple

    @property
    def median_ms(self):
        return 1e3 * statistics.median(self.samples)

    @property
    def min_ms(self):
        return 1e3 * min(self.samples)

    @property
    def total_s(self):
        return sum(self.samples)


def synchronize(device):
    """Wait for the queued CUDA work of ``device`` (nothing to wait for on the CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_step(step, warmup, repeats, device=None, clock=time.perf_counter):
    """Run ``step`` ``warmup`` times untimed, then ``repeats`` times timed (synchronised); a Timing."""
    return time_interleaved({None: step}, warmup, repeats, device, clock)[None]


def time_interleaved(steps, warmup, repeats, device=None, clock=time.perf_counter):
    """{name: Timing} of several steps run in turn, repeat by repeat, so load from other processes
    hits them alike; ``warmup`` untimed rounds first."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"expected repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    samples = {name: [] for name in steps}
    for iteration in range(warmup + repeats):
        for name, step in steps.items():
            synchronize(device)
            start = clock()
            step()
            synchronize(device)
            if iteration >= warmup:
                samples[name].append(clock() - start)
    return {name: Timing(tuple(times)) for name, times in samples.items()}


# ---------------------------------------------------------------------------------------------
# Memory


class CudaPeak:
    """Filled by :func:`cuda_peak`: ``peak_bytes`` (absolute) and ``above_start_bytes``."""
    peak_bytes = above_start_bytes = None


@contextlib.contextmanager
def cuda_peak(device):
    """Measure the CUDA allocator's peak over the ``with`` block (torch.cuda.max_memory_allocated
    after reset_peak_memory_stats), absolute and above what was allocated at its start."""
    result = CudaPeak()
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    yield result
    synchronize(device)
    result.peak_bytes = torch.cuda.max_memory_allocated(device)
    result.above_start_bytes = result.peak_bytes - start


def cpu_allocation_peak(run):
    """Peak bytes allocated and not yet freed while ``run()`` runs, from torch.profiler's memory
    events (which see the C++ extension's allocations too)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def free_memory(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Device header


def cpu_model():
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_cores():
    """The number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def versions():
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"torch": torch.__version__, "triton": triton_version, "python": platform.python_version(),
            "cuda": torch.version.cuda}


def command_line():
    """How this process was started, as ``python -m <module> args`` when run with -m."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    start = ["python", "-m", spec.name] if spec is not None and spec.name else sys.argv[:1]
    return " ".join(start + sys.argv[1:])


def device_header(device):
    """Where and with what a benchmark runs: the fields every result JSON starts with."""
    header = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
              "device_type": device.type, "cpu": cpu_model(), "threads": torch.get_num_threads(),
              "cpu_cores": cpu_cores(), "versions": versions(), "git": git_revision(),
              "command": command_line(),
              "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "load_average_at_start": os.getloadavg()[0]}
    if device.type == "cuda":
        header["gpu_memory_gib"] = torch.cuda.get_device_properties(device).total_memory / 2 ** 30
    return header


def format_header(header, warmup, repeats, memory_method):
    versions_text = " ".join(f"{name} {value}" for name, value in header["versions"].items() if value)
    return (f"device: {header['device']} ({header['device_type']}; CPU {header['cpu']}, {header['threads']} "
            f"threads of {header['cpu_cores']} cores) | {versions_text} | git {header['git']} | "
            f"warm-up {warmup}, median and min of {repeats} | peak memory: {memory_method or 'not measured'}")


# ---------------------------------------------------------------------------------------------
# Speed-ups and the table


def add_speedups(rows, baseline, compare):
    """Add to every ok row of one case ``compare[metric]`` = baseline row's metric / row's metric.

    rows: the rows of one case, one per backend ("backend", "status", metrics); rows without an ok
    baseline, or with a metric that is missing or not positive, get no speed-up.
    """
    reference = next((r for r in rows if r.get("backend") == baseline and r.get("status") == "ok"), None)
    if reference is None:
        return rows
    for row in rows:
        if row.get("status") != "ok":
            continue
        for metric, field in compare.items():
            if reference.get(metric) is not None and row.get(metric):
                row[field] = reference[metric] / row[metric]
    return rows


@dataclasses.dataclass(frozen=True)
class Column:
    """One printed column: the row key, its title and a format (a str.format pattern or a callable)."""
    key: str
    title: str
    format: object = "{}"

    def cell(self, row):
        value = row.get(self.key)
        if value is None:
            return "-"
        if callable(self.format):
            return self.format(value)
        return self.format.format(value)


def mebibytes(value):
    return f"{value / MIB:.1f}"


def format_row(row, columns, status_column):
    """One row as a progress line: "title value" per column, the status in place of the metrics."""
    keys = [c.key for c in columns]
    shown = columns if row.get("status") == "ok" else columns[:keys.index(status_column)]
    line = "  ".join(f"{c.title} {c.cell(row)}" for c in shown)
    return line if row.get("status") == "ok" else f"{line}  {row.get('status', '')}"


def format_table(rows, columns, status_column):
    """Aligned text table; a row whose status is not ok shows it in ``status_column`` (a key) and
    spills over instead of widening that column."""
    titles = [c.title for c in columns]
    table = [titles]
    spill = [c.key for c in columns].index(status_column)
    for row in rows:
        cells = [c.cell(row) for c in columns]
        if row.get("status") != "ok":
            cells[spill:] = [row.get("status", "")]
        table.append(cells)
    widths = [max(len(r[i]) for r in table if len(r) == len(titles)) for i in range(len(titles))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)


# ---------------------------------------------------------------------------------------------
# Command-line value types shared by the benchmarks' options


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def int_list(text):
    """'41,81' -> [41, 81] (positive integers)."""
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def name_list(text):
    """'official,paper' -> ['official', 'paper']."""
    values = [item.strip() for item in text.split(",") if item.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return values


def choice_list(choices, what):
    """An argparse type: 'a,b' -> ['a', 'b'], each among ``choices`` (else one line naming ``what``)."""
    def parse(text):
        values = name_list(text)
        unknown = [value for value in values if value not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"expected {what} among {list(choices)}, got {unknown}")
        return values
    return parse


# ---------------------------------------------------------------------------------------------
# Running a benchmark


class Context:
    """What a measure function gets beside the case: the device, the timing settings, the parsed
    arguments, ``state`` (what the benchmark's setup yielded) and a per-case store."""

    def __init__(self, device, warmup, repeats, args, state=None, clock=time.perf_counter):
        self.device, self.warmup, self.repeats, self.args = device, warmup, repeats, args
        self.state, self.clock = state, clock
        self._case_values = {}

    def time(self, step, warmup=None, repeats=None):
        """Timing of ``step`` with this run's warm-up and repeats (or the ones given)."""
        return time_step(step, self.warmup if warmup is None else warmup,
                         self.repeats if repeats is None else repeats, self.device, self.clock)

    def time_interleaved(self, steps):
        return time_interleaved(steps, self.warmup, self.repeats, self.device, self.clock)

    def per_case(self, name, make):
        """``make()``, made once per case and shared by its backends (e.g. the inputs)."""
        if name not in self._case_values:
            self._case_values[name] = make()
        return self._case_values[name]

    def end_case(self):
        self._case_values.clear()


# What CUDA, cuBLAS and cuDNN say when an allocation fails: near the memory limit a library's own
# workspace allocation can fail first, raised as a plain RuntimeError rather than OutOfMemoryError.
ALLOCATION_FAILURE = re.compile(r"out of memory|CUBLAS_STATUS_ALLOC_FAILED|CUDNN_STATUS_\w*ALLOC\w*", re.IGNORECASE)


def is_allocation_failure(error):
    """True for an error that means "does not fit in memory": torch's OutOfMemoryError, or a
    RuntimeError whose message is a CUDA / cuBLAS / cuDNN allocation failure."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and ALLOCATION_FAILURE.search(str(error)) is not None


def status_of(error):
    if isinstance(error, Skip):
        return f"skipped: {error}"
    if is_allocation_failure(error):
        return "out of memory"
    return f"failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def measure_guarded(benchmark, case, backends, ctx):
    """{backend: fields}: the measure function's metrics with status "ok", or every backend of the
    call with the status of what it raised (Skip, out of memory, a failure)."""
    try:
        measured = benchmark.measure(case, backends, ctx)
    except (Skip, torch.cuda.OutOfMemoryError, RuntimeError, TypeError, ValueError) as error:
        return {backend: {"status": status_of(error)} for backend in backends}
    return {backend: dict(measured[backend], status="ok") for backend in backends}


def _measure_in_child(name, case, backend, args, device_type, threads, warmup, repeats):
    """Child-process side of a ``cpu_memory="rss"`` benchmark: one backend on one case; (its fields,
    the child's peak RSS just before the case: Python, torch, the imports and the setup)."""
    from bench.registry import get
    torch.set_num_threads(threads)
    benchmark = get(name)
    device = torch.device(device_type)
    ctx = Context(device, warmup, repeats, args)
    with benchmark.setup(args, ctx) if benchmark.setup else contextlib.nullcontext() as state:
        ctx.state = state
        before = peak_rss_bytes()
        return measure_guarded(benchmark, case, [backend], ctx)[backend], before


def measure_in_child(name, case, backend, args, device_type, warmup, repeats):
    """One backend of benchmark ``name`` on one case in a spawned child process: its row fields, with
    ``peak_memory_mb`` (the child's peak RSS) and ``memory_at_start_mb`` when its status is ok.
    Raises bench.child.ChildFailed when the child dies."""
    child = run_in_child(_measure_in_child, name, case, backend, args, device_type, torch.get_num_threads(),
                         warmup, repeats)
    fields, before_case = child.value
    if fields["status"] == "ok":
        fields.update(peak_memory_mb=child.peak_rss_bytes / MIB, memory_at_start_mb=before_case / MIB)
    return fields


def measure_case(benchmark, case, plan, ctx):
    """The rows of one case, one per backend, with their speed-ups against the baseline."""
    device = ctx.device
    in_child = benchmark.cpu_memory == "rss" and device.type == "cpu"
    calls = [[backend] for backend in plan.backends] if benchmark.one_backend_per_call or in_child \
        else [list(plan.backends)]
    rows = []
    for backends in calls:
        if in_child:
            try:
                measured = {backends[0]: measure_in_child(benchmark.name, case, backends[0], ctx.args, device.type,
                                                          ctx.warmup, ctx.repeats)}
            except ChildFailed as error:
                measured = {backends[0]: {"status": status_of(error)}}
        else:
            measured = measure_guarded(benchmark, case, backends, ctx)
        for backend in backends:
            rows.append(dict(case, backend=backend, **measured[backend]))
        free_memory(device)
    ctx.end_case()
    free_memory(device)
    return add_speedups(rows, benchmark.baseline, benchmark.compare)


def run_benchmark(benchmark, args, device, warmup, repeats, clock=time.perf_counter):
    """Plan, measure every case, summarise, print, write the JSON; returns the payload."""
    try:
        plan = benchmark.plan(args, device)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if benchmark.baseline not in plan.backends:
        raise RuntimeError(f"{benchmark.name}: the baseline backend {benchmark.baseline!r} is not among the "
                         f"backends to measure {plan.backends}")
    header = device_header(device)
    memory_method = benchmark.memory_method.get(device.type)
    print(format_header(header, warmup, repeats, memory_method), flush=True)
    for note in plan.notes:
        print(note)
    ctx = Context(device, warmup, repeats, args, clock=clock)
    path = args.output or os.path.join(RESULTS_DIR, benchmark.output(header))
    rows = []
    payload = dict(header, benchmark=benchmark.name, complete=False, warmup=warmup, repeats=repeats,
                   baseline=benchmark.baseline, backends=plan.backends, memory_method=memory_method,
                   config=plan.config, not_measured=plan.not_measured)
    payload[benchmark.results_key] = rows
    with benchmark.setup(args, ctx) if benchmark.setup else contextlib.nullcontext() as state:
        ctx.state = state
        for case in plan.cases:
            case_rows = measure_case(benchmark, case, plan, ctx)
            rows += case_rows
            for row in case_rows:
                print(format_row(row, benchmark.columns, benchmark.status_column), flush=True)
            # on disk after every case, "complete": false until the end: a run that is stopped or
            # fails later (a long --find-max-size search in the summary) keeps what it measured
            save_json(path, dict(payload, load_average_at_end=os.getloadavg()[0]))
        print(format_table(rows, benchmark.columns, benchmark.status_column))
        for backend, reason in plan.not_measured.items():
            print(f"{backend}: not measured ({reason})")
        if benchmark.summarize:
            payload.update(benchmark.summarize(rows, plan, ctx))
    payload.update(complete=True, load_average_at_end=os.getloadavg()[0])
    save_json(path, payload)
    print(f"wrote {path}")
    return payload
