"""Faults and odd inputs a user meets through the CLI: palette saliency maps, SIGTERM, two runs on one
work dir, an unwritable work dir, a full disk, list files with a BOM or repeated ids, tables in the log."""
import codecs
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from sgan import cli
from sgan.experiments.synthetic import generate
from sgan.utils.workdir import LOCK_NAME
from tests.pipeline.test_stage1_pipeline import make_tiny_voc, tiny_config, write_yaml
from tests.pipeline.test_stage2_pipeline import stage2_config

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHILD_ENV = {**os.environ, "PYTHONPATH": REPOSITORY, "SGAN_NO_PROGRESS": "1"}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A tiny experiment whose labels and train-cam steps have run; returns (root, config path, work
    dir, VOC folder, saliency folder)."""
    root = tmp_path_factory.mktemp("faults")
    voc, saliency = make_tiny_voc(root / "voc")
    config = write_yaml(root / "exp.yaml", tiny_config(voc, saliency, root / "work"))
    assert cli.main(["run", config, "steps=[labels, train-cam]"]) == 0
    return root, config, root / "work", voc, saliency


def start_child(arguments, wrapper=None):
    """``python -m sgan.cli ARGUMENTS`` (or ``python WRAPPER ARGUMENTS``) in its own session, with
    SIGTERM and SIGINT at their defaults (a suite started in the background may ignore them)."""
    program = [wrapper] if wrapper else ["-m", "sgan.cli"]

    def defaults():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    return subprocess.Popen([sys.executable, *program, *arguments], cwd=REPOSITORY, text=True, env=CHILD_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=defaults)


def wait_for_line(process, text, seen):
    """Read the child's stderr into ``seen`` until a line holds ``text``; False if it ended first."""
    for line in process.stderr:
        seen.append(line)
        if text in line:
            return True
    return False


def finish(process, seen, timeout=120):
    """(return code, all of stderr); the child's group is killed if it outlives the timeout."""
    try:
        rest = process.communicate(timeout=timeout)[1]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode, "".join(seen) + rest


def train_ids(voc):
    with open(os.path.join(voc, "ImageSets", "Segmentation", "train_aug.txt")) as stream:
        return stream.read().split()


def model_state(path):
    state = torch.load(path, weights_only=True)
    return state["model"], state["history"]


def assert_same_weights(path, reference_path):
    """The same weights, bit for bit, and the same loss history (wall-clock terms, *_ms, aside)."""
    model, history = model_state(path)
    reference, reference_history = model_state(reference_path)
    assert model.keys() == reference.keys()
    for key in model:
        assert torch.equal(model[key], reference[key]), key

    def losses(entries):
        return [{k: v for k, v in entry.items() if not k.endswith("_ms")} for entry in entries]
    assert losses(history) == losses(reference_history)


# 1. saliency maps saved as palettes are read as the grey they display


def write_as(source_dir, target_dir, ids, convert):
    target_dir.mkdir()
    for image_id in ids:
        grey = np.asarray(Image.open(os.path.join(source_dir, image_id + ".png")))
        convert(grey).save(target_dir / f"{image_id}.png")


def inverted_palette(grey):
    """A P image displaying ``grey`` through a palette that is not the identity: index 255 - v shows v."""
    image = Image.fromarray((255 - grey).astype(np.uint8), "P")
    image.putpalette([255 - i for i in range(256) for _ in range(3)])
    return image


def test_palette_and_grey_alpha_saliency_maps_give_the_seeds_of_their_grey_map(experiment, capsys):
    root, config, work, voc, saliency = experiment
    ids = train_ids(voc)
    write_as(saliency, root / "sal_p", ids, inverted_palette)
    write_as(saliency, root / "sal_la", ids, lambda grey: Image.fromarray(np.stack([grey, 255 - grey], -1), "LA"))
    seeds = {}
    for name, folder in (("l", saliency), ("p", root / "sal_p"), ("la", root / "sal_la")):
        assert cli.main(["initial-seeds", config, f"data.saliency_dir={folder}",
                         f"initial_seeds.out_dir=seeds_{name}"]) == 0
        seeds[name] = np.stack([np.asarray(Image.open(work / f"seeds_{name}" / f"{i}.png")) for i in ids])
    assert (seeds["l"] == 0).any() and (seeds["l"] == 255).any()   # the saliency decides some pixels
    assert np.array_equal(seeds["p"], seeds["l"]) and np.array_equal(seeds["la"], seeds["l"])
    # a 16-bit map is refused, naming the file and its mode
    (root / "sal_16").mkdir()
    for image_id in ids:
        grey = np.asarray(Image.open(os.path.join(saliency, image_id + ".png"))).astype(np.uint16) * 257
        Image.fromarray(grey).save(root / "sal_16" / f"{image_id}.png")
    capsys.readouterr()
    assert cli.main(["initial-seeds", config, f"data.saliency_dir={root / 'sal_16'}",
                     "initial_seeds.out_dir=seeds_16"]) == 2
    error = capsys.readouterr().err
    assert f"{root / 'sal_16' / ids[0]}.png has mode I;16, expected an 8-bit grey map" in error, error
    assert "Traceback" not in error


