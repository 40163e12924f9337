"""Every third-party module the project imports is installed by one of its own install files.

A fresh machine has only what ``scripts/install.sh`` and ``requirements.txt`` install; a module that a
developer installed by hand makes the suite pass on that machine and fail on a new one (tests once
imported scipy, which no install file named). The scan is static: every ``import`` in ``sgan/``,
``kernels/``, ``bench/`` and ``tests/``, except those inside a ``try`` whose handler catches
``ImportError`` (an optional dependency), is mapped to its distribution through the installed
packages' metadata and looked up among the distributions the install files name.
"""
import ast
import importlib.metadata
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCANNED = ("sgan", "kernels", "bench", "tests")
INSTALL_FILES = ("requirements.txt", os.path.join("scripts", "install.sh"))
# Distributions whose import name is not the distribution's name, for modules absent from this
# environment (so that the metadata cannot say); installed ones are resolved from their metadata.
KNOWN_DISTRIBUTIONS = {"PIL": "pillow", "yaml": "pyyaml", "cv2": "opencv-python", "pydensecrf": "pydensecrf2"}


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them: ``PyYAML`` and ``pyyaml``, ``a_b`` and ``a-b``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def named_distributions(root: str) -> set[str]:
    """The distributions that the install files at ``root`` install: requirement lines of
    ``requirements.txt`` and the quoted requirements of ``pip install`` commands in ``scripts/install.sh``."""
    names = set()
    requirement = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
    for relative in INSTALL_FILES:
        path = os.path.join(root, relative)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                line = line.split("#", 1)[0]
                if relative.endswith(".txt"):
                    match = requirement.match(line)
                    if match:
                        names.add(normalise(match.group(1)))
                elif "pip install" in line:
                    names.update(normalise(n) for n in re.findall(r"\"([A-Za-z0-9][A-Za-z0-9._-]*)[<>=!~ ]", line))
    return names


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(t, ast.Name) and t.id in ("ImportError", "ModuleNotFoundError", "Exception") for t in types)


def required_imports(path: str) -> set[str]:
    """Top-level module names imported by the Python file ``path`` outside an ``ImportError`` guard."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), filename=path)
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers):
            for statement in node.body:
                guarded.update(id(sub) for sub in ast.walk(statement))
    modules = set()
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules


def local_modules(root: str) -> set[str]:
    """Names importable from the repository itself: its top-level packages and modules, and the
    modules of ``tests/`` (pytest puts that folder on the path)."""
    names = set()
    for folder in (root, os.path.join(root, "tests")):
        for entry in os.listdir(folder):
            names.add(entry[:-3] if entry.endswith(".py") else entry)
    return names


def unnamed_imports(root: str) -> dict[str, set[str]]:
    """{distribution: files importing it} for third-party imports that no install file at ``root`` names."""
    named = named_distributions(root)
    local = local_modules(root)
    by_module = importlib.metadata.packages_distributions()
    missing: dict[str, set[str]] = {}
    for top in SCANNED:
        for folder, dirs, files in os.walk(os.path.join(root, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for file in files:
                if not file.endswith(".py"):
                    continue
                path = os.path.join(folder, file)
                for module in required_imports(path):
                    if module in sys.stdlib_module_names or module in local or module.startswith("_"):
                        continue
                    candidates = by_module.get(module) or [KNOWN_DISTRIBUTIONS.get(module, module)]
                    if not any(normalise(d) in named for d in candidates):
                        missing.setdefault(normalise(candidates[0]), set()).add(os.path.relpath(path, root))
    return missing


def test_every_third_party_import_is_installed_by_an_install_file():
    missing = unnamed_imports(ROOT)
    assert not missing, "imported but installed by no install file: " + "; ".join(
        f"{dist} (by {', '.join(sorted(paths)[:3])})" for dist, paths in sorted(missing.items()))


def _fake_repository(tmp_path, requirements: str, source: str):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "install.sh").write_text('"$PY" -m pip install --quiet "torch==2.13.0"\n')
    (tmp_path / "requirements.txt").write_text(requirements)
    for top in SCANNED:
        (tmp_path / top).mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(source)
    return str(tmp_path)


@pytest.mark.parametrize("source, missing", [
    ("import scipy.ndimage as nd\n", {"scipy"}),
    ("def f():\n    from scipy import ndimage\n", {"scipy"}),
    ("try:\n    import scipy\nexcept ImportError:\n    scipy = None\n", set()),
    ("try:\n    import scipy\nexcept ValueError:\n    pass\n", {"scipy"}),
    ("import numpy, torch, os, yaml\nfrom PIL import Image\n", set()),
    ("import tests.helpers\nimport sgan\n", set()),
])
def test_the_scan_finds_an_unnamed_import(tmp_path, source, missing):
    """The scan itself: the scipy import that once slipped through is reported, wherever it stands,
    unless guarded; named distributions (PyYAML for ``yaml``, pillow for ``PIL``) are recognised."""
    root = _fake_repository(tmp_path, "numpy>=1.24\nPyYAML>=6  # configs\npillow>=10\n", source)
    assert set(unnamed_imports(root)) == missing
