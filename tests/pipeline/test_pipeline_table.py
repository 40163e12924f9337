"""The pipeline as one table (sgan.pipeline.STEPS): the CLI, the default steps, the schema and the
demo read it; the config layer imports no pipeline, and data/models import no config."""
import ast
import os
import subprocess
import sys

import pytest

from sgan import cli
from sgan.config import sections
from sgan.experiments.demo import CONFIG_FILE, chained_steps, variant_configs
from sgan.pipeline import STEP_NAMES, STEPS, load_config, load_step, register_sections

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPOSITORY, "configs")


def python(code):
    """Run ``code`` in a fresh interpreter importing sgan from this checkout; its stdout."""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": REPOSITORY}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_sgan_steps_and_the_default_steps_follow_the_table(capsys):
    assert cli.main(["steps"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list(STEP_NAMES)
    assert STEP_NAMES[:4] == ("pretrain", "labels", "train-cam", "initial-seeds")
    assert STEP_NAMES[-2:] == ("demo", "study")
    assert load_config().steps == [step.name for step in STEPS if step.default]
    assert not {"pretrain", "figures", "demo", "study"} & set(load_config().steps)


def test_every_step_module_is_named_like_its_step_and_declares_its_section():
    register_sections()
    registered = sections()
    for step in STEPS:
        module = load_step(step)
        assert os.path.basename(module.__file__) == step.name.replace("-", "_") + ".py"
        assert not hasattr(module, "DISTRIBUTED") and not hasattr(module, "DEFAULT_CONFIG")   # the table's
        if step.section is not None:
            assert registered[step.section]["defaults"] == module.SECTION["defaults"]
    declared = {step.section for step in STEPS if step.section} | {"", "data", "model"}
    assert set(registered) >= declared
    assert {step.name for step in STEPS if step.distributed} == {"pretrain", "train-cam", "train-sgan", "train-seg", "infer"}


def check_wiring(cfg, names):
    """Every file that a step of ``names`` reads from an earlier step of the table is one that an
    earlier step writes, under ``cfg``."""
    def value(key):
        section, name = key.split(".")
        return cfg[section][name]

    written = set()
    for step in STEPS:
        if step.name in names:
            unwired = [key for key in step.reads if value(key) not in written]
            assert not unwired, (step.name, {key: value(key) for key in unwired})
        written |= {value(key) for key in step.writes}


@pytest.mark.parametrize("name", ["voc_sgan.yaml", "voc_sgan_authors.yaml", "voc_deeplab.yaml"])
def test_each_step_reads_what_an_earlier_step_writes_in_the_shipped_configs(name):
    check_wiring(load_config(os.path.join(CONFIGS, name)), STEP_NAMES)


def test_the_demo_chains_the_table_and_each_variant_reads_what_it_wrote():
    cfg = load_config(CONFIG_FILE)
    assert [step.name for step in chained_steps(cfg.demo)] == [
        "pretrain", "labels", "train-cam", "initial-seeds", "train-sgan", "seeds", "eval-seeds", "figures",
        "train-seg", "infer", "eval"]
    without = load_config(CONFIG_FILE, ["demo.stage2=false", "demo.figures=false", "demo.pretrain=false"])
    assert [step.name for step in chained_steps(without.demo)] == [
        "labels", "train-cam", "initial-seeds", "train-sgan", "seeds", "eval-seeds"]
    for variant in cfg.demo.variants:   # Baseline, SGAN-SAL-SEED, SGAN-SEED, SGAN
        check_wiring(variant_configs(cfg, variant), set(STEP_NAMES) - {"figures", "demo", "study"})


def test_a_wrong_wiring_is_caught():
    """check_wiring is not vacuous: infer reading another checkpoint than train-seg's fails it."""
    cfg = load_config(os.path.join(CONFIGS, "voc_sgan.yaml"), ["infer.checkpoint=ckpt/other.pt"])
    with pytest.raises(AssertionError, match="infer"):
        check_wiring(cfg, STEP_NAMES)


def test_the_config_layer_imports_no_pipeline_and_importing_registers_nothing():
    tree = ast.parse(open(os.path.join(REPOSITORY, "sgan", "config.py")).read())
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert not [name for name in imported if name.startswith(("sgan.pipeline", "sgan.cli"))], imported
    out = python(
        "import sys\n"
        "import sgan.data.voc, sgan.models.sgan_net\n"
        "print('config after data, models:', 'sgan.config' in sys.modules)\n"
        "import sgan.config, sgan.pipeline.train_cam, sgan.experiments.demo\n"
        "print('registered by imports:', sorted(sgan.config.sections()))\n"
        "try:\n"
        "    sgan.config.resolve({})\n"
        "except RuntimeError as error:\n"
        "    print('resolve without a schema:', error)\n")
    assert "config after data, models: False" in out
    assert "registered by imports: []" in out
    assert "resolve without a schema: no config schema is registered" in out
