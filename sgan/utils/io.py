"""Atomic file writes: everything goes to a temporary file in the target's folder, then os.replace.

A reader (or a resumed run after a crash) therefore sees either the old file or the complete new
one, never a truncated file. ``save_torch`` for checkpoints (read back by ``load_torch``, which
accepts tensors and plain values only, so a shared file cannot run code when loaded), ``save_json``, ``save_png`` for
seeds/predictions (PIL images; palette PNGs keep their palette), ``atomic_write_text`` for the rest.
Done markers (``write_done_marker``) record that a step finished an output folder, with the config
that produced it, so steps can skip finished work.
"""
import contextlib
import json
import os
import pickle
import re
import tempfile
import warnings

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
