"""Atomic file writes: everything goes to a temporary file in the target's folder, then os.replace.

A reader (or a resumed run after a crash) therefore sees either the old file or the complete new
one, never a truncated file. ``save_torch`` for checkpoints (read back by ``load_torch``, which
accepts tensors and plain values only, so a shared file cannot run code when loaded), ``save_json``, ``save_png`` for
seeds/predictions (PIL images; palette PNGs keep their palette), ``atomic_write_text`` for the rest.
Done markers (``write_done_marker``) record that a step finished an output folder, with the config
that produced it, so steps can skip finished work.

The temporary file is ``.<name>.<pid>@<host>.<random>.tmp`` beside the target, created like a plain
``open()`` would (mode 0666 less the umask), so the final file has the user's usual permissions. A
process killed while writing leaves it behind; :func:`remove_stale_temporaries` (run at every start)
deletes those whose writer is gone, telling them apart from a live writer's (another DDP rank, a
second run on the same work dir) by the pid and host in the name.
"""
import contextlib
import io
import json
import os
import pickle
import re
import secrets
import socket
import time
import warnings

import torch

from sgan.utils.logging import get_logger

TEMP_SUFFIX = ".tmp"
# .<name>.<pid>@<host>.<random>.tmp; <host> has no "@", so the last ".<digits>@" is the writer's pid.
TAGGED_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9._-]+)\.[0-9a-f]+\.tmp$")
# .<name>.<8 random chars>.tmp: tempfile.mkstemp's names, used by earlier versions of atomic_writer.
UNTAGGED_TEMP = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")
# A temporary whose writer cannot be checked (another host, an earlier version) is stale when it has
# not been written to for this long; no checkpoint or PNG takes a day to write.
STALE_AFTER_S = 24 * 3600