# 2. SIGTERM


def test_sigterm_during_training_checkpoints_the_current_iteration_and_resume_is_bit_exact(experiment):
    """SIGTERM to the child's process group (as SLURM sends it) while train-cam runs, with no
    periodic checkpoint to fall back on: the checkpoint is the current iteration's."""
    root, config, work, _, _ = experiment
    arguments = ["train-cam", config, "train_cam.iterations=60", "train_cam.log_every=1",
                 "train_cam.checkpoint_every=1000", "train_cam.checkpoint=ckpt/term.pt", "num_workers=1"]
    process, seen = start_child(arguments), []
    assert wait_for_line(process, "train-cam: it 2/60", seen), "".join(seen)
    os.killpg(process.pid, signal.SIGTERM)
    code, error = finish(process, seen)
    assert code == 143, error
    assert error.strip().splitlines()[-1] == ("sgan: terminated (SIGTERM); continue with: sgan "
                                              + " ".join(arguments) + " --resume"), error
    assert "Traceback" not in error, error
    stopped = torch.load(work / "ckpt" / "term.last.pt", weights_only=True)["iteration"]
    assert 2 <= stopped < 60 and not (work / "ckpt" / "term.pt").exists()
    assert f"terminated (SIGTERM) after iteration {stopped} of 60" in error
    assert cli.main([*arguments, "--resume"]) == 0
    assert f"resuming from {work / 'ckpt' / 'term.last.pt'} at iteration {stopped}" in (work / "sgan.log").read_text()
    assert cli.main([*arguments, "train_cam.checkpoint=ckpt/term_ref.pt"]) == 0   # uninterrupted
    assert_same_weights(work / "ckpt" / "term.pt", work / "ckpt" / "term_ref.pt")


def test_sigterm_to_train_seg_and_its_crf_workers_checkpoints_and_resumes_bit_exact(tmp_path):
    """SIGTERM to the whole process group also reaches train-seg's CRF worker processes, which it ends:
    the step still stops with the checkpoint of its last finished iteration."""
    info = generate(str(tmp_path / "data"), num_train=4, num_val=3, image_size=(64, 64), classes=3)
    seeds_dir = tmp_path / "seeds"
    seeds_dir.mkdir()
    for image_id in info["train_ids"]:
        mask = np.array(Image.open(os.path.join(info["segmentation_class_aug"], image_id + ".png")))
        Image.fromarray(mask).save(seeds_dir / f"{image_id}.png")
    work = tmp_path / "work"
    config = stage2_config(dict(info, seeds=str(seeds_dir)), work,
                           train_seg={"iterations": 30, "log_every": 1, "checkpoint_every": 1000})
    assert config["train_seg"]["crf_processes"] == 1
    config_path = write_yaml(tmp_path / "exp.yaml", config)
    arguments = ["train-seg", config_path]
    process, seen = start_child(arguments), []
    assert wait_for_line(process, "train-seg: it 2/30", seen), "".join(seen)
    os.killpg(process.pid, signal.SIGTERM)
    code, error = finish(process, seen)
    assert code == 143, error
    assert error.strip().splitlines()[-1] == ("sgan: terminated (SIGTERM); continue with: sgan train-seg "
                                              f"{config_path} --resume"), error
    assert "Traceback" not in error, error
    assert torch.load(work / "ckpt" / "deeplab.last.pt", weights_only=True)["iteration"] >= 2
    assert cli.main([*arguments, "--resume"]) == 0
    assert cli.main([*arguments, "train_seg.checkpoint=ckpt/reference.pt"]) == 0
    assert_same_weights(work / "ckpt" / "deeplab.pt", work / "ckpt" / "reference.pt")


