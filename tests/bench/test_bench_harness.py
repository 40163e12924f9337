"""The benchmark harness (bench/harness.py, bench/registry.py, bench/run.py): its statistics on a
fake clock, the speed-up column, the peak RSS of a child process, the registrations and the CLI."""
import argparse
import dataclasses
import json

import pytest
import torch

from bench import attention, harness, registry, run, sgan_train
from bench.child import ChildFailed, run_in_child
from bench.harness import Column
from bench.registry import Benchmark, Plan
from sgan import _ext
from tests.bench.bench_child_tasks import allocate_and_touch, raise_value_error

MIB = 2 ** 20


class FakeClock:
    """A clock that only moves when a step says how long it took."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def step(self, durations):
        """A step that takes the next of ``durations`` seconds each time it runs."""
        remaining = list(durations)

        def run():
            self.now += remaining.pop(0)
        return run, remaining


def test_time_step_reports_median_and_minimum_of_the_timed_repeats_only():
    clock = FakeClock()
    step, remaining = clock.step([100.0, 50.0, 3.0, 1.0, 2.0, 5.0, 4.0])  # two slow warm-ups, five repeats
    timing = harness.time_step(step, warmup=2, repeats=5, clock=clock)
    assert remaining == []
    assert timing.samples == (3.0, 1.0, 2.0, 5.0, 4.0)
    assert timing.median_ms == pytest.approx(3000.0)
    assert timing.min_ms == pytest.approx(1000.0)
    assert timing.total_s == pytest.approx(15.0)


def test_time_interleaved_alternates_the_steps_repeat_by_repeat():
    clock, order = FakeClock(), []

    def step(name, seconds):
        def run():
            order.append(name)
            clock.now += seconds
        return run

    timings = harness.time_interleaved({"a": step("a", 1.0), "b": step("b", 4.0)}, warmup=1, repeats=2, clock=clock)
    assert order == ["a", "b", "a", "b", "a", "b"]
    assert timings["a"].samples == (1.0, 1.0) and timings["b"].samples == (4.0, 4.0)


def test_time_step_rejects_no_repeats():
    with pytest.raises(ValueError, match="repeats >= 1"):
        harness.time_step(lambda: None, warmup=0, repeats=0)


def test_speedups_are_the_baseline_over_each_ok_row_of_the_case():
    rows = [{"backend": "reference", "status": "ok", "ms": 10.0, "bytes": 800},
            {"backend": "cpp", "status": "ok", "ms": 2.0, "bytes": 100},
            {"backend": "triton", "status": "out of memory"}]
    harness.add_speedups(rows, "reference", {"ms": "speedup", "bytes": "memory_ratio"})
    assert rows[0]["speedup"] == pytest.approx(1.0)
    assert rows[1]["speedup"] == pytest.approx(5.0) and rows[1]["memory_ratio"] == pytest.approx(8.0)
    assert "speedup" not in rows[2]
    failed_baseline = [{"backend": "reference", "status": "skipped: too big"},
                       {"backend": "cpp", "status": "ok", "ms": 2.0}]
    harness.add_speedups(failed_baseline, "reference", {"ms": "speedup"})
    assert "speedup" not in failed_baseline[1]


def fake_benchmark(clock, seconds):
    """A benchmark whose backends take ``seconds[backend]`` per step on the fake clock."""
    def measure(case, backends, ctx):
        (backend,) = backends
        if backend == "broken":
            raise RuntimeError("no kernel for this\nsecond line")
        timing = ctx.time(clock.step([seconds[backend] * case["scale"]] * (ctx.warmup + ctx.repeats))[0])
        return {backend: {"median_ms": timing.median_ms, "min_ms": timing.min_ms}}

    return Benchmark(
        name="fake", description="fake", baseline="reference", add_arguments=lambda parser: None,
        plan=lambda args, device: Plan(config={"what": "fake"}, cases=[{"scale": 1}, {"scale": 2}],
                                       backends=["reference", "fast", "broken"]),
        measure=measure, compare={"median_ms": "speedup"},
        columns=[Column("scale", "scale"), Column("backend", "backend"), Column("median_ms", "median ms", "{:.1f}"),
                 Column("speedup", "vs reference", "{:.2f}x")],
        status_column="median_ms", warmup={"cpu": 1, "cuda": 1}, repeats={"cpu": 3, "cuda": 3},
        memory_method={"cpu": None, "cuda": "fake"}, output=lambda header: "fake.json")


def test_run_benchmark_prints_the_speedup_column_and_writes_every_header_field(tmp_path, capsys):
    clock = FakeClock()
    benchmark = fake_benchmark(clock, {"reference": 0.012, "fast": 0.003})
    path = tmp_path / "fake.json"
    payload = harness.run_benchmark(benchmark, argparse.Namespace(output=str(path)), torch.device("cpu"),
                                    warmup=1, repeats=3, clock=clock)
    printed = capsys.readouterr().out
    assert "vs reference" in printed and "4.00x" in printed
    assert "failed: RuntimeError: no kernel for this" in printed and "second line" not in printed
    written = json.loads(path.read_text())
    assert written == json.loads(json.dumps(payload))
    assert written["complete"] is True
    for field in ("benchmark", "complete", "device", "device_type", "cpu", "threads", "cpu_cores", "versions", "git", "command",
                  "started_at", "load_average_at_start", "load_average_at_end", "warmup", "repeats", "baseline", "backends",
                  "memory_method", "config", "not_measured", "results"):
        assert field in written, field
    assert set(written["versions"]) == {"torch", "triton", "python", "cuda"}
    assert written["git"] == harness.git_revision()
    fast = [row for row in written["results"] if row["backend"] == "fast"]
    assert [row["scale"] for row in fast] == [1, 2]
    assert all(row["speedup"] == pytest.approx(4.0) and row["median_ms"] > 0 for row in fast)
    assert fast[1]["median_ms"] == pytest.approx(6.0)
    broken = [row for row in written["results"] if row["backend"] == "broken"]
    assert all(row["status"].startswith("failed: RuntimeError") and "speedup" not in row for row in broken)


def test_child_peak_rss_sees_what_the_child_allocated():
    big = run_in_child(allocate_and_touch, 200)
    small = run_in_child(allocate_and_touch, 0)
    assert big.value == 200 and small.value == 0
    assert big.peak_rss_bytes > 200 * MIB
    assert big.peak_rss_bytes - small.peak_rss_bytes > 150 * MIB


def test_child_error_is_reported_in_one_line():
    with pytest.raises(ChildFailed, match=r"^ValueError: bad case$"):
        run_in_child(raise_value_error)


def test_every_registered_benchmark_has_a_baseline_that_it_measures():
    assert registry.names() == ["attention", "inference", "loaders", "losses", "seg_train", "sgan_train"]
    for name in registry.names():
        benchmark = registry.get(name)
        args = run.build_parser(benchmark, name).parse_args(["--device", "cpu"])
        plan = benchmark.plan(args, torch.device("cpu"))
        # the kernels' benchmarks measure against the PyTorch reference, the loaders against PIL
        assert benchmark.baseline == ("pil" if name == "loaders" else "reference"), name
        assert benchmark.baseline in plan.backends, name
        assert plan.cases, name
        assert set(benchmark.warmup) == set(benchmark.repeats) == {"cpu", "cuda"}, name


def test_a_benchmark_without_a_baseline_is_refused():
    fields = {field: getattr(fake_benchmark(FakeClock(), {}), field) for field in
              ("name", "description", "add_arguments", "plan", "measure", "compare", "columns", "status_column",
               "warmup", "repeats", "memory_method", "output")}
    with pytest.raises(ValueError, match="baseline"):
        Benchmark(baseline="", **fields)


def test_cli_lists_the_benchmarks(capsys):
    assert run.main(["--list"]) == 0
    listed = capsys.readouterr().out
    for name in ("attention", "inference", "loaders", "losses", "sgan_train", "seg_train"):
        assert name in listed


def test_cli_unknown_benchmark_is_a_one_line_error(capsys):
    assert run.main(["atention"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "unknown benchmark 'atention'" in error and "attention" in error


def test_cli_find_max_size_on_cpu_is_refused_before_measuring(capsys, tmp_path):
    with pytest.raises(SystemExit) as stopped:
        run.main(["sgan_train", "--device", "cpu", "--find-max-size", "--output", str(tmp_path / "x.json")])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert error == "python -m bench.run sgan_train: error: --find-max-size needs --device cuda\n"
    assert not (tmp_path / "x.json").exists()


def test_cli_attention_end_to_end_at_a_tiny_size(tmp_path):
    path = tmp_path / "attention.json"
    assert run.main(["attention", "--device", "cpu", "--shapes", "5", "--channels", "8", "--key-channels", "4",
                     "--presets", "official", "--warmup", "0", "--repeats", "2", "--output", str(path)]) == 0
    written = json.loads(path.read_text())
    assert written["benchmark"] == "attention" and written["repeats"] == 2
    rows = {row["backend"]: row for row in written["results"]}
    assert rows["reference"]["status"] == "ok" and rows["reference"]["peak_bytes"] > 0
    assert ("cpp" in rows) == _ext.available("cpu")
    for backend in [name for name in rows if name != "reference"]:
        row = rows[backend]
        assert row["status"] == "ok"
        for field in ("forward_ms", "forward_min_ms", "forward_backward_ms", "forward_backward_min_ms",
                      "speedup_forward", "speedup_forward_backward", "memory_ratio"):
            assert row[field] > 0, field


def test_cli_attention_has_the_sdpa_comparison_row_measured_like_the_backends(tmp_path):
    path = tmp_path / "attention.json"
    assert run.main(["attention", "--device", "cpu", "--shapes", "5", "--channels", "8", "--key-channels", "4",
                     "--presets", "official", "--warmup", "0", "--repeats", "2", "--output", str(path)]) == 0
    written = json.loads(path.read_text())
    assert attention.SDPA in written["backends"]
    rows = {row["backend"]: row for row in written["results"]}
    sdpa = rows[attention.SDPA]
    assert sdpa["status"] == "ok" and sdpa["comparison"] == attention.SDPA_NOTE
    assert "comparison" not in rows["reference"]
    for field in ("forward_ms", "forward_backward_ms", "peak_bytes", "speedup_forward_backward", "memory_ratio"):
        assert sdpa[field] > 0, field
    assert run.main(["attention", "--device", "cpu", "--shapes", "5", "--channels", "8", "--key-channels", "4",
                     "--presets", "official", "--warmup", "0", "--repeats", "1", "--no-sdpa",
                     "--output", str(path)]) == 0
    assert attention.SDPA not in {row["backend"] for row in json.loads(path.read_text())["results"]}


def test_sdpa_comparison_is_softmax_attention_with_query_key_and_x_as_values():
    (x, key, query), _, _, grad_out = attention.make_inputs(2, 6, 3, 4, torch.float64, torch.device("cpu"),
                                                            "official")
    out = attention.sdpa_forward([x, key, query], grad_out)
    q, k, v = (t.detach().flatten(2).transpose(1, 2) for t in (query, key, x))  # (B, N, channels)
    expected = torch.softmax(q @ k.transpose(1, 2) / 3 ** 0.5, dim=-1) @ v
    assert out.shape == (2, 1, 16, 6)
    torch.testing.assert_close(out[:, 0].detach(), expected, rtol=1e-12, atol=1e-12)
    assert x.grad is not None and key.grad is not None and query.grad is not None


def test_a_failing_summary_keeps_the_measured_rows_on_disk(tmp_path):
    clock = FakeClock()

    def summarize(rows, plan, ctx):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    benchmark = dataclasses.replace(fake_benchmark(clock, {"reference": 0.012, "fast": 0.003}), summarize=summarize)
    path = tmp_path / "fake.json"
    with pytest.raises(RuntimeError, match="illegal memory access"):
        harness.run_benchmark(benchmark, argparse.Namespace(output=str(path)), torch.device("cpu"),
                              warmup=1, repeats=3, clock=clock)
    written = json.loads(path.read_text())
    assert written["complete"] is False
    assert [row["backend"] for row in written["results"]] == ["reference", "fast", "broken"] * 2
    assert written["results"][1]["speedup"] == pytest.approx(4.0)


def test_a_run_stopped_in_its_second_case_keeps_the_first_cases_rows(tmp_path):
    clock = FakeClock()
    benchmark = fake_benchmark(clock, {"reference": 0.012, "fast": 0.003})

    def measure(case, backends, ctx):
        if case["scale"] == 2:
            raise KeyboardInterrupt  # what SIGINT from `timeout -s INT` raises
        return benchmark.measure(case, backends, ctx)

    path = tmp_path / "fake.json"
    with pytest.raises(KeyboardInterrupt):
        harness.run_benchmark(dataclasses.replace(benchmark, measure=measure), argparse.Namespace(output=str(path)),
                              torch.device("cpu"), warmup=1, repeats=3, clock=clock)
    written = json.loads(path.read_text())
    assert written["complete"] is False
    assert [(row["scale"], row["backend"]) for row in written["results"]] == [
        (1, "reference"), (1, "fast"), (1, "broken")]
    assert written["results"][1]["speedup"] == pytest.approx(4.0)


ALLOCATION_FAILURES = [
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED"),
    RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    RuntimeError("CUDA error: out of memory"),
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
]


def fake_training_step(limit, error):
    """A sgan_train measure that raises ``error`` above ``limit`` pixels of side, else returns a row."""
    def measure(case, backends, ctx):
        if case["input_size"][0] > limit:
            raise error
        return {backends[0]: {"median_ms": float(case["input_size"][0]), "min_ms": 1.0, "iterations_timed": 1}}
    return measure


@pytest.mark.parametrize("error", ALLOCATION_FAILURES, ids=lambda e: str(e)[:30])
def test_find_max_size_counts_library_allocation_failures_as_not_fitting(tmp_path, monkeypatch, error):
    """The whole sgan_train run with --find-max-size, its measure faked: rows and the largest size are written."""
    fake = fake_training_step(700, error)
    monkeypatch.setattr(sgan_train, "measure", fake)
    benchmark = dataclasses.replace(
        registry.get("sgan_train"), measure=fake, cpu_memory=None,
        plan=lambda args, device: Plan(config={"batch": 1}, cases=[{"batch": 1, "input_size": [321, 321]}],
                                       backends=["reference"]))
    path = tmp_path / "sgan_train.json"
    args = argparse.Namespace(output=str(path), find_max_size=True, memory_budget=None, precision=["fp32"],
                              memory_format=["contiguous"], checkpointing=["off"], max_size_backends=None,
                              max_size_modes=None, known_rows=None, max_size_limit=sgan_train.MAX_SIZE_LIMIT)
    harness.run_benchmark(benchmark, args, torch.device("cpu"), warmup=0, repeats=1)
    written = json.loads(path.read_text())
    assert written["complete"] is True and [row["status"] for row in written["results"]] == ["ok"]
    # 321, 481, 641 fit, 801 does not; bisection on multiples of 8 above 641 (721 no, 681, 697, 705 no) ends at 697
    assert written["max_size"] == {"reference fp32 contiguous": {"max_size": 697, "capped_at_limit": False,
                                                                 "sides_tried": 8, "probes_mib": {}}}


def test_find_max_size_raises_an_error_that_is_not_an_allocation_failure(monkeypatch):
    monkeypatch.setattr(sgan_train, "measure", fake_training_step(700, RuntimeError("CUDNN_STATUS_BAD_PARAM")))
    ctx = harness.Context(torch.device("cpu"), 0, 1, argparse.Namespace())
    with pytest.raises(RuntimeError, match="BAD_PARAM"):
        sgan_train.find_max_size("reference", 1, ctx, FP32)


def test_sgan_train_measures_every_fused_backend_named_and_records_the_unusable(capsys):
    benchmark = registry.get("sgan_train")
    args = run.build_parser(benchmark, "sgan_train").parse_args(["--device", "cpu", "--fused", "cpp,nosuch"])
    plan = benchmark.plan(args, torch.device("cpu"))
    expected = ["reference", "cpp"] if _ext.available("cpu") else ["reference"]
    assert plan.backends == expected
    assert set(plan.not_measured) == ({"nosuch"} if _ext.available("cpu") else {"cpp", "nosuch"})
    assert plan.not_measured["nosuch"].startswith("not usable on cpu: ")


def test_allocation_failures_are_reported_as_out_of_memory():
    for error in ALLOCATION_FAILURES:
        assert harness.status_of(error) == "out of memory", error
    assert harness.status_of(RuntimeError("CUDNN_STATUS_BAD_PARAM")).startswith("failed: RuntimeError")


# ---------------------------------------------------------------------------------------------
# sgan_train for larger inputs: precision, channels-last, checkpointing, the CPU memory budget


FP32 = {"precision": "fp32", "memory_format": "contiguous", "checkpointing": False}


def sgan_train_args(*options):
    return run.build_parser(registry.get("sgan_train"), "sgan_train").parse_args(
        ["--device", "cpu", "--batch", "1", "--sizes", "33", "--width", "0.0625", *options])


def test_sgan_train_measure_builds_and_feeds_the_network_as_the_options_say(monkeypatch):
    """A case's mode (bf16, channels_last, checkpointing) reaches the network: a spy sees autocast on, the
    images in channels-last layout, checkpointing on; in the default mode, none of that."""
    seen = []

    class Spy(sgan_train.SGANNet):
        def forward(self, images, saliency=None):
            seen.append((torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16,
                         images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous(),
                         self.conv_weight_is_channels_last(), self.backbone.checkpointing))
            return super().forward(images, saliency)

        def conv_weight_is_channels_last(self):
            return self.backbone.conv1_1.weight.is_contiguous(memory_format=torch.channels_last)

    monkeypatch.setattr(sgan_train, "SGANNet", Spy)
    for options, expected in (([], (False, False, False, False)),
                              (["--memory-format", "channels_last", "--checkpointing", "on"],
                               (False, True, True, True)),
                              (["--precision", "bf16", "--memory-format", "channels_last", "--checkpointing", "on"],
                               (True, True, True, True))):
        seen.clear()
        args = sgan_train_args(*options)
        ctx = harness.Context(torch.device("cpu"), 0, 1, args)
        (mode,) = sgan_train.modes(args)
        row = sgan_train.measure({"batch": 1, "input_size": [33, 33], **mode}, ["reference"], ctx)
        assert row["reference"]["iterations_timed"] == 1 and seen == [expected], options


def test_sgan_train_modes_are_every_combination_of_the_options():
    args = sgan_train_args("--precision", "fp32,bf16", "--memory-format", "contiguous,channels_last",
                           "--checkpointing", "off,on")
    assert [sgan_train.mode_name(mode) for mode in sgan_train.modes(args)] == [
        "fp32 contiguous", "fp32 contiguous ckpt", "fp32 channels_last", "fp32 channels_last ckpt",
        "bf16 contiguous", "bf16 contiguous ckpt", "bf16 channels_last", "bf16 channels_last ckpt"]


def test_sgan_train_cli_measures_every_mode(tmp_path):
    """Every size x mode x backend is a row, measured in its child process (two modes here: each child
    starts torch, so the test keeps to what the combination adds)."""
    path = tmp_path / "sgan_train.json"
    assert run.main(["sgan_train", "--device", "cpu", "--batch", "1", "--sizes", "33", "--width", "0.0625",
                     "--precision", "fp32,bf16", "--memory-format", "channels_last", "--checkpointing", "on",
                     "--warmup", "0", "--repeats", "1", "--output", str(path)]) == 0
    written = json.loads(path.read_text())
    rows = {(row["precision"], row["memory_format"], row["checkpointing"], row["backend"]): row
            for row in written["results"]}
    fused = ["cpp"] if _ext.available("cpu") else []
    assert sorted(rows) == sorted((p, "channels_last", True, b) for p in ("fp32", "bf16")
                                  for b in ["reference"] + fused)
    for row in rows.values():
        assert row["status"] == "ok" and row["peak_memory_mb"] > row["memory_at_start_mb"] > 0, row


@pytest.mark.parametrize("text, expected", [("8GiB", 8 * 2 ** 30), ("1.5MiB", 3 * 2 ** 19), ("512 KiB", 2 ** 19),
                                            ("100B", 100)])
def test_memory_budget_reads_binary_units(text, expected):
    assert sgan_train.byte_size(text) == expected


@pytest.mark.parametrize("options, words", [
    (["--memory-budget", "8GB"], "expected a positive size with a unit in ['B', 'KiB', 'MiB', 'GiB'] such as 8GiB, "
                                 "got '8GB'"),
    (["--memory-budget", "0GiB"], "got '0GiB'"),
    (["--precision", "half"], "expected precisions among ['fp32', 'bf16', 'fp16'], got ['half']"),
    (["--memory-format", "nhwc"], "expected memory formats among ['contiguous', 'channels_last'], got ['nhwc']"),
    (["--checkpointing", "yes"], "expected checkpointing values among ['off', 'on'], got ['yes']"),
])
def test_sgan_train_bad_option_values_are_one_line_errors(capsys, options, words):
    with pytest.raises(SystemExit) as stopped:
        sgan_train_args(*options)
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and words in error


def test_memory_budget_on_cuda_is_refused_before_anything_runs():
    args = sgan_train_args("--memory-budget", "8GiB")
    with pytest.raises(ValueError, match=r"--memory-budget needs --device cpu"):
        registry.get("sgan_train").plan(args, torch.device("cuda"))


@pytest.mark.parametrize("options, words", [
    (["--precision", "fp16"], "--precision: fp16 (with loss scaling) needs --device cuda, got cpu; use bf16"),
    (["--max-size-backends", "nosuch"], "--max-size-backends: expected backends among ['reference'"),
    (["--skip-table"], "--skip-table: only with --find-max-size or --memory-budget"),
    (["--memory-budget", "8GiB", "--known-rows", "/nowhere.json"], "--known-rows: /nowhere.json is not a file"),
    (["--max-size-modes", "fp32 nhwc"],
     "--max-size-modes: expected modes among ['fp32 contiguous'], got ['fp32 nhwc']"),
    (["--max-size-limit", "2890"], "--max-size-limit: expected a side of the form 8k + 1 of at least 321, got 2890"),
    (["--max-size-limit", "313"], "--max-size-limit: expected a side of the form 8k + 1 of at least 321, got 313"),
])
def test_sgan_train_plan_refuses_what_cannot_run_here(options, words):
    with pytest.raises(ValueError) as error:
        registry.get("sgan_train").plan(sgan_train_args(*options), torch.device("cpu"))
    assert str(error.value).startswith(words)


@pytest.mark.parametrize("text, error", [("{bad", "JSONDecodeError"), ("[1]", "AttributeError"),
                                         ('{"max_size": {"cpp": {"probes_mib": {}}}}', "IndexError")])
def test_sgan_train_plan_refuses_a_known_rows_file_that_is_no_result(tmp_path, text, error):
    """A --known-rows file that is not an sgan_train result stops the plan with one line, before any
    measurement, instead of a traceback after the table."""
    path = tmp_path / "earlier.json"
    path.write_text(text)
    with pytest.raises(ValueError) as raised:
        registry.get("sgan_train").plan(sgan_train_args("--memory-budget", "8GiB", "--known-rows", str(path)),
                                        torch.device("cpu"))
    assert str(raised.value).startswith(f"--known-rows: {path}: expected an sgan_train result")
    assert error in str(raised.value) and "\n" not in str(raised.value)


def test_memory_budget_search_keeps_the_largest_size_under_the_budget(monkeypatch, capsys, tmp_path):
    """The search of --find-max-size with the child's peak RSS against the budget (children faked:
    peak = 100 MiB + size² · 1 KiB, the model the prediction fits); a child killed by the kernel
    counts as not fitting."""
    probes = []

    def fake_child(name, case, backend, args, device_type, warmup, repeats):
        size = case["input_size"][0]
        probes.append((name, backend, case["precision"], size, warmup, repeats))
        if size > 900:
            raise ChildFailed("the child process died (exit code -9; killed, perhaps out of memory)")
        return {"status": "ok", "peak_memory_mb": 100 + size * size / 1024}

    monkeypatch.setattr(harness, "measure_in_child", fake_child)
    args = sgan_train_args("--memory-budget", "400MiB", "--precision", "bf16")
    ctx = harness.Context(torch.device("cpu"), 0, 1, args)
    plan = Plan(config={"batch": 1}, cases=[], backends=["reference"])
    found = sgan_train.summarize([], plan, ctx)
    # 100 + s²/1024 <= 400 up to s = 554: 321 fits, then the fit through 321 alone is none (growth to
    # 481), through 321 and 481 it predicts 553: 553 fits, 561 does not
    assert found["max_size"]["reference bf16 contiguous"] == {
        "max_size": 553, "capped_at_limit": False, "sides_tried": 4,
        "probes_mib": {str(s): 100 + s * s / 1024 for s in (321, 481, 553, 561)}}
    assert [probe[3] for probe in probes] == [321, 481, 553, 561]
    assert {probe[:3] for probe in probes} == {("sgan_train", "reference", "bf16")}
    assert {probe[4:] for probe in probes} == {(0, 1)}
    # the benchmark's own rows seed the search: with 321² and 481² known, only 553 and 561 are tried
    probes.clear()
    rows = [{"backend": "reference", "status": "ok", "batch": 1, "input_size": [s, s], "precision": "bf16",
             "memory_format": "contiguous", "checkpointing": False, "peak_memory_mb": 100 + s * s / 1024}
            for s in (321, 481)]
    found = sgan_train.summarize(rows, plan, ctx)
    assert found["max_size"]["reference bf16 contiguous"]["max_size"] == 553 and [p[3] for p in probes] == [553, 561]
    probes.clear()   # --max-size-modes leaves the other modes out of the search
    args = sgan_train_args("--memory-budget", "400MiB", "--precision", "fp32,bf16",
                           "--max-size-modes", "bf16 contiguous")
    found = sgan_train.summarize(rows, plan, harness.Context(torch.device("cpu"), 0, 1, args))
    assert list(found["max_size"]) == ["reference bf16 contiguous"] and {p[2] for p in probes} == {"bf16"}
    # --skip-table --known-rows: the search alone, seeded by an earlier result's rows and probes
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"config": {"batch": 1}, "results": rows[:1], "max_size": {
        "reference bf16 contiguous": {"max_size": 481, "probes_mib": {"481": 100 + 481 * 481 / 1024}}}}))
    probes.clear()
    args = sgan_train_args("--memory-budget", "400MiB", "--precision", "bf16", "--skip-table",
                           "--known-rows", str(earlier))
    assert registry.get("sgan_train").plan(args, torch.device("cpu")).cases == []
    found = sgan_train.summarize([], plan, harness.Context(torch.device("cpu"), 0, 1, args))
    assert found["max_size"]["reference bf16 contiguous"]["max_size"] == 553 and [p[3] for p in probes] == [553, 561]
    assert not sgan_train.fits("reference", 1, 961, ctx, {**FP32}, 2 ** 40)[0]
    assert "961²: does not fit (killed)" in capsys.readouterr().out


@pytest.mark.parametrize("limit_options, limit",
                         [([], sgan_train.MAX_SIZE_LIMIT), (["--max-size-limit", "2889"], 2889)])
def test_memory_budget_search_tries_the_limit_when_the_fit_predicts_beyond_it(monkeypatch, limit_options, limit):
    """A mode whose fitted side lies beyond the search limit (4001, or --max-size-limit) is probed at
    the limit next, not grown step by step up to it: 321, 481, then the limit, which fits, so the
    result is capped there."""
    probes = []

    def fake_child(name, case, backend, args, device_type, warmup, repeats):
        probes.append(case["input_size"][0])
        return {"status": "ok", "peak_memory_mb": 100 + case["input_size"][0] ** 2 / 4096}

    monkeypatch.setattr(harness, "measure_in_child", fake_child)
    args = sgan_train_args("--memory-budget", "8GiB", "--precision", "bf16", *limit_options)
    found = sgan_train.summarize([], Plan(config={"batch": 1}, cases=[], backends=["reference"]),
                                 harness.Context(torch.device("cpu"), 0, 1, args))
    assert probes == [321, 481, limit]
    assert found["max_size"]["reference bf16 contiguous"]["max_size"] == limit
    assert found["max_size"]["reference bf16 contiguous"]["capped_at_limit"]


def test_memory_budget_probe_runs_one_iteration_in_a_child_and_compares_its_peak_rss():
    args = sgan_train_args("--memory-budget", "8GiB")
    ctx = harness.Context(torch.device("cpu"), 0, 1, args)
    fits, peak = sgan_train.fits("reference", 1, 33, ctx, FP32, budget=2 ** 40)
    assert fits and 2 ** 20 < peak < 2 ** 40
    assert not sgan_train.fits("reference", 1, 33, ctx, FP32, budget=2 ** 20)[0]  # torch alone needs more
