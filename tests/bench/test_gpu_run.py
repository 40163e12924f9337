"""bench/gpu_run.sh (the GPU session script) parses and explains itself, and bench/collect.py gathers the
benchmarks' JSON files into one. The dry run itself (`bash bench/gpu_run.sh --dry-run`) runs in CI (.ci/run)."""
import json
import os
import subprocess
import sys

from bench import collect

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPOSITORY, "bench", "gpu_run.sh")


def run_script(*arguments):
    return subprocess.run(["bash", SCRIPT, *arguments], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, OUT=os.path.join(REPOSITORY, "never-written")))


def test_script_parses():
    subprocess.run(["bash", "-n", SCRIPT], check=True, timeout=60)


def test_help_lists_every_part_and_the_dry_run_and_runs_nothing():
    done = run_script("--help")
    assert done.returncode == 0 and done.stderr == ""
    for text in [f"part {n}" for n in range(1, 7)] + ["--dry-run", "--budget", "summary.txt", "results.json"]:
        assert text in done.stdout, text
    assert not os.path.exists(os.path.join(REPOSITORY, "never-written"))


def test_wrong_arguments_are_one_line_errors():
    for arguments, expected in [(["--dryrun"], "unknown argument '--dryrun'"),
                                (["--budget", "9m"], "--budget: expected whole seconds, got '9m'")]:
        done = run_script(*arguments)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr


def test_collect_keeps_earlier_results_and_names_each(tmp_path):
    results = tmp_path / "results.json"
    for name, value in [("attention_41", 1), ("losses", 2), ("attention_41", 3)]:
        (tmp_path / "one.json").write_text(json.dumps({"value": value}))
        assert collect.main([str(results), name, str(tmp_path / "one.json")]) == 0
    assert json.loads(results.read_text()) == {"attention_41": {"value": 3}, "losses": {"value": 2}}


def test_collect_of_a_missing_file_is_a_one_line_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench.collect", str(tmp_path / "r.json"), "x",
                           str(tmp_path / "missing.json")], capture_output=True, text=True, cwd=REPOSITORY, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "missing.json: no such file" in done.stderr
    assert not (tmp_path / "r.json").exists()


def test_gpu_part_2_runs_every_operator_test_file_that_has_cuda_cases():
    """Part 2 on a GPU names its test files: every file of tests/ops that has CUDA cases (it mentions
    cuda) is among them, or it would never run on a GPU."""
    with open(SCRIPT) as f:
        script = f.read()
    gpu_branch = script[script.index("else\n  budget="):]
    listed = set(gpu_branch[gpu_branch.index("tests=(") + 7:gpu_branch.index(")", gpu_branch.index("tests=("))].split())
    ops = os.path.join(REPOSITORY, "tests", "ops")
    with_cuda = set()
    for name in sorted(os.listdir(ops)):
        if name.startswith("test_") and name.endswith(".py"):
            with open(os.path.join(ops, name)) as f:
                if "cuda" in f.read():
                    with_cuda.add(f"tests/ops/{name}")
    assert "tests/ops/test_attention_cuda.py" in with_cuda
    assert with_cuda <= listed, sorted(with_cuda - listed)
