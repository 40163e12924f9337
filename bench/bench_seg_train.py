"""``python -m bench.bench_seg_train ARGS`` is ``python -m bench.run seg_train ARGS`` (bench/seg_train.py)."""
import sys

from bench.run import main

if __name__ == "__main__":
    sys.exit(main(["seg_train", *sys.argv[1:]], prog="python -m bench.bench_seg_train"))
