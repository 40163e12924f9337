"""Collect benchmark JSON files into one, under a name each (bench/gpu_run.sh: few files come back
from a GPU machine, so every benchmark of a session goes into one results file as it finishes).

    python -m bench.collect RESULTS NAME PATH

Reads PATH (one benchmark's JSON, as bench/run.py writes it) and stores it as RESULTS[NAME],
keeping what RESULTS already holds; RESULTS is rewritten atomically, so a run cut at any point
leaves the last complete version. Exit status 2, with one line, when PATH is missing or not JSON.
"""
import json
import os
import sys

from sgan.utils.io import load_json, save_json


def collect(results_path, name, path):
    """Add the JSON at ``path`` to the dict at ``results_path`` (made if missing) under ``name``."""
    payload = load_json(path)
    results = load_json(results_path) if os.path.exists(results_path) else {}
    results[name] = payload
    save_json(results_path, results)
    return results


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print("usage: python -m bench.collect RESULTS NAME PATH", file=sys.stderr)
        return 2
    results_path, name, path = argv
    try:
        collect(results_path, name, path)
    except FileNotFoundError:
        print(f"python -m bench.collect: {path}: no such file (the benchmark wrote no JSON)", file=sys.stderr)
        return 2
    except json.JSONDecodeError as error:
        print(f"python -m bench.collect: {path}: not JSON ({error})", file=sys.stderr)
        return 2
    print(f"{results_path}: {name} added")
    return 0


if __name__ == "__main__":
    sys.exit(main())
