"""``python -m bench.bench_sgan_train ARGS`` is ``python -m bench.run sgan_train ARGS`` (bench/sgan_train.py)."""
import sys

from bench.run import main

if __name__ == "__main__":
    sys.exit(main(["sgan_train", *sys.argv[1:]], prog="python -m bench.bench_sgan_train"))
