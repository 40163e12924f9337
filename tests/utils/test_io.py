"""Atomic writes: final files follow the umask; temporaries of killed writers are removed at the next start."""
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from sgan import cli
from sgan.utils.io import STALE_AFTER_S, atomic_writer, save_json
from tests.pipeline.test_stage1_pipeline import make_tiny_voc, tiny_config, write_yaml

WRITER = """
import sys, time
from sgan.utils.io import atomic_writer
with atomic_writer(sys.argv[1], "wb") as stream:
    stream.write(b"x" * 4096)
    stream.flush()
    print("writing", flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_mode_a_plain_open_gives(tmp_path, umask):
    previous = os.umask(umask)
    try:
        save_json(tmp_path / "out.json", {"a": 1})
        with open(tmp_path / "plain.json", "w"):
            pass
    finally:
        os.umask(previous)
    mode = stat.S_IMODE(os.stat(tmp_path / "out.json").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain.json").st_mode) == 0o666 & ~umask


def test_a_failed_write_leaves_no_temporary(tmp_path):
    with pytest.raises(RuntimeError), atomic_writer(tmp_path / "out.bin") as stream:
        stream.write(b"partial")
        raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []


def _start_writer(path):
    """A process inside atomic_writer(path), between writing and renaming; returns the Popen."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    return writer


def _temporaries(folder):
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


def test_the_next_start_removes_killed_writers_temporaries_only(tmp_path):
    work = tmp_path / "work"
    ckpt = work / "ckpt"
    ckpt.mkdir(parents=True)
    killed = _start_writer(ckpt / "cam.last.pt")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    (killed_temp,) = _temporaries(ckpt)
    old_untagged = ckpt / ".sgan.last.pt.k3j_9xq2.tmp"   # an earlier version's (mkstemp) name, a day old
    fresh_untagged = ckpt / ".seg.last.pt.a8sk2j1m.tmp"  # ... written just now: its writer may be alive
    other_host = ckpt / ".x.pt.1@some-other-host.0a1b2c3d.tmp"
    not_ours = [ckpt / "notes.tmp", ckpt / ".notes.tmp", ckpt / "cam.pt"]
    for path in [old_untagged, fresh_untagged, other_host, *not_ours]:
        path.write_bytes(b"y")
    day_ago = time.time() - STALE_AFTER_S - 60
    os.utime(old_untagged, (day_ago, day_ago))
    before = set(_temporaries(ckpt))
    live = _start_writer(ckpt / "sgan.last.pt")  # e.g. another DDP rank or a second run, still writing
    try:
        (live_temp,) = set(_temporaries(ckpt)) - before
        voc, saliency = make_tiny_voc(tmp_path / "voc", num_train=2)
        config = write_yaml(tmp_path / "exp.yaml", tiny_config(voc, saliency, work))
        assert cli.main(["run", config, "steps=[labels]"]) == 0
        remaining = set(_temporaries(ckpt))
        assert killed_temp not in remaining and old_untagged.name not in remaining
        assert {live_temp, fresh_untagged.name, other_host.name, "notes.tmp", ".notes.tmp"} <= remaining
        assert (ckpt / "cam.pt").exists()
        assert "removed 2 temporary file(s)" in (work / "sgan.log").read_text()
    finally:
        live.kill()
        live.wait()
