"""``python -m bench.bench_losses ARGS`` is ``python -m bench.run losses ARGS`` (bench/losses.py)."""
import sys

from bench.run import main

if __name__ == "__main__":
    sys.exit(main(["losses", *sys.argv[1:]], prog="python -m bench.bench_losses"))