def _host_tag():
    """This machine's name, reduced to the characters TAGGED_TEMP accepts."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "localhost"


def _create_temporary(folder, name):
    """(file descriptor, path) of a new, empty temporary for ``name`` in ``folder``, mode 0666 & ~umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        path = os.path.join(folder, f".{name}.{os.getpid()}@{_host_tag()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue


class WriteError(OSError):
    """An output that could not be written (disk full, quota, read-only): the message names the
    file and the cause, in one line; the file that was there before is unchanged."""

    def __str__(self):
        return self.strerror   # the message alone, without OSError's "[Errno N]" prefix


def _os_error_in(error):
    """The OSError that ``error`` is or was raised from (torch.save reports a failed write as a
    RuntimeError chained to it), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _write_error(path, error):
    cause = error.strerror or str(error)
    return WriteError(error.errno, f"cannot write {path}: {cause}; the file there before, if any, is unchanged")


@contextlib.contextmanager
def atomic_writer(path, mode="wb"):
    """Context manager yielding a file object; on success the file is renamed onto ``path``.

    A write that fails with an OSError (also when torch.save wraps one) raises :class:`WriteError`
    naming ``path``; the temporary is removed and ``path`` keeps its previous content.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode: expected 'wb' or 'w', got {mode!r}")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        handle, temp_path = _create_temporary(folder, os.path.basename(path))
    except OSError as error:
        raise _write_error(path, error) from None
    try:
        with os.fdopen(handle, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_path, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp_path)
        cause = None if isinstance(error, WriteError) else _os_error_in(error)
        if isinstance(error, (OSError, RuntimeError)) and cause is not None:
            raise _write_error(path, cause) from None
        raise


def pid_alive(pid):
    """Whether process ``pid`` exists on this host (one owned by another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def is_stale_temporary(path):
    """True if ``path`` is an atomic_writer temporary that no running writer will finish: its
    writer (pid in the name, on this host) has exited, or it has not changed for STALE_AFTER_S."""
    name = os.path.basename(path)
    tagged = TAGGED_TEMP.match(name)
    if tagged is None and UNTAGGED_TEMP.match(name) is None:
        return False
    if tagged is not None and tagged["host"] == _host_tag() and not pid_alive(int(tagged["pid"])):
        return True
    try:
        age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:  # renamed or removed meanwhile
        return False
    return age > STALE_AFTER_S


def remove_stale_temporaries(folder):
    """Delete the stale atomic_writer temporaries under ``folder`` (symlinks not followed), logging
    what was freed; returns (count, bytes) removed."""
    count = size = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            if not name.endswith(TEMP_SUFFIX):
                continue
            path = os.path.join(parent, name)
            if not is_stale_temporary(path):
                continue
            with contextlib.suppress(FileNotFoundError):
                file_size = os.lstat(path).st_size
                os.remove(path)
                count, size = count + 1, size + file_size
    if count:
        get_logger("io").info("removed %d temporary file(s) (%.1f MB) left in %s by interrupted writes",
                              count, size / 1e6, folder)
    return count, size


def atomic_write_text(path, text):
    with atomic_writer(path, "w") as stream:
        stream.write(text)


def save_json(path, obj, indent=2):
    with atomic_writer(path, "w") as stream:
        json.dump(obj, stream, indent=indent, sort_keys=False)
        stream.write("\n")


def load_json(path):
    """The JSON value of ``path``; a UTF-8 byte-order mark (Windows editors write one) is skipped."""
    with open(path, encoding="utf-8-sig") as stream:
        return json.load(stream)


def save_torch(path, obj):
    """torch.save to ``path`` atomically (checkpoints)."""
    with atomic_writer(path, "wb") as stream:
        torch.save(obj, stream)


def save_torch_if_changed(path, obj):
    """torch.save to ``path`` atomically unless the file there already holds the same bytes, so that
    its modification time (and what records its content hash) changes only when its content does."""
    serialised = io.BytesIO()
    torch.save(obj, serialised)
    if os.path.isfile(path):
        with open(path, "rb") as existing:
            if existing.read() == serialised.getvalue():
                return path
    with atomic_writer(path, "wb") as stream:
        stream.write(serialised.getvalue())
    return path


def load_torch(path, what):
    """``torch.load(path, weights_only=True)`` on the CPU: tensors, dicts, lists, tuples, str, numbers.

    A file that needs the full unpickler (any other pickled object: a class, a function, a numpy
    scalar) is refused without running anything. Every failure is a one-line ValueError starting
    ``{what}: {path}``: what: what the file is for, e.g. "checkpoint" or "model.weights".
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the unpickler's protocol notes on a file refused anyway
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (zip, pickle and OS errors all mean: cannot use it)
        text = str(error)
        culprit = re.search(r"GLOBAL ([\w.]+)", text)
        if isinstance(error, pickle.UnpicklingError) and culprit:
            raise ValueError(f"{what}: {path} holds a pickled object ({culprit.group(1)}) beyond tensors "
                             "and plain values; refused, since loading it could run code") from None
        detail = re.search(r"Unsupported [^\n.]*", text) or re.search(r"[^\n]+", text)
        raise ValueError(f"{what}: {path} cannot be read as a torch file (truncated, or another format): "
                         f"{type(error).__name__} {detail.group(0) if detail else ''}".rstrip()) from None


def save_png(path, image):
    """Save a PIL image (``L``, ``P`` with its palette, ``RGB``) as PNG atomically."""
    with atomic_writer(path, "wb") as stream:
        image.save(stream, format="PNG")


DONE_NAME = ".done.json"


def write_done_marker(folder, info):
    """Mark ``folder`` as complete; ``info`` (JSON-able, e.g. the config section used) is stored."""
    save_json(os.path.join(folder, DONE_NAME), info)


def remove_done_marker(folder):
    """Unmark ``folder`` before redoing it, so a crash half-way does not leave it marked complete."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(folder, DONE_NAME))


def read_done_marker(folder):
    """The info stored by write_done_marker, or None when the folder is not marked complete."""
    path = os.path.join(folder, DONE_NAME)
    return load_json(path) if os.path.isfile(path) else None
