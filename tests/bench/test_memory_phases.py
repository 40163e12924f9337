"""bench/memory_phases.py: one training iteration per setting in its own process, its peak resident set
and the phases the module hooks name."""
import json

from bench import memory_phases


def test_rows_phases_and_allocator_setting_at_a_small_size(tmp_path, capsys):
    output = tmp_path / "phases.json"
    memory_phases.main(["--size", "33", "--precision", "bf16", "--checkpointing", "off,on",
                        "--allocator", "glibc,return-freed", "--threads", "1", "--output", str(output)])
    result = json.loads(output.read_text())
    assert result["threads"] == 1 and "git" in result and "command" in result
    rows = result["rows"]
    assert [(r["checkpointing"], r["allocator"]) for r in rows] == [
        (False, "glibc"), (False, "return-freed"), (True, "glibc"), (True, "return-freed")]
    for row in rows:
        assert row["allocator_set"] == (row["allocator"] == "return-freed")
        assert row["size"] == 33 and row["precision"] == "bf16" and row["backend"] == "cpp"
        assert 0 < row["start_mib"] <= row["peak_mib"]
        assert max(row["phases"].values()) <= row["peak_mib"] + 1
        phases = set(row["phases"])
        assert {"forward conv1_1", "backward conv5_3", "forward attention", "backward attention",
                "backward seed_branch"} <= phases
        # a checkpointed block runs again in the backward pass, and only then
        assert any(p.startswith("recompute ") for p in phases) == row["checkpointing"]
    assert capsys.readouterr().out.count("peak") == 4


def test_fp16_is_refused_in_one_line(capsys):
    try:
        memory_phases.main(["--precision", "fp16"])
    except SystemExit as stop:
        assert stop.code == 2
    assert "fp16 needs CUDA" in capsys.readouterr().err


def test_the_calling_process_keeps_its_thread_count(tmp_path):
    """Only the children run with --threads: a caller's own computations keep their thread count
    (a changed count changes the rounding of its later convolutions)."""
    import torch
    before = torch.get_num_threads()
    memory_phases.main(["--size", "17", "--threads", "1" if before != 1 else "2", "--output", str(tmp_path / "p.json")])
    assert torch.get_num_threads() == before


def test_a_failing_setting_is_one_line_and_the_rows_before_it_are_kept(tmp_path, capsys):
    output = tmp_path / "phases.json"
    code = memory_phases.main(["--size", "17,17", "--backend", "no-such-backend", "--threads", "1",
                               "--output", str(output)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("bench.memory_phases: 17² fp32 contiguous") and "no-such-backend" in err
    assert not output.exists()  # nothing was measured
