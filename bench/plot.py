"""Plots of one attention benchmark result: ``python -m bench.plot [--input PATH] [--out-dir DIR]``,
or of a held-out study's result: ``python -m bench.plot --study results/study/study.json``.

Reads a JSON written by the ``attention`` benchmark (bench/attention.py through bench/harness.py:
a header with ``device``, ``device_type``, ``git``, ``config``, ``memory_method`` and the rows under
``results``, one per (size, dtype, preset, backend) with ``status``, ``forward_backward_ms`` and
``peak_bytes``) and writes two PNGs to ``docs/img/``:

- ``<json name>-time.png``: median forward+backward time against the feature-map side S (S x S
  positions), log y;
- ``<json name>-memory.png``: peak memory of forward+backward against S, log y.

Each has one panel per (dtype, preset) and one line per backend (reference, cpp, triton, cuda, then
any other); a comparison row (backend ``sdpa``, or a row whose ``comparison`` field is set: a
baseline from outside this project) is drawn dashed. Rows whose status is not ``ok`` have no point
and are listed under the plot. The title names the source file, the device and the git revision.
The images carry no timestamp or software version, so the same JSON gives the same bytes.

With ``--study PATH`` it reads a ``study.json`` that ``sgan study`` wrote and draws its plot
(sgan.experiments.study.plot: Table II, seed IoU per class, Table III) into ``<PATH's stem>.png``
beside it, or in ``--out-dir`` when given.

Without ``--input`` the newest CPU attention result in bench/results/ is used (by the header's
``started_at``, then by file modification time, then by name). A file that is not such a result
gives one line, ``bench.plot: error: <file>: ...``, and exit status 2.
"""
import argparse
import glob
import json
import math
import os
import sys

from sgan.utils.io import atomic_writer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO_ROOT, "bench", "results")
DEFAULT_OUT_DIR = os.path.join(REPO_ROOT, "docs", "img")
BACKEND_ORDER = ("reference", "cpp", "triton", "cuda")
COMPARISON_BACKENDS = ("sdpa",)
# One fixed colour per backend, so a backend looks the same in every image.
COLOURS = {"reference": "#444444", "cpp": "#1f77b4", "triton": "#d62728", "cuda": "#2ca02c", "sdpa": "#9467bd"}
OTHER_COLOURS = ("#ff7f0e", "#8c564b", "#e377c2", "#17becf")
PANEL_SIZE = (5.5, 4.8)  # inches per (dtype, preset) panel; the figure is one row of panels
DPI = 100
MIB = 2 ** 20
METRICS = {
    "time": ("forward_backward_ms", "forward+backward, median ms", 1.0),
    "memory": ("peak_bytes", "peak memory of forward+backward, MiB", 1.0 / MIB),
}


class PlotInputError(ValueError):
    """The input file is not an attention benchmark result; the message says what was expected."""


def is_comparison(row):
    """True for a row measured as an outside baseline (``sdpa``, or a set ``comparison`` field)."""
    return bool(row.get("comparison")) or row.get("backend") in COMPARISON_BACKENDS


def load_result(path):
    """The parsed JSON of an attention result, its rows checked; raises PlotInputError otherwise."""
    try:
        with open(path, encoding="utf-8") as stream:
            payload = json.load(stream)
    except OSError as error:
        raise PlotInputError(f"cannot read it: {error.strerror or error}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PlotInputError(f"expected JSON, got a parse error: {error}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("results"), list):
        raise PlotInputError("expected an object with a 'results' list (the attention benchmark's JSON), "
                             f"got {type(payload).__name__} without one")
    if payload.get("benchmark", "attention") != "attention":
        raise PlotInputError(f"expected an 'attention' benchmark result, got benchmark {payload['benchmark']!r}")
    for index, row in enumerate(payload["results"]):
        missing = [key for key in ("size", "dtype", "preset", "backend", "status")
                   if not isinstance(row, dict) or key not in row]
        if missing:
            raise PlotInputError(f"results[{index}]: expected the fields size, dtype, preset, backend, status; "
                                 f"missing {', '.join(missing)}")
        if not isinstance(row["size"], int) or row["size"] < 1:
            raise PlotInputError(f"results[{index}].size: expected a positive integer, got {row['size']!r}")
        if row["status"] == "ok":
            for key in ("forward_backward_ms", "peak_bytes"):
                value = row.get(key)
                if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value)
                                          or value <= 0):
                    raise PlotInputError(f"results[{index}].{key}: expected a positive number, got {value!r}")
    if not any(row["status"] == "ok" for row in payload["results"]):
        raise PlotInputError("expected at least one row with status 'ok', got none")
    return payload


def backend_order(names):
    """The project's backends in their usual order, then the others (comparisons last) by name."""
    known = [name for name in BACKEND_ORDER if name in names]
    return known + sorted(name for name in names if name not in BACKEND_ORDER)


def series(rows, key):
    """{(dtype, preset): {backend: [(size, value), ...] sorted by size}} of the ok rows that have ``key``.

    rows: the ``results`` rows of one attention JSON; backends of a panel keep backend_order.
    """
    panels = {}
    for row in rows:
        if row["status"] != "ok" or row.get(key) is None:
            continue
        panel = panels.setdefault((row["dtype"], row["preset"]), {})
        panel.setdefault(row["backend"], []).append((row["size"], row[key]))
    return {panel: {backend: sorted(lines[backend]) for backend in backend_order(lines)}
            for panel, lines in sorted(panels.items())}


def not_plotted(rows):
    """One short text per row that has no point: its backend, size, dtype, preset and status."""
    return [f"{row['backend']} {row['size']}² {row['dtype']} {row['preset']}: {str(row['status'])[:70]}"
            for row in rows if row["status"] != "ok"]


