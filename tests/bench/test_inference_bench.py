"""bench/inference.py: the seeds and infer passes at scales, each (case, backend) in a child process."""
import json

import pytest

from bench import run
from sgan import _ext


def test_inference_cli_measures_seeds_with_each_backend_and_infer_once(tmp_path):
    path = tmp_path / "inference.json"
    assert run.main(["inference", "--device", "cpu", "--width", "0.0625", "--scales", "0.25,0.5",
                     "--precision", "bf16", "--warmup", "0", "--repeats", "1", "--output", str(path)]) == 0
    rows = json.loads(path.read_text())["results"]
    fused = ["cpp"] if _ext.available("cpu") else []
    assert sorted((r["step"], r["scale"], r["precision"], r["backend"]) for r in rows) == sorted(
        (step, scale, precision, backend) for step in ("seeds", "infer") for scale in (0.25, 0.5)
        for precision in ("bf16",) for backend in ["reference"] + fused)
    for row in rows:
        if row["step"] == "infer" and row["backend"] == "reference":
            assert row["status"].startswith("skipped: DeepLab has no attention"), row
        else:
            assert row["status"] == "ok" and row["peak_memory_mb"] > 0, row
    assert {tuple(r["network_input"]) for r in rows if r["step"] == "seeds"} == {(80, 80), (160, 160)}
    assert {tuple(r["network_input"]) for r in rows if r["step"] == "infer"} == {(94, 125), (188, 250)}


def test_inference_refuses_fp16_on_the_cpu_before_measuring(capsys, tmp_path):
    with pytest.raises(SystemExit) as stopped:
        run.main(["inference", "--device", "cpu", "--precision", "fp16", "--output", str(tmp_path / "x.json")])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == ("python -m bench.run inference: error: --precision: fp16 needs --device "
                                       "cuda, got cpu; use bf16\n")
    assert not (tmp_path / "x.json").exists()
