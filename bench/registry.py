"""The registered benchmarks: each one a :class:`Benchmark`, run by bench/harness.py.

A benchmark module (bench/attention.py, bench/losses.py, bench/sgan_train.py, bench/seg_train.py,
bench/loaders.py, bench/inference.py)
calls :func:`register` at import; :func:`get` and :func:`names` import them all first.
"""
import dataclasses
import importlib
from typing import Callable, Optional

BENCHMARK_MODULES = ("bench.attention", "bench.losses", "bench.sgan_train", "bench.seg_train", "bench.loaders",
                     "bench.inference")
_REGISTRY = {}


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run measures, resolved from the arguments before any timing.

    config: settings recorded in the JSON; cases: list of dicts (the case fields of every row);
    backends: names, the baseline among them; not_measured: backend -> why it is left out;
    notes: lines printed under the header.
    """
    config: dict
    cases: list
    backends: list
    not_measured: dict = dataclasses.field(default_factory=dict)
    notes: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One benchmark.

    name: what ``python -m bench.run NAME`` takes; description: one line for ``--list``;
    baseline: the backend every speed-up is measured against;
    add_arguments(parser): its own command-line options (the harness adds --device, --warmup,
    --repeats, --threads, --output);
    plan(args, device) -> Plan: cases and backends (raises ValueError on a bad option);
    measure(case, backends, ctx) -> {backend: {metric: value}} (bench.harness.Context; raises
    bench.harness.Skip, out of memory or another error for all the backends of the call);
    compare: {metric: speed-up field}: each row gets baseline value / its value;
    columns: bench.harness.Column list of the printed table; status_column: the key of the column
    where a row that is not ok shows its status;
    warmup, repeats: defaults as {"cpu": n, "cuda": n};
    memory_method: {"cpu": text or None, "cuda": text}: what the memory figures are;
    output(header) -> file name in bench/results/ (header: bench.harness.device_header);
    results_key: the JSON key of the rows;
    one_backend_per_call: False to give measure all the backends of a case at once (to time them
    interleaved); cpu_memory: "rss" to measure each (case, backend) on the CPU in a child process
    and record its peak resident set size; setup(args, ctx): a context manager whose value becomes
    ctx.state for the whole run; summarize(rows, plan, ctx) -> extra JSON fields (and prints them).
    """
    name: str
    description: str
    baseline: str
    add_arguments: Callable
    plan: Callable
    measure: Callable
    compare: dict
    columns: list
    status_column: str
    warmup: dict
    repeats: dict
    memory_method: dict
    output: Callable
    results_key: str = "results"
    one_backend_per_call: bool = True
    cpu_memory: Optional[str] = None
    setup: Optional[Callable] = None
    summarize: Optional[Callable] = None

    def __post_init__(self):
        if not self.baseline:
            raise ValueError(f"benchmark {self.name!r}: a baseline backend is required")
        if not self.compare:
            raise ValueError(f"benchmark {self.name!r}: compare must name at least one metric")
        if self.cpu_memory not in (None, "rss"):
            raise ValueError(f"benchmark {self.name!r}: cpu_memory: expected None or 'rss', got {self.cpu_memory!r}")
        if self.status_column not in [column.key for column in self.columns]:
            raise ValueError(f"benchmark {self.name!r}: status_column {self.status_column!r} is not a column")


def register(benchmark):
    """Add ``benchmark`` under its name (a name registered twice is a programming error)."""
    if benchmark.name in _REGISTRY:
        raise ValueError(f"benchmark {benchmark.name!r} is registered twice")
    _REGISTRY[benchmark.name] = benchmark
    return benchmark


def _import_all():
    for module in BENCHMARK_MODULES:
        importlib.import_module(module)


def names():
    _import_all()
    return sorted(_REGISTRY)


def get(name):
    _import_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]
