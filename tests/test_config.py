"""Config: registry of sections, YAML + overrides, validation naming every problem, resolved file."""
import os

import pytest
import yaml

from sgan import config as config_module
from sgan.config import Config, parse_override, register_section, resolve, save_resolved
from sgan.pipeline import load_config, register_sections

register_sections()   # the root keys (work_dir, seed ...) that the tests of the mechanism below use

register_section("test_section", {"lr": 1e-3, "iterations": 10, "flip": True, "name": "x",
                                  "scales": [1.0], "weights": None, "extra": {}},
                 choices={"name": ("x", "y")}, doc="used by tests/test_config.py only")
register_section("test_bounded", {"iterations": 10, "lr": 1e-3, "momentum": 0.9, "scales": [1.0],
                                  "processes": None},
                 bounds={"iterations": "[1, inf)", "lr": "(0, inf)", "momentum": "[0, 1)",
                         "scales": "(0, inf)", "processes": "[1, inf)"},
                 doc="used by tests/test_config.py only")


def test_defaults_file_and_overrides_merge_in_order(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("work_dir: out\ntest_section:\n  lr: 0.01\n  iterations: 5\n")
    cfg = load_config(str(path), ["test_section.iterations=7", "test_section.scales=[1.0, 0.5]",
                                  "test_section.weights=/w.pth", "test_section.extra.a.b=3", "seed=4"])
    # work_dir is resolved once, against the directory the command runs in
    assert cfg.work_dir == os.path.join(os.getcwd(), "out") and cfg.seed == 4
    assert cfg.test_section.lr == 0.01            # from the file
    assert cfg.test_section.iterations == 7        # override wins over the file
    assert cfg.test_section.flip is True           # default
    assert cfg.test_section.scales == [1.0, 0.5]
    assert cfg.test_section.weights == "/w.pth"
    assert cfg.test_section.extra == {"a": {"b": 3}}
    assert cfg["test_section"]["lr"] == cfg.test_section.lr


def test_parse_override_types():
    assert parse_override("a.b=1e-3") == (["a", "b"], 1e-3)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=") == (["a"], None)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=path/x.pt") == (["a"], "path/x.pt")
    with pytest.raises(ValueError, match="key=value"):
        parse_override("novalue")


def test_every_problem_is_named_in_one_error():
    with pytest.raises(ValueError) as info:
        resolve({"test_section": {"lr": "fast", "iteratoins": 3, "name": "z"}, "sed": 1},
                 ["test_section.flip=1", "nosection.key=2", "seed.sub=1"])
    message = str(info.value)
    for expected in ("test_section.lr: expected float", "unknown key test_section.iteratoins",
                     "did you mean 'iterations'", "test_section.name: expected one of ['x', 'y']",
                     "unknown section or key 'sed'", "did you mean 'seed'", "test_section.flip: expected bool",
                     "unknown section or key 'nosection'", "'seed' is a top-level key"):
        assert expected in message, (expected, message)


def test_int_is_accepted_for_float_but_not_bool_for_int():
    assert resolve({"test_section": {"lr": 1}}).test_section.lr == 1
    with pytest.raises(ValueError, match="iterations: expected int"):
        resolve({"test_section": {"iterations": True}})


def test_config_is_read_only_and_picklable():
    import pickle
    cfg = resolve({"work_dir": "w"})
    with pytest.raises(TypeError, match="read-only"):
        cfg["seed"] = 1
    with pytest.raises(TypeError, match="read-only"):
        cfg.test_section.lr = 1
    again = pickle.loads(pickle.dumps(cfg))
    assert isinstance(again, Config) and again == cfg and again.test_section.lr == cfg.test_section.lr


def test_register_section_conflicts_are_errors():
    register_section("test_section", {"lr": 1e-3, "iterations": 10, "flip": True, "name": "x",
                                      "scales": [1.0], "weights": None, "extra": {}},
                     choices={"name": ("x", "y")}, doc="used by tests/test_config.py only")  # same: no-op
    with pytest.raises(ValueError, match="already registered"):
        register_section("test_section", {"lr": 1.0})
    with pytest.raises(ValueError, match="not one of its choices"):
        register_section("test_bad_choice", {"mode": "a"}, choices={"mode": ("b",)})
    assert "test_bad_choice" not in config_module.sections()


