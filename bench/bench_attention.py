"""``python -m bench.bench_attention ARGS`` is ``python -m bench.run attention ARGS`` (bench/attention.py)."""
import sys

from bench.run import main

if __name__ == "__main__":
    sys.exit(main(["attention", *sys.argv[1:]], prog="python -m bench.bench_attention"))
