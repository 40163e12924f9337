"""Progress of long loops: a tqdm bar on a terminal, log lines otherwise; silent on DDP ranks other
than 0 and when SGAN_NO_PROGRESS=1.

When stderr is not a terminal (output piped or redirected to a file), a carriage-return bar would
write an overwritten line per update into the file; instead the ``sgan.progress`` logger (terminal
and ``sgan.log``) gets a line at most every SGAN_PROGRESS_INTERVAL seconds (default 10) and one
when the loop ends.
"""
import math
import os
import sys
import time

from tqdm.auto import tqdm

from sgan.utils.logging import get_logger

DEFAULT_INTERVAL_S = 10.0
LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def log_interval():
    """Seconds between progress log lines: SGAN_PROGRESS_INTERVAL, else DEFAULT_INTERVAL_S."""
    raw = os.environ.get("SGAN_PROGRESS_INTERVAL")
    if raw is None:
        return DEFAULT_INTERVAL_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"SGAN_PROGRESS_INTERVAL: expected a positive number of seconds, got {raw!r}")
    return seconds


def _stderr_is_terminal():
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


class LogProgress:
    """The part of tqdm's interface the steps use (iterate, ``update``, ``set_postfix``, ``close``),
    written as a log line every ``interval`` seconds and once at the end."""

    def __init__(self, iterable=None, total=None, desc=None, initial=0, unit="it", interval=DEFAULT_INTERVAL_S):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit, self.interval = iterable, total, desc or "", unit, interval
        self.n = self.initial = initial
        self.postfix = None
        self.started = self.logged = time.monotonic()
        self.closed = False
        self.logger = get_logger("progress")

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n=1):
        self.n += n
        now = time.monotonic()
        if now - self.logged >= self.interval:
            self._log(now)

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        """Values shown after the rate, like tqdm's (``refresh`` is accepted and ignored)."""
        values = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items()) or None

    def close(self):
        if not self.closed:
            self.closed = True
            self._log(time.monotonic())

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _log(self, now):
        self.logged = now
        self.logger.info("%s", tqdm.format_meter(self.n, self.total, now - self.started, prefix=self.desc,
                                                 unit=self.unit, postfix=self.postfix, initial=self.initial,
                                                 bar_format=LINE_FORMAT))


def progress(iterable=None, total=None, desc=None, rank=0, initial=0, unit="it"):
    """A progress bar over ``iterable`` (or updated by hand up to ``total``); use
    ``bar.set_postfix(loss=...)`` for the running loss (the speed is shown anyway)."""
    disable = rank != 0 or os.environ.get("SGAN_NO_PROGRESS", "0") == "1"
    if not disable and not _stderr_is_terminal():
        return LogProgress(iterable, total=total, desc=desc, initial=initial, unit=unit, interval=log_interval())
    return tqdm(iterable, total=total, desc=desc, initial=initial, unit=unit, disable=disable,
                dynamic_ncols=True, leave=True)
