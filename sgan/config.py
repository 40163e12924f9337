"""Experiment configuration: one YAML file per experiment, ``key.sub=value`` overrides, validation.

Schema. A config is a mapping of *sections*, each declared with its defaults, choices and bounds
through :func:`register_section`. This module holds the mechanism only and declares no section:
the pipeline's schema (the root keys, the shared ``data`` and ``model`` sections and each step's
section, all plain data in the modules that use them) is registered explicitly from the step
table by :func:`sgan.pipeline.register_sections`, which :func:`sgan.pipeline.load_config` calls. ::

    register_section("train_seg", {"iterations": 12000, "lr": 1e-3, "schedule": "step"},
                     choices={"schedule": ("step", "poly")},
                     bounds={"iterations": "[1, inf)", "lr": "(0, inf)"},
                     doc="stage 2 training (DeepLab-ASPP on the seeds)")

The root section (name ``""``) holds the keys at the top level of the YAML file.

Reading (:func:`read_config`): the YAML file laid over its ``_base_`` file (a path relative to it,
recursively). Resolving (:func:`resolve`): registered defaults <- that mapping <- ``key.sub=value``
overrides, each value parsed as YAML (safe loader; ``lr=1e-3`` is a float, ``scales=[1.0,0.75]`` a
list, ``weights=`` or ``weights=null`` is None). Validation collects every problem before raising one
``ValueError``: unknown sections and keys are named (with the closest known name), a value whose
type does not match its default's (int is accepted for a float; a default of None accepts
anything; a dict default is a free-form mapping), a value outside its declared choices and a
number outside its declared bounds (an interval such as ``"[1, inf)"`` or ``"[0, 1)"``; for a list,
every element), each named by its full dotted key.

Access: ``cfg.train_cam.lr`` or ``cfg["train_cam"]["lr"]``; :class:`Config` is a read-only dict.
:func:`save_resolved` writes ``config.resolved.yaml`` into the work dir with the git revision, the
command line and the time in its header, so every output directory says what produced it.
"""
import copy
import datetime
import difflib
import math
import os
import re
import subprocess
import sys

import yaml

ROOT = ""  # name of the root section: keys at the top level of the YAML file
RESOLVED_NAME = "config.resolved.yaml"