def test_save_resolved_writes_yaml_with_git_revision(tmp_path):
    cfg = resolve({"work_dir": str(tmp_path / "w"), "test_section": {"lr": 0.5}})
    path = save_resolved(cfg)
    text = open(path).read()
    assert os.path.basename(path) == "config.resolved.yaml"
    assert "# git revision: " in text
    reloaded = yaml.safe_load(text)
    assert reloaded["test_section"]["lr"] == 0.5
    assert resolve(reloaded) == cfg  # the saved file reproduces the config


def test_values_outside_their_bounds_are_named_with_the_full_key():
    within = resolve({"test_bounded": {"iterations": 1, "lr": 1e-9, "momentum": 0, "processes": 3}})
    assert within.test_bounded.momentum == 0 and within.test_bounded.processes == 3
    with pytest.raises(ValueError) as info:
        resolve({"test_bounded": {"iterations": 0, "momentum": 1.0, "scales": [0.5, -1]}},
                ["test_bounded.lr=0", "test_bounded.processes=0", "num_workers=-1"])
    message = str(info.value)
    for expected in ("test_bounded.iterations: expected a number >= 1, got 0",
                     "test_bounded.lr: expected a number > 0, got 0",
                     "test_bounded.momentum: expected a number in [0, 1), got 1.0",
                     "test_bounded.scales[1]: expected a number > 0, got -1",
                     "test_bounded.processes: expected a number >= 1, got 0",
                     "num_workers: expected a number >= 0, got -1"):
        assert expected in message, (expected, message)
    assert "scales[0]" not in message


def test_the_steps_declare_bounds_for_impossible_values():
    """What issue 11 met: checkpoint_every=0 divided by zero after the first training iteration,
    iterations=0 was reported as 'train-sgan.iterations'."""
    with pytest.raises(ValueError) as info:
        load_config(None, ["train_sgan.checkpoint_every=0", "train_sgan.iterations=0", "train_cam.batch_size=0",
                           "train_seg.momentum=1", "train_cam.log_every=0", "seeds.alpha=0",
                           "initial_seeds.beta=2", "infer.crf_processes=0", "model.dropout=1"])
    message = str(info.value)
    for key in ("train_sgan.checkpoint_every", "train_sgan.iterations", "train_cam.batch_size",
                "train_seg.momentum", "train_cam.log_every", "seeds.alpha", "initial_seeds.beta",
                "infer.crf_processes", "model.dropout"):
        assert f"\n  {key}: expected a number" in message, (key, message)


def test_bounds_are_checked_when_registering():
    with pytest.raises(ValueError, match=r"defaults: test_bad_bound.count: expected a number >= 1, got 0"):
        register_section("test_bad_bound", {"count": 0}, bounds={"count": "[1, inf)"})
    with pytest.raises(ValueError, match="bounds: expected an interval like"):
        register_section("test_bad_bound", {"count": 1}, bounds={"count": ">= 1"})
    with pytest.raises(ValueError, match=r"bounds: keys \['size'\] of section 'test_bad_bound' have no default"):
        register_section("test_bad_bound", {"count": 1}, bounds={"size": "[1, inf)"})
    assert "test_bad_bound" not in config_module.sections()