@pytest.fixture
def sigterm_guard():
    """Without the CLI's handler, SIGTERM fails the test instead of ending pytest."""
    def unhandled(signum, frame):
        raise AssertionError("SIGTERM reached the handler the CLI was started with")
    previous = signal.signal(signal.SIGTERM, unhandled)
    yield unhandled
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_that_also_ends_a_worker_mid_iteration_stops_at_the_last_finished_one(experiment, monkeypatch,
                                                                                     sigterm_guard):
    """The signal reaches this process, and a worker it ended fails the fetch of iteration 4's batch."""
    from sgan.data.voc import VOCTrainSet
    _, config, work, _, _ = experiment
    real, calls = VOCTrainSet.__getitem__, []

    def getitem(self, item):
        calls.append(item)
        if len(calls) == 13:   # the first sample of the fourth batch of 4
            os.kill(os.getpid(), signal.SIGTERM)
            raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated.")
        return real(self, item)
    monkeypatch.setattr(VOCTrainSet, "__getitem__", getitem)
    arguments = ["train-cam", config, "train_cam.iterations=8", "train_cam.checkpoint_every=1000",
                 "train_cam.checkpoint=ckpt/worker.pt"]
    assert cli.main(arguments) == 143
    assert torch.load(work / "ckpt" / "worker.last.pt", weights_only=True)["iteration"] == 3
    monkeypatch.setattr(VOCTrainSet, "__getitem__", real)
    assert cli.main([*arguments, "--resume"]) == 0
    assert cli.main([*arguments, "train_cam.checkpoint=ckpt/worker_ref.pt"]) == 0
    assert_same_weights(work / "ckpt" / "worker.pt", work / "ckpt" / "worker_ref.pt")


def test_a_failed_training_leaves_no_worker_behind(experiment, monkeypatch):
    """Workers ignore SIGTERM, so the terminate() of the interpreter's exit cannot end them: a loop
    that fails must shut them down itself, even while the traceback keeps its DataLoader alive
    (the process would otherwise hang at exit). Children alive before the run (the shared CRF pools
    that earlier tests of this process started, sgan.crf) are not the loop's."""
    import multiprocessing

    from sgan.data.voc import VOCTrainSet
    _, config, _, _, _ = experiment

    def broken(self, item):
        raise RuntimeError("a bug in the dataset")
    monkeypatch.setattr(VOCTrainSet, "__getitem__", broken)
    before = set(multiprocessing.active_children())
    with pytest.raises(RuntimeError, match="a bug in the dataset") as failure:
        cli.main(["train-cam", config, "train_cam.checkpoint=ckpt/broken.pt", "num_workers=1"])
    assert failure.value is not None and set(multiprocessing.active_children()) - before == set()


def test_sigterm_in_a_step_that_does_not_train_stops_cleanly_and_a_rerun_completes(experiment, monkeypatch, capsys,
                                                                                   sigterm_guard):
    """A real SIGTERM to this process while initial-seeds writes its maps (after the third)."""
    import sgan.pipeline._stage1 as stage1
    _, config, work, _, _ = experiment
    real, written = stage1.save_png, []

    def save_then_signal(path, image):
        real(path, image)
        written.append(path)
        if len(written) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(stage1, "save_png", save_then_signal)
    arguments = ["initial-seeds", config, "initial_seeds.out_dir=seeds_term"]
    capsys.readouterr()
    assert cli.main(arguments) == 143
    assert signal.getsignal(signal.SIGTERM) is sigterm_guard   # the CLI's own handler is for its command only
    error = capsys.readouterr().err
    assert error.strip().splitlines()[-1] == "sgan: terminated (SIGTERM); continue with: sgan " + " ".join(
        arguments) + " --resume"
    assert "Traceback" not in error
    assert not (work / "seeds_term" / ".done.json").exists()   # not marked complete
    monkeypatch.setattr(stage1, "save_png", real)
    assert cli.main(arguments) == 0
    assert (work / "seeds_term" / ".done.json").exists() and len(list((work / "seeds_term").glob("*.png"))) == 8


# 3. two runs on one work dir


