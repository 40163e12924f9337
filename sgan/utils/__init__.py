"""Utilities shared by the steps: atomic file writes, logging, progress bars, seeding."""
from sgan.utils.io import (
    atomic_write_text,
    atomic_writer,
    load_json,
    read_done_marker,
    remove_done_marker,
    save_json,
    save_png,
    save_torch,
    write_done_marker,
)
from sgan.utils.logging import get_logger, setup_logging
from sgan.utils.progress import progress
from sgan.utils.seeding import derive_seed, seed_everything

__all__ = [
    "atomic_write_text",
    "atomic_writer",
    "derive_seed",
    "get_logger",
    "load_json",
    "progress",
    "read_done_marker",
    "remove_done_marker",
    "save_json",
    "save_png",
    "save_torch",
    "seed_everything",
    "setup_logging",
    "write_done_marker",
]
