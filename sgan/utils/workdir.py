"""The work dir of one CLI command: created and checked writable before any work, and locked.

:func:`locked_work_dir` is taken by each top-level ``sgan`` command that writes into the work dir
(every step, ``run``, ``demo``, ``study``; not ``config`` or ``steps``), so two runs never share one:
the second refuses in one line naming the holder. The lock is ``fcntl.flock`` on
``<work_dir>/.sgan.lock``, which the kernel releases when its holder exits, however it exits
(SIGKILL included); the file holds ``<pid> <host>`` of the holder, for the message, and is emptied
on a normal exit, so a pid still written there when the lock is free names a run that was killed:
the new run takes the lock over with a warning. The steps that the demo and the study chain run in
the same process under their command's lock. Under torchrun, rank 0 takes it for the whole run.
"""
import contextlib
import errno
import fcntl
import os
import socket
import sys

from sgan.utils.io import pid_alive

LOCK_NAME = ".sgan.lock"


def _host():
    return socket.gethostname() or "localhost"


def create_work_dir(work_dir):
    """Create ``work_dir`` (and its parents) unless it exists; a one-line ValueError naming it when
    it cannot be a folder (a file there or above it) or cannot be created (read-only, permissions)."""
    try:
        os.makedirs(work_dir, exist_ok=True)
    except FileExistsError:
        raise ValueError(f"work_dir: {work_dir} is a file, expected a folder (or a path where one can be "
                         "created); set work_dir to another path") from None
    except NotADirectoryError:
        raise ValueError(f"work_dir: cannot create {work_dir}: a part of its path is a file, not a folder") from None
    except OSError as error:
        raise ValueError(f"work_dir: cannot create {work_dir}: {error.strerror}") from None


def _read_holder(handle):
    """(pid, host) written in the lock file open as ``handle``, or None when it holds none."""
    os.lseek(handle, 0, os.SEEK_SET)
    fields = os.read(handle, 4096).decode("utf-8", "replace").split()
    if len(fields) >= 2 and fields[0].isdigit():
        return int(fields[0]), fields[1]
    return None


@contextlib.contextmanager
def locked_work_dir(work_dir):
    """Hold the lock of ``work_dir`` (created if needed) for the block.

    ValueError (one line) when the work dir cannot be created or written, or when another run holds
    the lock: it names the holder's pid and host and the lock file. A lock file naming a process of
    this host that is gone (a killed run) is taken over with a warning on stderr; on a file system
    without flock the block runs unlocked, with a warning. Ranks other than 0 under torchrun only
    check the folder: rank 0 holds the lock for the run.
    """
    create_work_dir(work_dir)
    path = os.path.join(work_dir, LOCK_NAME)
    try:
        handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as error:
        raise ValueError(f"work_dir: {work_dir} is not writable: cannot create {path}: {error.strerror}") from None
    if int(os.environ.get("RANK", 0)) != 0:
        os.close(handle)
        yield
        return
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                holder = _read_holder(handle)
                who = f"pid {holder[0]} on host {holder[1]}" if holder else "a process that has not written its pid"
                raise ValueError(f"work_dir: {work_dir} is in use by another sgan run ({who}, lock file {path}); "
                                 "wait for it to finish or set another work_dir") from None
            print(f"sgan: warning: cannot lock {path} ({error.strerror}: a file system without locks); a second "
                  "run started on this work dir would not be stopped", file=sys.stderr)
        previous = _read_holder(handle)
        if previous and previous[1] == _host() and previous[0] != os.getpid() and not pid_alive(previous[0]):
            print(f"sgan: warning: taking over {path}, left by pid {previous[0]} on {previous[1]}, which is no "
                  "longer running (killed?)", file=sys.stderr)
        try:
            os.ftruncate(handle, 0)
            os.lseek(handle, 0, os.SEEK_SET)
            os.write(handle, f"{os.getpid()} {_host()}\n".encode())
        except OSError as error:
            raise ValueError(f"work_dir: {work_dir} is not writable: cannot write {path}: {error.strerror}") from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(handle, 0)   # a free lock naming no one: this run ended normally
    finally:
        os.close(handle)   # releases the flock
