"""What produced an output: the record each step stores beside its outputs (docs/design.md §5, re-runs).

A record is a JSON-able dict ``{"format", "step", "settings", "inputs"}``:

- ``settings``: the resolved config values that decide the output (:func:`settings_of`: whole
  sections, less the keys that only decide how it is computed or reported, such as
  ``checkpoint_every``, ``log_every`` or worker counts);
- ``inputs``: name -> fingerprint of every file or folder the step read (:func:`fingerprint`):
  a content hash (SHA-256) for single files (checkpoints, weights, labels.json, list files) and a
  hash of the names, sizes and modification times of the files of a folder or file set (images,
  saliency maps, seeds, predictions: thousands of files, so no content hash).

A step compares the record it would write with the one stored (:func:`changes`) and redoes its work
when they differ, logging one line that names what changed; it skips only when they agree and
``overwrite`` is off (:func:`up_to_date`). Records live in the outputs themselves: a ``"record"``
entry of a checkpoint or a JSON output, or the ``.done.json`` marker of an output folder.
"""
import hashlib
import os

from sgan.utils.io import load_json, remove_done_marker, save_json, write_done_marker
from sgan.utils.logging import get_logger

RECORD_FORMAT = "sgan-record-1"
# keys that change how a step runs or reports, never what it writes (checkpointing: the same gradients
# to the last bit, tests/pipeline/test_compute_settings.py)
EXECUTION_KEYS = frozenset({"checkpoint_every", "log_every", "crf_processes", "timing_file", "checkpointing"})
_HASH_CACHE = {}   # (path, size, mtime_ns) -> sha256 hex of the content


def _stat_key(path):
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def content_hash(path):
    """SHA-256 hex digest of a file's bytes (cached per path, size and modification time)."""
    key = (os.path.abspath(path),) + _stat_key(path)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