def test_a_second_run_on_a_busy_work_dir_is_refused_and_a_killed_runs_lock_is_taken_over(experiment, capsys):
    root, config, work, _, _ = experiment
    arguments = ["train-cam", config, "train_cam.iterations=100000", "train_cam.log_every=1",
                 "train_cam.checkpoint=ckpt/busy.pt", "num_workers=0"]
    process, seen = start_child(arguments), []
    try:
        assert wait_for_line(process, "train-cam: it 1/100000", seen), "".join(seen)
        resolved = (work / "config.resolved.yaml").read_bytes()
        lock = work / LOCK_NAME
        for command in (["train-cam", config, "train_cam.checkpoint=ckpt/other.pt"], ["run", config, "steps=[labels]"],
                        ["demo", config, f"work_dir={work}"], ["study", config, f"work_dir={work}"]):
            capsys.readouterr()
            assert cli.main(command) == 2, command
            error = capsys.readouterr().err.strip().splitlines()
            assert error == [f"sgan {command[0]}: error: work_dir: {work} is in use by another sgan run (pid "
                             f"{process.pid} on host {socket.gethostname()}, lock file {lock}); wait for it to "
                             "finish or set another work_dir"], error
        assert (work / "config.resolved.yaml").read_bytes() == resolved
        assert not (work / "ckpt" / "other.pt").exists()
    finally:
        os.killpg(process.pid, signal.SIGKILL)   # no clean-up: its pid stays in the lock file
        process.communicate()
    capsys.readouterr()
    assert cli.main(["labels", config]) == 0
    error = capsys.readouterr().err
    assert f"sgan: warning: taking over {lock}, left by pid {process.pid} on {socket.gethostname()}" in error
    assert lock.read_text() == ""   # released: it names no one


# 4. a work dir that cannot be written


