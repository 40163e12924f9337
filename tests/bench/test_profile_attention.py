"""bench.profile_attention records a fused backend's profile with the split into GEMMs, the
row-minimum pass and the rest, in a JSON file with the benchmarks' header."""
import json
import os
import subprocess
import sys

import pytest

from sgan import _ext

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.skipif(not _ext.available("cpu"), reason="profiles the C++ backend")
def test_profile_json_splits_gemm_row_minimum_and_the_rest(tmp_path):
    output = tmp_path / "profile.json"
    command = [sys.executable, "-m", "bench.profile_attention", "--device", "cpu", "--threads", "1", "--batch", "1",
               "--size", "9", "--preset", "official,paper", "--backends", "cpp", "--channels", "16",
               "--key-channels", "8", "--repeats", "2", "--rounds", "2", "--output", str(output)]
    result = subprocess.run(command, cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout
    data = json.loads(output.read_text())
    assert data["benchmark"] == "profile_attention" and data["threads"] == 1
    assert data["command"].startswith("python -m bench.profile_attention") and "git" in data
    assert data["rounds"] == 2 and sorted(p["round"] for p in data["profiles"]) == [0, 0, 1, 1]
    # per case the median over the rounds (of two: their mean) and the ratios' range
    for m in data["medians"]:
        rounds = [p for p in data["profiles"] if (p["preset"], p["size"]) == (m["preset"], m["size"])]
        assert m["rounds"] == 2 and len(rounds) == 2
        ratios = [p["total_over_gemm"] for p in rounds]
        assert m["total_over_gemm"] == pytest.approx(sum(ratios) / 2)
        assert m["total_over_gemm_range"] == [min(ratios), max(ratios)]
        every = [p["total_over_all_gemms"] for p in rounds]
        assert m["total_over_all_gemms"] == pytest.approx(sum(every) / 2)
        assert m["total_over_all_gemms_range"] == [min(every), max(every)]
        assert m["total_ms"] == pytest.approx(sum(p["total_ms"] for p in rounds) / 2)
    assert sorted(m["preset"] for m in data["medians"]) == ["official", "paper"]
    assert "medians over 2 round(s)" in result.stdout
    profiles = {p["preset"]: p for p in data["profiles"] if p["round"] == 0}
    assert sorted(profiles) == ["official", "paper"]
    for preset, p in profiles.items():
        assert (p["backend"], p["size"], p["batch"], p["channels"], p["key_channels"]) == ("cpp", 9, 1, 16, 8)
        assert p["gemm_ms"] > 0 and p["other_ms"] > 0, preset
        assert p["gemm_ms"] + p["row_min_ms"] + p["other_ms"] == pytest.approx(p["total_ms"])
        assert sum(k["us_per_iter"] for k in p["kernels"]) / 1e3 == pytest.approx(p["total_ms"])
        assert p["total_over_gemm"] == pytest.approx(p["total_ms"] / p["gemm_ms"])
        assert p["total_without_row_min_over_gemm"] == pytest.approx((p["total_ms"] - p["row_min_ms"]) / p["gemm_ms"])
        assert p["total_over_all_gemms"] == pytest.approx(p["total_ms"] / (p["gemm_ms"] + p["row_min_gemm_ms"]))
        # the GEMMs outside the row-minimum pass are at most all of the profile's matrix-product time;
        # no matrix-vector product is left (K . q_g, the sums of K dden and G mean_coef come out of GEMMs)
        products = sum(k["us_per_iter"] for k in p["kernels"] if k["gemm"]) / 1e3
        assert {k["name"] for k in p["kernels"] if k["gemm"]} <= {"aten::bmm", "aten::baddbmm_"}, preset
        assert p["gemv_ms"] == 0, preset
        assert 0 < p["gemm_ms"] <= products * (1 + 1e-9), preset
    assert profiles["paper"]["row_min_ms"] == 0  # no shift: no row-minimum pass
    assert profiles["paper"]["row_min_gemm_ms"] == 0 and profiles["paper"]["row_min_over_gemm"] is None
    official = profiles["official"]
    assert 0 < official["row_min_gemm_ms"] < official["row_min_ms"]  # the pass's tile GEMMs, part of it
    assert official["row_min_over_gemm"] == pytest.approx(official["row_min_ms"] / official["row_min_gemm_ms"])
    assert "row-minimum pass" in result.stdout and "over every GEMM" in result.stdout