def files_fingerprint(paths):
    """Hash of (name, size, mtime) of the given files, in order; a missing file counts as missing."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            size, mtime = _stat_key(path)
        except FileNotFoundError:
            size, mtime = -1, -1
        digest.update(f"{os.path.basename(path)}\0{size}\0{mtime}\n".encode())
    return "files:" + digest.hexdigest()


def folder_fingerprint(folder, ids=None, suffix=".png"):
    """files_fingerprint of ``<folder>/<id><suffix>`` for ``ids`` (all files with ``suffix`` when None)."""
    if ids is None:
        ids = sorted(name[:-len(suffix)] for name in os.listdir(folder) if name.endswith(suffix)) \
            if os.path.isdir(folder) else []
    return files_fingerprint([os.path.join(folder, image_id + suffix) for image_id in ids])


def fingerprint(path):
    """Content hash of a file, or None when it does not exist (a folder: use folder_fingerprint)."""
    return content_hash(path) if os.path.isfile(path) else None


def settings_of(cfg, *names, root_keys=("seed",)):
    """Settings for a record: ``"section"`` takes a whole section less EXECUTION_KEYS,
    ``"section.key"`` one key; ``root_keys`` are top-level keys. Returns {section: {key: value}}."""
    settings = {key: cfg[key] for key in root_keys}
    for name in names:
        section, _, key = name.partition(".")
        values = cfg[section].to_dict()
        chosen = {key: values[key]} if key else {k: v for k, v in values.items() if k not in EXECUTION_KEYS}
        settings.setdefault(section, {}).update(chosen)
    return settings


def labels_fingerprint(labels, ids):
    """Hash of the image-level labels of ``ids`` (what a training step reads of labels.json)."""
    text = "\n".join(f"{image_id} {' '.join(map(str, labels[image_id]))}" for image_id in ids)
    return "labels:" + hashlib.sha256(text.encode()).hexdigest()


def make_record(step, settings, inputs):
    """The record of one output: step name, settings (JSON-able) and input fingerprints."""
    return {"format": RECORD_FORMAT, "step": step, "settings": settings, "inputs": dict(inputs)}


def _flatten(value, prefix=""):
    if isinstance(value, dict):
        items = {}
        for key, sub in value.items():
            items.update(_flatten(sub, f"{prefix}{key}."))
        return items
    return {prefix[:-1]: value}


def changes(recorded, current):
    """Human-readable differences between a stored record and the current one ([] when they agree)."""
    if not isinstance(recorded, dict) or recorded.get("format") != RECORD_FORMAT:
        return ["it was written without a record of what produced it (an older version of sgan)"]
    found = []
    old, new = _flatten(recorded.get("settings", {})), _flatten(current["settings"])
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            found.append(f"{key} was {old.get(key, '<unset>')!r}, now {new.get(key, '<unset>')!r}")
    old_inputs, new_inputs = recorded.get("inputs", {}), current["inputs"]
    for name in sorted(set(old_inputs) | set(new_inputs)):
        if old_inputs.get(name) != new_inputs.get(name):
            found.append(f"input {name} changed" if name in old_inputs and name in new_inputs
                         else f"input {name} {'added' if name in new_inputs else 'no longer read'}")
    return found


def up_to_date(cfg, what, where, recorded, current):
    """True when ``where`` (an output) was made from the same settings and inputs: the step skips.

    Logs one line either way: "up to date" or "redoing, because <what changed>". ``recorded`` is
    None when there is no finished output (nothing logged then).
    """
    logger = get_logger("pipeline")
    if recorded is None:
        return False
    if cfg.overwrite:
        logger.info("%s: overwrite=true, redoing %s", what, where)
        return False
    found = changes(recorded, current)
    if not found:
        logger.info("%s: %s is up to date (same settings and inputs; overwrite=true to redo it)", what, where)
        return True
    shown = "; ".join(found[:6]) + (f"; and {len(found) - 6} more" if len(found) > 6 else "")
    logger.warning("%s: redoing %s, it was made from other settings or inputs: %s", what, where, shown)
    return False


def images_fingerprint(paths, ids):
    """files_fingerprint of the images of ``ids`` (``paths``: a sgan.data.voc.VOCPaths)."""
    return files_fingerprint([paths.image(image_id) for image_id in ids])


def optional_file(path):
    """Content hash of a file named by an optional setting (None when the setting is unset)."""
    return fingerprint(path) if path else None


PARTIAL_NAME = ".partial.json"


def start_partial(folder, record, overwrite, ids, suffix=".png"):
    """Begin (or continue) filling ``folder`` with one ``<id><suffix>`` file per id.

    An interrupted fill is continued (its files kept) only when the ``.partial.json`` it left
    records the same settings and inputs and ``overwrite`` is off; otherwise the files of ``ids``
    that are there are removed first, so a folder never mixes the outputs of two runs. Returns
    whether the fill continues. Call on one process (rank 0); :func:`finish_partial` at the end.
    """
    marker = os.path.join(folder, PARTIAL_NAME)
    previous = load_json(marker) if os.path.isfile(marker) else None
    continuing = not overwrite and previous is not None and not changes(previous, record)
    os.makedirs(folder, exist_ok=True)
    remove_done_marker(folder)
    if not continuing:
        stale = [os.path.join(folder, image_id + suffix) for image_id in ids]
        stale = [path for path in stale if os.path.isfile(path)]
        for path in stale:
            os.remove(path)
        if stale:
            get_logger("pipeline").info("%s: removed %d files of an earlier run made from other settings or "
                                        "inputs", folder, len(stale))
    save_json(marker, record)
    return continuing


def finish_partial(folder, record):
    """Mark ``folder`` complete (done marker with ``record``) and drop its ``.partial.json``."""
    write_done_marker(folder, record)
    marker = os.path.join(folder, PARTIAL_NAME)
    if os.path.isfile(marker):
        os.remove(marker)


def reusable_json(cfg, what, path, record):
    """The JSON output at ``path`` (a dict with a "record" entry) when it is up to date with
    ``record`` (see :func:`up_to_date`), else None: the step computes it again."""
    if not os.path.isfile(path):
        return None
    stored = load_json(path)
    return stored if up_to_date(cfg, what, path, stored.get("record"), record) else None
