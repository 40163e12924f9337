"""Atomic file writes: everything goes to a temporary file in the target's folder, then os.replace.

A reader (or a resumed run after a crash) therefore sees either the old file or the complete new
one, never a truncated file. ``save_torch`` for checkpoints, ``save_json``, ``save_png`` for
seeds/predictions (PIL images; palette PNGs keep their palette), ``atomic_write_text`` for the rest.
Done markers (``write_done_marker``) record that a step finished an output folder, with the config
that produced it, so steps can skip finished work.
"""
import contextlib
import json
import os
import tempfile

import torch


@contextlib.contextmanager
def atomic_writer(path, mode="wb"):
    """Context manager yielding a file object; on success the file is renamed onto ``path``."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode: expected 'wb' or 'w', got {mode!r}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temp_path = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp_path)
        raise


def atomic_write_text(path, text):
    with atomic_writer(path, "w") as stream:
        stream.write(text)


def save_json(path, obj, indent=2):
    with atomic_writer(path, "w") as stream:
        json.dump(obj, stream, indent=indent, sort_keys=False)
        stream.write("\n")


def load_json(path):
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def save_torch(path, obj):
    """torch.save to ``path`` atomically (checkpoints)."""
    with atomic_writer(path, "wb") as stream:
        torch.save(obj, stream)


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
