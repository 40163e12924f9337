"""Run one registered benchmark (bench/registry.py) through the harness (bench/harness.py).

    python -m bench.run --list
    python -m bench.run NAME [--device cpu|cuda] [--warmup W] [--repeats R] [--threads T]
                             [--output PATH] [the benchmark's own options]
    python -m bench.run NAME --help
"""
import argparse
import sys

import torch

from bench import harness, registry
from bench.harness import non_negative_int, positive_int


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``<prog>: error: <message>``, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(benchmark, prog):
    parser = _Parser(prog=prog, description=benchmark.description)
    common = parser.add_argument_group("harness options")
    common.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    common.add_argument("--warmup", type=non_negative_int, default=None,
                        help=f"untimed runs first (default {benchmark.warmup['cpu']} on CPU, "
                             f"{benchmark.warmup['cuda']} on CUDA)")
    common.add_argument("--repeats", type=positive_int, default=None,
                        help=f"timed runs (default {benchmark.repeats['cpu']} on CPU, "
                             f"{benchmark.repeats['cuda']} on CUDA)")
    common.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (torch.set_num_threads)")
    common.add_argument("--output", "--out", dest="output", default=None,
                        help="JSON path (default bench/results/<name>.json)")
    benchmark.add_arguments(parser.add_argument_group(f"{benchmark.name} options"))
    return parser


def list_benchmarks():
    lines = []
    for name in registry.names():
        benchmark = registry.get(name)
        lines.append(f"{name:12s} baseline {benchmark.baseline:10s} {benchmark.description}")
    return "\n".join(lines)


def main(argv=None, prog=None):
    """Run ``argv`` = [NAME, options...] (or --list); returns the exit status. ``prog``: how the
    benchmark's command is named in messages (default ``python -m bench.run NAME``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--list"]:
        print(list_benchmarks())
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(f"{__doc__.strip()}\n\nbenchmarks:\n{list_benchmarks()}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    try:
        benchmark = registry.get(name)
    except ValueError as error:
        print(f"python -m bench.run: error: {error}", file=sys.stderr)
        return 2
    parser = build_parser(benchmark, prog or f"python -m bench.run {name}")
    args = parser.parse_args(rest)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    warmup = benchmark.warmup[device.type] if args.warmup is None else args.warmup
    repeats = benchmark.repeats[device.type] if args.repeats is None else args.repeats
    try:
        harness.run_benchmark(benchmark, args, device, warmup, repeats)
    except harness.UsageError as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
