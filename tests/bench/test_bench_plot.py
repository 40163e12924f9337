"""bench.plot: the attention benchmark's JSON to time and memory PNGs, through ``python -m bench.plot``."""
import json
import os
import subprocess
import sys

import pytest

from bench import plot

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def row(size, backend, ms, peak, status="ok", preset="official", **extra):
    fields = {"size": size, "positions": size * size, "batch": 2, "channels": 8, "key_channels": 4,
              "dtype": "float32", "preset": preset, "backend": backend, "status": status}
    if status == "ok":
        fields.update(forward_ms=ms / 3, forward_backward_ms=ms, peak_bytes=peak)
    fields.update(extra)
    return fields


def synthetic_result():
    """Two sizes, two presets, the project's backends, an sdpa comparison row and a skipped row."""
    rows = []
    for preset in ("official", "paper"):
        rows += [row(41, "reference", 300.0, 170e6, preset=preset), row(41, "cpp", 35.0, 31e6, preset=preset),
                 row(81, "cpp", 250.0, 110e6, preset=preset),
                 row(81, "reference", None, None, status="skipped: needs 9.6 GB", preset=preset),
                 row(41, "sdpa", 120.0, 90e6, preset=preset, comparison=True),
                 row(81, "sdpa", 1500.0, 900e6, preset=preset, comparison=True)]
    return {"device": "Test CPU", "device_type": "cpu", "git": "abc1234", "benchmark": "attention",
            "memory_method": "profiler", "config": {"batch": 2, "channels": 8, "key_channels": 4, "repeats": 3},
            "results": rows}


def run_plot(*args):
    return subprocess.run([sys.executable, "-m", "bench.plot", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)


def test_cli_writes_time_and_memory_pngs_deterministically(tmp_path):
    source = tmp_path / "cpu-test.json"
    source.write_text(json.dumps(synthetic_result()))
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        done = run_plot("--input", str(source), "--out-dir", str(out))
        assert done.returncode == 0, done.stderr
    for name in ("cpu-test-time.png", "cpu-test-memory.png"):
        data = (first / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
        assert data == (second / name).read_bytes(), f"{name} differs between two runs on the same JSON"
        assert b"tIME" not in data and b"Software" not in data


def test_series_holds_every_ok_row_and_the_comparison():
    rows = synthetic_result()["results"]
    time = plot.series(rows, "forward_backward_ms")
    assert list(time) == [("float32", "official"), ("float32", "paper")]
    official = time[("float32", "official")]
    assert list(official) == ["reference", "cpp", "sdpa"]
    assert official["reference"] == [(41, 300.0)]          # the skipped 81² row has no point
    assert official["cpp"] == [(41, 35.0), (81, 250.0)]
    assert official["sdpa"] == [(41, 120.0), (81, 1500.0)]
    assert plot.series(rows, "peak_bytes")[("float32", "paper")]["cpp"] == [(41, 31e6), (81, 110e6)]
    assert [plot.is_comparison(r) for r in rows[:6]] == [False, False, False, False, True, True]
    assert plot.not_plotted(rows)[0] == "reference 81² float32 official: skipped: needs 9.6 GB"


def test_without_a_comparison_row(tmp_path):
    payload = synthetic_result()
    payload["results"] = [r for r in payload["results"] if r["backend"] != "sdpa"]
    source = tmp_path / "cpu-plain.json"
    source.write_text(json.dumps(payload))
    done = run_plot("--input", str(source), "--out-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cpu-plain-time.png").exists() and (tmp_path / "cpu-plain-memory.png").exists()


@pytest.mark.parametrize("text, expected", [
    ('{"results": [', "expected JSON, got a parse error"),
    ('{"device": "x"}', "expected an object with a 'results' list"),
    ('{"results": [{"size": 41, "dtype": "float32", "preset": "paper", "status": "ok"}]}', "missing backend"),
    ('{"results": [{"size": 41, "dtype": "float32", "preset": "paper", "backend": "cpp", "status": "ok", '
     '"forward_backward_ms": "fast"}]}', "results[0].forward_backward_ms: expected a positive number"),
])
def test_malformed_json_is_one_line_naming_the_file(tmp_path, text, expected):
    source = tmp_path / "broken.json"
    source.write_text(text)
    done = run_plot("--input", str(source), "--out-dir", str(tmp_path / "img"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"bench.plot: error: {source}: ") and expected in lines[0], lines[0]
    assert not (tmp_path / "img").exists()


def test_the_committed_study_replots_to_the_same_png_twice(tmp_path, capsys):
    """``--study``: the README's study plot comes from the committed study.json alone; the same JSON
    gives the same bytes (no timestamp or software version in the PNG)."""
    study = os.path.join(plot.REPO_ROOT, "results", "study", "study.json")
    assert plot.main(["--study", study, "--out-dir", str(tmp_path)]) == 0
    first = (tmp_path / "study.png").read_bytes()
    assert first.startswith(b"\x89PNG") and len(first) > 10_000
    assert plot.main(["--study", study, "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "study.png").read_bytes() == first
    assert f"wrote {tmp_path / 'study.png'}" in capsys.readouterr().out


def test_a_file_that_is_not_a_study_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bench.json"
    bad.write_text(json.dumps(synthetic_result()))
    assert plot.main(["--study", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"bench.plot: error: {bad}") and "summary and table3" in err
    assert not (tmp_path / "bench.png").exists()
