"""One home for each fact (read from the source, without running it): a constant of the package and
its kernels (255, the VOC names, the input normalisations) is written in one module and imported
everywhere else, a name means one kind of thing, a helper is defined once, and the custom ops'
names differ from those of the C++ extension's ops."""
import ast
import collections
import pathlib
import re

import pytest
import torch

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted(path for folder in ("sgan", "kernels") for path in (REPOSITORY / folder).rglob("*.py"))


def _module_constants():
    """(module path, name, value) of every module-level ``NAME = <literal>`` (``tl.constexpr(<literal>)``
    included) of the package and its kernels."""
    found = []
    for path in SOURCES:
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
                continue
            value = node.value
            if isinstance(value, ast.Call) and getattr(value.func, "attr", "") == "constexpr" and value.args:
                value = value.args[0]
            try:
                literal = ast.literal_eval(value)
            except (ValueError, TypeError, SyntaxError):   # not a literal
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found += [(str(path.relative_to(REPOSITORY)), t.id, literal) for t in targets if isinstance(t, ast.Name)]
    return found


def _is_a_fact(value):
    """Large numbers (255, ...) and tables (the class names, a mean per channel): not 0, 1, True or 10."""
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value) >= 100
    return isinstance(value, (tuple, list)) and len(value) >= 3


def test_each_constant_is_written_in_one_module():
    modules = collections.defaultdict(set)
    for path, name, value in _module_constants():
        if _is_a_fact(value):
            modules[repr(value)].add(f"{path}:{name}")
    assert {value: sorted(places) for value, places in modules.items()
            if len({place.split(":")[0] for place in places}) > 1} == {}


def test_a_name_holds_the_same_kind_of_value_in_every_module():
    kinds = collections.defaultdict(set)
    for path, name, value in _module_constants():
        kinds[name].add((type(value).__name__, path))
    assert {name: sorted(found) for name, found in kinds.items() if len({kind for kind, _ in found}) > 1} == {}


@pytest.mark.parametrize("pattern", [r"accumulat\w*_dtype", r"(^|_)scaled(_channels)?$", r"git_revision",
                                     r"voc_palette"])
def test_each_helper_is_defined_once(pattern):
    definitions = [f"{path.relative_to(REPOSITORY)}:{node.name}" for path in SOURCES
                   for node in ast.parse(path.read_text()).body
                   if isinstance(node, ast.FunctionDef) and re.search(pattern, node.name)]
    assert len(definitions) == 1, definitions


def test_custom_ops_are_not_named_like_the_extension_ops():
    """``torch.ops.sgan.<op>`` (the autograd ops that pick a backend) and ``torch.ops.sgan_ext.<op>``
    (the C++/CUDA backend's kernels) used to share every name."""
    from sgan import _ext, losses, ops  # noqa: F401  (importing registers the custom ops)
    if not _ext.available():
        pytest.skip("the C++ extension sgan._C is not built")
    names = torch._C._dispatch_get_all_op_names()
    custom = {name.split("::")[1] for name in names if name.startswith("sgan::")}
    extension = {name.split("::")[1] for name in names if name.startswith("sgan_ext::")}
    assert custom and extension
    assert custom & extension == set()