_SECTIONS = {}  # name -> {"defaults": dict, "choices": dict, "bounds": dict, "doc": str}


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 needs ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _yaml_load(text_or_stream):
    return yaml.load(text_or_stream, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def register_section(name, defaults, choices=None, doc="", bounds=None):
    """Declare a config section and its defaults.

    name: section name ("" for the top-level keys); defaults: mapping
    key -> default value; choices: mapping key -> allowed values; bounds: mapping key -> interval
    of allowed numbers, written ``"[low, high]"`` with ``(``/``)`` for an open end and ``inf`` for
    none (``"[1, inf)"``: at least 1; ``"[0, 1)"``), applied to every element of a list and not to
    None. Registering the same name again with identical content is a no-op (the schema is
    registered on every load); a different content is an error, so two declarations cannot
    silently fight over a section.
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    if not isinstance(defaults, dict) or not all(isinstance(k, str) for k in defaults):
        raise TypeError(f"defaults: expected a dict with str keys, got {defaults!r}")
    choices, bounds = dict(choices or {}), dict(bounds or {})
    for argument, keys in (("choices", choices), ("bounds", bounds)):
        unknown = sorted(set(keys) - set(defaults))
        if unknown:
            raise ValueError(f"{argument}: keys {unknown} of section {name!r} have no default")
    for key, allowed in choices.items():
        if defaults[key] not in allowed:
            raise ValueError(f"defaults: {name}.{key}={defaults[key]!r} is not one of its choices {allowed}")
    for key, interval in bounds.items():
        problems = _bound_problems(f"{name}.{key}", defaults[key], interval)
        if problems:
            raise ValueError(f"defaults: {problems[0]}")
    entry = {"defaults": copy.deepcopy(defaults), "choices": choices, "bounds": bounds, "doc": doc}
    if name in _SECTIONS and _SECTIONS[name] != entry:
        raise ValueError(f"section {name!r} is already registered with different defaults")
    _SECTIONS[name] = entry


_INTERVAL = re.compile(r"^([\[(])\s*(\S+?)\s*,\s*(\S+?)\s*([\])])$")


def _parse_interval(interval):
    """``"[1, inf)"`` -> (1.0, inf, low included, high included); ValueError for another form."""
    match = _INTERVAL.match(interval) if isinstance(interval, str) else None
    try:
        low, high = float(match.group(2)), float(match.group(3))
    except (AttributeError, ValueError):
        raise ValueError(f"bounds: expected an interval like '[1, inf)' or '(0, 1]', got {interval!r}") from None
    return low, high, match.group(1) == "[", match.group(4) == "]"


def _bound_problems(where, value, interval):
    """Messages for ``value`` (a number, None or a list of them) outside ``interval``."""
    low, high, low_included, high_included = _parse_interval(interval)
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [p for i, item in enumerate(value) for p in _bound_problems(f"{where}[{i}]", item, interval)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        above = value >= low if low_included else value > low
        below = value <= high if high_included else value < high
        if above and below:
            return []
    if high == math.inf:
        expected = f"{'>=' if low_included else '>'} {low:g}"
    else:
        expected = f"in {interval}"
    return [f"{where}: expected a number {expected}, got {value!r}"]


def sections():
    """Registered sections: name -> {"defaults", "choices", "bounds", "doc"} (a copy)."""
    return copy.deepcopy(_SECTIONS)


class Config(dict):
    """Read-only nested mapping with attribute access (``cfg.section.key``)."""

    def __init__(self, mapping=()):
        super().__init__({k: Config(v) if isinstance(v, dict) else v for k, v in dict(mapping).items()})

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}; known: {sorted(self)}") from None

    def _read_only(self, *args, **kwargs):
        raise TypeError("Config is read-only; build a new one with sgan.config.resolve(..., overrides)")

    __setitem__ = __delitem__ = __setattr__ = update = pop = popitem = clear = setdefault = _read_only

    def to_dict(self):
        """Plain nested dicts (for YAML/JSON dumps and checkpoints)."""
        return {k: v.to_dict() if isinstance(v, Config) else copy.deepcopy(v) for k, v in self.items()}

    def __deepcopy__(self, memo):
        return Config(self.to_dict())

    def __reduce__(self):  # picklable for DataLoader workers and spawned processes
        return (Config, (self.to_dict(),))


def parse_override(text):
    """``"a.b=value"`` -> (["a", "b"], parsed value). The value is parsed as YAML (safe loader)."""
    if not isinstance(text, str) or "=" not in text:
        raise ValueError(f"override: expected 'key=value' or 'section.key=value', got {text!r}")
    dotted, raw = text.split("=", 1)
    path = dotted.strip().split(".")
    if not all(path):
        raise ValueError(f"override: empty key in {text!r}")
    try:
        value = _yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ValueError(f"override {text!r}: the value is not valid YAML ({error})") from None
    return path, value


def _closest(name, known):
    match = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _type_problem(where, value, default):
    """A message when ``value`` does not fit the type of ``default``, else None."""
    if default is None or value is None:
        return None
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
    else:
        ok = isinstance(value, type(default))
    if ok:
        return None
    return f"{where}: expected {type(default).__name__} (like the default {default!r}), got {type(value).__name__} {value!r}"


def resolve(data=None, overrides=(), source="<dict>"):
    """Defaults <- ``data`` (a mapping, as read from YAML) <- ``overrides``; validated Config.

    Raises ValueError listing every unknown section/key and every bad value.
    """
    if ROOT not in _SECTIONS:
        raise RuntimeError("no config schema is registered: call sgan.pipeline.register_sections() first "
                           "(sgan.pipeline.load_config does)")
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of sections at the top level, got {type(data).__name__}")
    merged = {name: copy.deepcopy(entry["defaults"]) for name, entry in _SECTIONS.items() if name != ROOT}
    merged.update(copy.deepcopy(_SECTIONS[ROOT]["defaults"]))
    problems = []

    def assign(path, value, origin):
        head = path[0]
        if head in _SECTIONS[ROOT]["defaults"]:
            if len(path) != 1:
                problems.append(f"{origin}: {'.'.join(path)}: {head!r} is a top-level key, not a section")
                return
            merged[head] = value
            return
        if head not in _SECTIONS or head == ROOT:
            known = [n for n in _SECTIONS if n] + list(_SECTIONS[ROOT]["defaults"])
            problems.append(f"{origin}: unknown section or key {head!r}{_closest(head, known)}")
            return
        if len(path) == 1:
            if not isinstance(value, dict):
                problems.append(f"{origin}: section {head!r}: expected a mapping, got {type(value).__name__}")
                return
            for key, sub in value.items():
                assign([head, str(key)], sub, origin)
            return
        section = merged[head]
        key = path[1]
        if key not in section:
            problems.append(f"{origin}: unknown key {head}.{key}{_closest(key, section)}")
            return
        if len(path) > 2:
            if not isinstance(section[key], dict):
                problems.append(f"{origin}: {'.'.join(path)}: {head}.{key} is not a mapping")
                return
            target = section[key]
            for part in path[2:-1]:
                target = target.setdefault(part, {})
            target[path[-1]] = value
            return
        section[key] = value

    for key, value in data.items():
        assign([str(key)], value, source)
    for text in overrides:
        path, value = parse_override(text)
        assign(path, value, f"override {text!r}")

    for name, entry in _SECTIONS.items():
        values = merged if name == ROOT else merged[name]
        for key, default in entry["defaults"].items():
            where = key if name == ROOT else f"{name}.{key}"
            problem = _type_problem(where, values[key], default)
            if problem:
                problems.append(problem)
            elif key in entry["choices"] and values[key] not in entry["choices"][key]:
                problems.append(f"{where}: expected one of {list(entry['choices'][key])}, got {values[key]!r}")
            elif key in entry["bounds"]:
                problems += _bound_problems(where, values[key], entry["bounds"][key])
    if merged["work_dir"] is not None and not isinstance(merged["work_dir"], str):
        problems.append(f"work_dir: expected a path (str), got {type(merged['work_dir']).__name__} "
                        f"{merged['work_dir']!r}")
    if problems:
        raise ValueError("invalid configuration:\n  " + "\n  ".join(problems))
    if merged["work_dir"]:
        # resolved once, against the directory the command runs in: every work-dir-relative path
        # is then joined exactly once (sgan.pipeline.work_path leaves absolute paths alone)
        merged["work_dir"] = os.path.abspath(os.path.expanduser(merged["work_dir"]))
    return Config(merged)


def read_config(path):
    """The mapping in the YAML file ``path`` laid over its ``_base_`` files (not resolved yet)."""
    if not os.path.isfile(path):
        raise ValueError(f"config: file {path!r} does not exist")
    return _read_with_bases(path)


def _deep_merge(base, update):
    """``base`` with ``update`` laid over it: mappings merged key by key, recursively; anything else replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_with_bases(path, chain=()):
    """The mapping in the YAML file ``path``, laid over its ``_base_`` file (and that one's, recursively).

    ``_base_: other.yaml`` names a path relative to the including file's folder; a cycle or a
    missing base file is a ValueError naming the files.
    """
    with open(path, encoding="utf-8") as handle:
        try:
            data = _yaml_load(handle)
        except yaml.YAMLError as error:
            raise ValueError(f"config {path!r}: not valid YAML ({error})") from None
    data = {} if data is None else data
    if not isinstance(data, dict) or "_base_" not in data:
        return data
    data = dict(data)
    base = data.pop("_base_")
    if not isinstance(base, str) or not base:
        raise ValueError(f"config {path!r}: _base_: expected the path of a YAML file, got {base!r}")
    base_path = os.path.normpath(os.path.join(os.path.dirname(path), os.path.expanduser(base)))
    chain = chain + (os.path.realpath(path),)
    if os.path.realpath(base_path) in chain:
        cycle = " -> ".join([*chain, os.path.realpath(base_path)])
        raise ValueError(f"config {path!r}: _base_ {base!r} makes a cycle: {cycle}")
    if not os.path.isfile(base_path):
        raise ValueError(f"config {path!r}: _base_ {base!r}: file {base_path} does not exist")
    parent = _read_with_bases(base_path, chain)
    if not isinstance(parent, dict):
        raise ValueError(f"config {base_path!r}: expected a mapping of sections at the top level, "
                         f"got {type(parent).__name__}")
    return _deep_merge(parent, data)


def git_revision():
    """``<sha>`` (``<sha>-dirty`` with uncommitted changes) of the source tree, or "unknown"."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def save_resolved(cfg, name=RESOLVED_NAME):
    """Write ``cfg`` to ``<work_dir>/<name>`` (atomically) with the git revision in the header."""
    from sgan.utils.io import atomic_write_text
    header = (f"# resolved by sgan at {datetime.datetime.now().isoformat(timespec='seconds')}\n"
              f"# git revision: {git_revision()}\n"
              f"# command: {' '.join(sys.argv)}\n")
    body = yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)
    path = os.path.join(cfg.work_dir, name)
    atomic_write_text(path, header + body)
    return path