def test_an_unwritable_work_dir_is_one_line_before_any_work(experiment, tmp_path, capsys, monkeypatch):
    _, config, _, _, _ = experiment
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    cases = {str(a_file): f"work_dir: {a_file} is a file, expected a folder",
             str(a_file / "work"): f"work_dir: cannot create {a_file / 'work'}: a part of its path is a file"}
    for work_dir, expected in cases.items():
        capsys.readouterr()
        assert cli.main(["labels", config, f"work_dir={work_dir}"]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith(f"sgan labels: error: {expected}"), error
    # a read-only file system (EROFS), which stops root too: the lock file cannot be created
    import sgan.utils.workdir as workdir
    real_open = workdir.os.open

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "ro")):
            raise OSError(30, "Read-only file system", path)
        return real_open(path, *args, **kwargs)
    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(workdir.os, "open", read_only)
    capsys.readouterr()
    assert cli.main(["labels", config, f"work_dir={tmp_path / 'ro'}"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [f"sgan labels: error: work_dir: {tmp_path / 'ro'} is not writable: cannot create "
                     f"{tmp_path / 'ro' / LOCK_NAME}: Read-only file system"], error
    assert os.listdir(tmp_path / "ro") == []


def test_a_read_only_mount_as_work_dir(experiment, tmp_path, capsys):
    """A real read-only file system, where the machine lets this user mount a tmpfs (root)."""
    _, config, _, _, _ = experiment
    mount = tmp_path / "mnt"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        cases = {mount: f"work_dir: {mount} is not writable: cannot create {mount / LOCK_NAME}: Read-only file system",
                 mount / "work": f"work_dir: cannot create {mount / 'work'}: Read-only file system"}
        for work_dir, expected in cases.items():
            capsys.readouterr()
            assert cli.main(["labels", config, f"work_dir={work_dir}"]) == 2
            assert capsys.readouterr().err.strip().splitlines() == [f"sgan labels: error: {expected}"]
    finally:
        subprocess.run(["umount", str(mount)], check=True)


# 5. a full disk while a checkpoint is written

FULL_DISK = textwrap.dedent('''\
    """Run sgan.cli with the second write of a file named *.last.pt failing with ENOSPC after 4 KB."""
    import errno
    import os
    import sys

    real_fdopen, opened = os.fdopen, []


    class FullDisk:
        def __init__(self, stream):
            self.stream, self.left = stream, 4096

        def write(self, data):
            if len(data) > self.left:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.left -= len(data)
            return self.stream.write(data)

        def __getattr__(self, name):
            return getattr(self.stream, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.stream.__exit__(*exc)


    def fdopen(handle, *args, **kwargs):
        stream = real_fdopen(handle, *args, **kwargs)
        if ".last.pt." in os.readlink(f"/proc/self/fd/{handle}"):
            opened.append(handle)
            if len(opened) == 2:
                return FullDisk(stream)
        return stream


    os.fdopen = fdopen
    from sgan import cli
    sys.exit(cli.main(sys.argv[1:]))
''')


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="the wrapper finds file names in /proc/self/fd")
def test_a_full_disk_while_checkpointing_is_one_line_and_resume_is_bit_exact(experiment, tmp_path):
    _, config, work, _, _ = experiment
    wrapper = tmp_path / "full_disk.py"
    wrapper.write_text(FULL_DISK)
    arguments = ["train-cam", config, "train_cam.iterations=8", "train_cam.checkpoint_every=2",
                 "train_cam.checkpoint=ckpt/full.pt"]
    code, error = finish(start_child(arguments, str(wrapper)), [])
    last = work / "ckpt" / "full.last.pt"
    assert code == 2, error
    assert error.strip().splitlines()[-1] == (f"sgan train-cam: error: cannot write {last}: No space left on "
                                              "device; the file there before, if any, is unchanged"), error
    assert "Traceback" not in error and "enforce fail" not in error
    assert torch.load(last, weights_only=True)["iteration"] == 2   # the first checkpoint, kept
    assert not [name for name in os.listdir(work / "ckpt") if name.endswith(".tmp")]
    assert cli.main([*arguments, "--resume"]) == 0
    assert cli.main([*arguments, "train_cam.checkpoint=ckpt/full_ref.pt"]) == 0
    assert_same_weights(work / "ckpt" / "full.pt", work / "ckpt" / "full_ref.pt")


# 6, 7. list files with a byte-order mark, repeated ids


def test_a_list_and_a_config_written_with_a_byte_order_mark(experiment, tmp_path):
    """As a Windows editor saves them: a BOM, CRLF line ends and a blank line."""
    _, _, _, voc, saliency = experiment
    ids = train_ids(voc)
    list_file = tmp_path / "windows.txt"
    list_file.write_bytes(codecs.BOM_UTF8 + "\r\n".join(ids[:4] + [""] + ids[4:]).encode() + b"\r\n")
    work = tmp_path / "work"
    config = tmp_path / "exp.yaml"
    write_yaml(config, tiny_config(voc, saliency, work, data={"train_list": str(list_file)}))
    config.write_bytes(codecs.BOM_UTF8 + config.read_bytes())
    assert cli.main(["labels", str(config)]) == 0
    assert list(json.loads((work / "labels.json").read_text())["labels"]) == ids
    # a labels file edited by hand on Windows
    labels = work / "labels.json"
    labels.write_bytes(codecs.BOM_UTF8 + labels.read_bytes().replace(b"\n", b"\r\n"))
    assert cli.main(["train-cam", str(config), "train_cam.iterations=1"]) == 0


def test_repeated_ids_in_a_list_are_used_once_with_one_warning(experiment, tmp_path, capsys):
    _, _, _, voc, saliency = experiment
    ids = train_ids(voc)
    list_file = tmp_path / "repeated.txt"
    list_file.write_text("\n".join(ids[:3] + [ids[1]] + ids[3:] + [ids[1], ids[5]]) + "\n")
    work = tmp_path / "work"
    config = write_yaml(tmp_path / "exp.yaml", tiny_config(voc, saliency, work, data={"train_list": str(list_file)}))
    capsys.readouterr()
    assert cli.main(["run", config, "steps=[labels, train-cam, initial-seeds]"]) == 0
    error = capsys.readouterr().err
    warning = (f"image list: {list_file} lists 2 id(s) more than once ({', '.join(sorted([ids[1], ids[5]]))}); "
               "each is used once, at its first line")
    assert error.count(warning) == 1 and (work / "sgan.log").read_text().count(warning) == 1, error
    assert list(json.loads((work / "labels.json").read_text())["labels"]) == ids
    assert f"initial-seeds: wrote {len(ids)} seed maps" in error
    assert len(list((work / "seeds0").glob("*.png"))) == len(ids)


# 8. tables in the log


def test_the_eval_table_goes_to_the_log_once_and_to_the_terminal_once(experiment, capsys):
    _, config, work, voc, _ = experiment
    capsys.readouterr()
    assert cli.main(["eval", config, f"eval.predictions={os.path.join(voc, 'SegmentationClass')}"]) == 0
    captured = capsys.readouterr()
    table = captured.out.strip()
    assert "mIoU" in table and "100.0" in table
    assert table not in captured.err
    assert (work / "sgan.log").read_text().count(table) == 1
