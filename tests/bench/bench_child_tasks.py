"""Functions that tests/bench/test_bench_harness.py runs in a child process (no torch: quick to start)."""

MIB = 2 ** 20


def allocate_and_touch(megabytes):
    """Hold ``megabytes`` MiB of written memory, return how many."""
    block = b"\x01" * (megabytes * MIB)
    return len(block) // MIB


def raise_value_error():
    raise ValueError("bad case\nmore detail")
