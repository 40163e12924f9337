"""The layers of the package (docs/design.md §6), read from the source without running it: each
module imports only its own layer and the layers below it; config and utils sit beside the layers
and import none of them."""
import ast
import pathlib

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]

# the rank of each top-level name of the package: a module may import a rank at most its own
LAYERS = {
    "ops": 0, "kernels": 0, "_ext": 0, "_C": 0,
    "data": 1,
    "models": 2, "losses": 2, "crf": 2, "metrics": 2, "seedmaps": 2, "predict": 2, "drawing": 2,
    "train": 3,
    "pipeline": 4,
    "experiments": 5,
    "cli": 6,
}
BESIDE = ("config", "utils")
# the kernels read the ignore label from its one home (sgan.data.voc_classes holds constants only)
ALLOWED = {("kernels", "sgan.data.voc_classes")}


def _top_name(path, root=REPOSITORY):
    """The package's top-level name that ``path`` (under ``root``'s sgan/ or kernels/) belongs to."""
    relative = path.relative_to(root)
    if relative.parts[0] == "kernels":
        return "kernels"
    return relative.with_suffix("").parts[1]


def _imported(source):
    """The sgan names that ``source`` imports (``from sgan.data import voc`` counts as ``sgan.data.voc``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sgan":
            found += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] == "sgan"]
    return [name for name in found if "." in name]


def layer_violations(paths, root=REPOSITORY):
    """'<file> imports <module>' for each import of ``paths`` (files under ``root``) that goes to a
    higher layer, to a layer from config or utils, or to or from a top-level name that no layer holds."""
    found = []
    for path in paths:
        here = _top_name(path, root)
        for name in _imported(path.read_text()):
            target = name.split(".")[1]
            allowed = any(here == place and (name + ".").startswith(module + ".") for place, module in ALLOWED)
            if allowed or target in BESIDE:
                continue
            unranked = here not in LAYERS and here not in BESIDE or target not in LAYERS
            if unranked or here in BESIDE or LAYERS[target] > LAYERS[here]:
                found.append(f"{path.relative_to(root)} imports {name}")
    return found


def _sources():
    return sorted(path for folder in ("sgan", "kernels") for path in (REPOSITORY / folder).rglob("*.py"))


def test_no_module_imports_a_layer_above_its_own():
    assert layer_violations(_sources()) == []


def test_nothing_below_the_experiments_imports_them():
    below = [path for path in _sources() if _top_name(path) not in ("experiments", "cli")]
    assert not [name for path in below for name in _imported(path.read_text())
                if name.startswith("sgan.experiments")]


def test_the_scan_finds_an_upward_import(tmp_path):
    """layer_violations is not vacuous: a data module importing the pipeline or the experiments, and
    a module outside every layer, are each reported."""
    (tmp_path / "sgan" / "data").mkdir(parents=True)
    upward = tmp_path / "sgan" / "data" / "upward.py"
    upward.write_text("from sgan.pipeline import work_path\nfrom sgan import experiments\nimport sgan.data.voc\n")
    stray = tmp_path / "sgan" / "stray.py"
    stray.write_text("from sgan.data import voc\n")
    assert layer_violations([upward, stray], root=tmp_path) == [
        "sgan/data/upward.py imports sgan.pipeline.work_path", "sgan/data/upward.py imports sgan.experiments",
        "sgan/stray.py imports sgan.data.voc"]
