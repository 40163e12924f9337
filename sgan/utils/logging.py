"""Logging to ``<work_dir>/sgan.log`` and to the terminal (terminal on rank 0 only under DDP)."""
import logging
import os
import sys

LOGGER_NAME = "sgan"
LOG_NAME = "sgan.log"
# a record with this attribute set goes to the log files only (its text was printed already)
FILE_ONLY = "sgan_file_only"


def get_logger(name=None):
    """The package logger or a child of it (``get_logger("train")`` -> ``sgan.train``)."""
    return logging.getLogger(LOGGER_NAME if not name else f"{LOGGER_NAME}.{name}")


def setup_logging(work_dir=None, rank=0, level=logging.INFO):
    """Attach a terminal handler (rank 0) and a file handler ``<work_dir>/sgan.log`` (every rank;
    ranks > 0 write ``sgan.rank<r>.log``). Calling it again replaces the handlers."""
    logger = get_logger()
    logger.setLevel(level)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    prefix = f"[rank {rank}] " if rank else ""
    formatter = logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    if rank == 0:
        terminal = logging.StreamHandler(sys.stderr)
        terminal.setFormatter(formatter)
        terminal.addFilter(lambda record: not getattr(record, FILE_ONLY, False))
        logger.addHandler(terminal)
    if work_dir is not None:
        os.makedirs(work_dir, exist_ok=True)
        name = LOG_NAME if rank == 0 else f"sgan.rank{rank}.log"
        log_file = logging.FileHandler(os.path.join(work_dir, name), encoding="utf-8")
        log_file.setFormatter(formatter)
        logger.addHandler(log_file)
    return logger


def print_and_log(text, name=None):
    """Print ``text`` (a table, findings) to stdout and write it to the log files, not again to the terminal."""
    print(text, flush=True)
    get_logger(name).info("%s", text, extra={FILE_ONLY: True})