def test_base_files_are_deep_merged_recursively_relative_to_the_including_file(tmp_path):
    (tmp_path / "bases").mkdir()
    (tmp_path / "bases" / "root.yaml").write_text(
        "seed: 1\ntest_section:\n  lr: 0.5\n  iterations: 3\n  extra: {a: {b: 1, c: 2}}\n")
    (tmp_path / "bases" / "middle.yaml").write_text(
        "_base_: root.yaml\ntest_section:\n  iterations: 4\n  extra: {a: {c: 5}}\n")
    (tmp_path / "exp.yaml").write_text("_base_: bases/middle.yaml\nwork_dir: out\ntest_section:\n  name: y\n")
    cfg = load_config(str(tmp_path / "exp.yaml"), ["test_section.flip=false"])
    assert cfg.seed == 1                                           # only in the first base
    assert (cfg.test_section.lr, cfg.test_section.iterations, cfg.test_section.name) == (0.5, 4, "y")
    assert cfg.test_section.extra == {"a": {"b": 1, "c": 5}}      # mappings merge key by key
    assert cfg.test_section.flip is False and "_base_" not in cfg


def test_base_cycles_and_missing_bases_are_one_line_errors(tmp_path, capsys):
    from sgan.cli import main
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ValueError, match=r"_base_ 'a.yaml' makes a cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_config(str(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("_base_: nowhere/base.yaml\nseed: 2\n")
    assert main(["config", str(tmp_path / "c.yaml")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("sgan config: error: config ") and "_base_ 'nowhere/base.yaml'" in error
    assert os.path.join(str(tmp_path), "nowhere", "base.yaml") in error and "does not exist" in error
    assert len(error.splitlines()) == 1
    (tmp_path / "d.yaml").write_text("_base_: [a.yaml]\n")
    with pytest.raises(ValueError, match="_base_: expected the path of a YAML file"):
        load_config(str(tmp_path / "d.yaml"))


CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, "configs")


def stated_and_differing(name):
    """(keys the file ``configs/<name>`` states itself, keys where it resolves otherwise than
    voc_sgan.yaml), each a set of (section, key), section "" for the top-level keys."""
    with open(os.path.join(CONFIGS, name)) as stream:
        own = yaml.safe_load(stream)
    assert own.pop("_base_") == "voc_sgan.yaml"
    paper = load_config(os.path.join(CONFIGS, "voc_sgan.yaml"))
    derived = load_config(os.path.join(CONFIGS, name))
    differing = {(section, key) for section, values in derived.items() if isinstance(values, dict)
                 for key in values if values[key] != paper[section][key]}
    differing |= {("", key) for key, value in derived.items() if not isinstance(value, dict) and value != paper[key]}
    stated = {(section, key) for section, values in own.items() if isinstance(values, dict) for key in values}
    stated |= {("", key) for key, value in own.items() if not isinstance(value, dict)}
    return stated, differing


def test_the_authors_config_states_only_its_differences_from_the_papers():
    stated, differing = stated_and_differing("voc_sgan_authors.yaml")
    assert differing == stated - {("train_sgan", "seed_loss_weight")}   # lambda is the same, stated for the reader
    paper = load_config(os.path.join(CONFIGS, "voc_sgan.yaml"))
    authors = load_config(os.path.join(CONFIGS, "voc_sgan_authors.yaml"))
    assert (authors.seeds.rule, authors.seeds.resolution, authors.seeds.alpha) == ("authors", "feature", 0.25)
    assert (paper.seeds.rule, paper.seeds.resolution, paper.seeds.alpha) == ("paper", "image", 0.2)


@pytest.mark.parametrize("name", ["voc_deeplab.yaml", "demo.yaml"])
def test_the_stage2_and_demo_configs_state_only_their_differences_from_the_papers(name):
    stated, differing = stated_and_differing(name)
    assert differing == stated


def test_the_papers_config_restates_no_code_default():
    """One home for each default: the paper's settings are the sections' defaults in the code, and
    voc_sgan.yaml states only keys whose value differs from them (paths, workers), so a changed code
    default can never be silently overridden by a stale copy in the YAML."""
    with open(os.path.join(CONFIGS, "voc_sgan.yaml")) as stream:
        own = yaml.safe_load(stream)
    defaults = load_config()
    restated = sorted(f"{section}.{key}" for section, values in own.items() if isinstance(values, dict)
                      for key, value in values.items() if defaults[section][key] == value)
    restated += sorted(key for key, value in own.items() if not isinstance(value, dict) and defaults[key] == value)
    assert restated == []