def source_name(path):
    """The input's path relative to the repository when it lies inside it, else as given."""
    absolute = os.path.abspath(path)
    inside = os.path.commonpath([absolute, REPO_ROOT]) == REPO_ROOT
    return os.path.relpath(absolute, REPO_ROOT) if inside else path


def draw(payload, source, metric, out_path):
    """Write one PNG of ``metric`` ("time" or "memory") of ``payload``'s rows to ``out_path``."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    key, label, scale = METRICS[metric]
    rows = payload["results"]
    panels = series(rows, key)
    sizes = sorted({row["size"] for row in rows})
    extra = iter(OTHER_COLOURS)
    colours = {}
    columns = max(len(panels), 1)
    figure, axes = pyplot.subplots(1, columns, figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1]), squeeze=False)
    for axis, ((dtype, preset), lines) in zip(axes[0], panels.items()):
        for backend, points in lines.items():
            comparison = any(is_comparison(r) for r in rows if r["backend"] == backend)
            colour = colours.setdefault(backend, COLOURS.get(backend) or next(extra, "#000000"))
            axis.plot([s for s, _ in points], [v * scale for _, v in points], marker="o", color=colour,
                      linestyle="--" if comparison else "-",
                      label=f"{backend} (comparison)" if comparison and "(comparison)" not in backend else backend)
        axis.set_yscale("log")
        axis.set_xticks(sizes, [f"{s}²" for s in sizes])
        axis.set_xlabel("feature map S × S")
        axis.set_title(f"{dtype}, preset {preset}", fontsize=10)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    axes[0][0].set_ylabel(label)
    if not panels:
        axes[0][0].text(0.5, 0.5, f"no row has {key}", ha="center", va="center", transform=axes[0][0].transAxes)
    config = payload.get("config") or {}
    shape = ", ".join(f"{name} {config[field]}" for name, field in
                      (("B", "batch"), ("C", "channels"), ("Ck", "key_channels"), ("repeats", "repeats"))
                      if field in config)
    figure.suptitle(f"attention, {label}: {payload.get('device', 'device not recorded')} "
                    f"({payload.get('device_type', '?')}), git {payload.get('git') or 'not recorded'}", fontsize=11)
    caption = [f"source: {source}" + (f"; {shape}" if shape else "")]
    if metric == "memory" and payload.get("memory_method"):
        caption.append(f"memory: {payload['memory_method']}")
    missing = not_plotted(rows)
    if missing:
        caption.append("not plotted: " + "; ".join(missing[:4]) + (f"; and {len(missing) - 4} more"
                                                                  if len(missing) > 4 else ""))
    figure.text(0.01, 0.01, "\n".join(caption), fontsize=8, va="bottom", ha="left")
    figure.tight_layout(rect=(0, 0.04 * len(caption) + 0.02, 1, 0.95))
    with atomic_writer(out_path, "wb") as stream:
        figure.savefig(stream, format="png", dpi=DPI, metadata={"Software": None})
    pyplot.close(figure)
    return out_path


def newest_cpu_result(folder=RESULTS_DIR):
    """Path of the newest CPU attention result in ``folder`` (see the module docstring); None if none."""
    candidates = []
    for path in glob.glob(os.path.join(folder, "cpu-*.json")):
        try:
            payload = load_result(path)
        except PlotInputError:
            continue
        if payload.get("device_type", "cpu") == "cpu":
            candidates.append((str(payload.get("started_at", "")), os.path.getmtime(path), path))
    return max(candidates)[2] if candidates else None


def plot(path, out_dir=DEFAULT_OUT_DIR):
    """Write the time and memory PNGs of the result at ``path`` to ``out_dir``; returns their paths."""
    try:
        payload = load_result(path)
    except PlotInputError as error:
        raise PlotInputError(f"{path}: {error}") from None
    stem = os.path.splitext(os.path.basename(path))[0]
    return [draw(payload, source_name(path), metric, os.path.join(out_dir, f"{stem}-{metric}.png"))
            for metric in METRICS]


def plot_study(path, out_dir=None):
    """The study plot of the study.json at ``path``; 0, or 2 after one line for a file that is not one."""
    from sgan.experiments.study import plot_results
    out = os.path.join(out_dir or os.path.dirname(os.path.abspath(path)),
                       os.path.splitext(os.path.basename(path))[0] + ".png")
    try:
        with open(path) as stream:
            results = json.load(stream)
        if not isinstance(results, dict) or not {"summary", "table3"} <= set(results):
            raise ValueError("expected a study.json of `sgan study` (keys summary and table3)")
        plot_results(results, out)
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as error:
        print(f"bench.plot: error: {path}: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__.splitlines()[0])
    parser.add_argument("--input", help="an attention benchmark JSON (default: the newest CPU one in bench/results)")
    parser.add_argument("--study", help="a study.json of `sgan study` to plot instead (the PNG goes beside it)")
    parser.add_argument("--out-dir", default=None, help="where the PNGs go (default: docs/img; --study: beside it)")
    args = parser.parse_args(argv)
    if args.study:
        return plot_study(args.study, args.out_dir)
    path = args.input or newest_cpu_result()
    args.out_dir = args.out_dir or DEFAULT_OUT_DIR
    try:
        if path is None:
            raise PlotInputError(f"{RESULTS_DIR}: expected a CPU attention result (cpu-*.json), found none")
        written = plot(path, args.out_dir)
    except PlotInputError as error:
        print(f"bench.plot: error: {error}", file=sys.stderr)
        return 2
    for out in written:
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
