"""Dense CRF: moves a blurry, misplaced probability map onto the true colour boundary; deterministic;
pool workers end with their parent."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("pydensecrf", reason="the dense CRF needs the pydensecrf2 package")

from sgan.crf import TEST_SCALE, TRAIN_SCALE, DenseCRFPool, dense_crf  # noqa: E402


def two_region_scene(height, width, boundary, shift, blur, seed=0):
    """Left region reddish, right region bluish (columns >= boundary), Gaussian noise sigma 8; a
    2-label probability map whose soft edge sits ``shift`` columns right of the true boundary."""
    rng = np.random.default_rng(seed)
    columns = np.arange(width)[None, :].repeat(height, 0)
    truth = (columns >= boundary).astype(np.int64)
    colours = np.where(truth[..., None] == 0, np.array([200, 70, 60]), np.array([50, 80, 190]))
    image = np.clip(colours + rng.normal(0, 8, colours.shape), 0, 255).astype(np.uint8)
    right = 1 / (1 + np.exp(-(columns - boundary - shift) / blur))
    probs = np.stack([1 - right, right]).astype(np.float32)
    return image, probs, truth


def edge_offset(probs, boundary):
    """Mean over rows of |first column labelled right - true boundary| of the argmax."""
    labels = probs.argmax(0)
    first_right = np.array([np.flatnonzero(row)[0] if row.any() else len(row) for row in labels])
    return float(np.abs(first_right - boundary).mean())


@pytest.mark.parametrize("size, boundary, shift, blur, scale", [
    ((36, 44), 18, 6, 3.0, TEST_SCALE),   # test time: full-resolution constants
    ((41, 41), 17, 5, 2.0, TRAIN_SCALE),  # training: 41x41 outputs, widths divided by 12
])
def test_crf_moves_probability_to_the_region_boundary(size, boundary, shift, blur, scale):
    image, probs, truth = two_region_scene(*size, boundary, shift, blur)
    refined = dense_crf(image[None], probs[None], scale=scale, processes=1)[0]
    assert refined.shape == probs.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-5)
    before, after = edge_offset(probs, boundary), edge_offset(refined, boundary)
    assert before == pytest.approx(shift, abs=1)
    assert after <= 1.0, f"edge still {after} columns off (was {before})"
    true_mass_before = np.take_along_axis(probs, truth[None], 0).mean()
    true_mass_after = np.take_along_axis(refined, truth[None], 0).mean()
    assert true_mass_after > true_mass_before + 0.05


def test_crf_is_deterministic_serial_pool_and_futures_agree():
    scenes = [two_region_scene(30, 34, 12 + k, 4, 2.0, seed=k) for k in range(3)]
    images = np.stack([s[0] for s in scenes])
    probs = np.stack([s[1] for s in scenes])
    serial = dense_crf(images, probs, scale=TEST_SCALE, processes=1)
    assert np.array_equal(serial, dense_crf(images, probs, scale=TEST_SCALE, processes=1))
    pooled = dense_crf(images, probs, scale=TEST_SCALE, processes=2)
    assert np.array_equal(serial, pooled)
    with DenseCRFPool(processes=2) as pool:
        first = pool.submit(images, torch.from_numpy(probs), scale=TEST_SCALE)
        second = pool.submit(images[:1], probs[:1], scale=TEST_SCALE)
        first_result = first.result(timeout=120)
        assert isinstance(first_result, torch.Tensor)  # same kind as the probs given
        assert np.array_equal(first_result.numpy(), serial)
        assert np.array_equal(second.result(timeout=120), serial[:1])


def _scene_batch():
    image, probs, _ = two_region_scene(8, 10, 5, 1, 1.0)
    return image[None], probs[None]


@pytest.mark.parametrize("change, error, words", [
    (lambda im, pr: (im.astype(np.float32), pr), TypeError, ["images", "uint8"]),
    (lambda im, pr: (im[:, :, ::-1], pr[:, :, :, ::-1]), ValueError, ["images", "C-contiguous"]),
    (lambda im, pr: (im[..., :2].copy(), pr), ValueError, ["images", "(B, H, W, 3)"]),
    (lambda im, pr: (im, pr[:, :, :7].copy()), ValueError, ["probs", "H=8"]),
    (lambda im, pr: (im, pr * 2), ValueError, ["probs", "sum to 1"]),
    (lambda im, pr: (im, pr - 0.5), ValueError, ["probs", "non-negative"]),
    (lambda im, pr: (im, pr[0]), ValueError, ["probs", "(B, K, H, W)"]),
    (lambda im, pr: (im, (pr > 0.5).astype(np.int64)), TypeError, ["probs", "floating"]),
])
def test_bad_inputs(change, error, words):
    images, probs = change(*_scene_batch())
    with pytest.raises(error) as info:
        dense_crf(images, probs, processes=1)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_bad_options():
    images, probs = _scene_batch()
    for kwargs, word in (({"scale": 0}, "scale"), ({"iterations": 0}, "iterations"), ({"processes": 0}, "processes")):
        with pytest.raises(ValueError, match=word):
            dense_crf(images, probs, **kwargs)
    with pytest.raises(ValueError, match="processes"):
        DenseCRFPool(processes=-1)


POOL_PARENT = """
import multiprocessing, sys, threading, time
import numpy as np
from sgan.crf import DenseCRFPool

if __name__ == "__main__":
    pool = DenseCRFPool(processes=2)
    images = np.zeros((2, 8, 8, 3), np.uint8)
    probs = np.full((2, 2, 8, 8), 0.5, np.float32)
    if sys.argv[1] == "thread":  # the workers are started by a thread that then ends
        starter = threading.Thread(target=lambda: pool.submit(images, probs).result())
        starter.start()
        starter.join()
    pool.submit(images, probs).result()
    print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
    time.sleep(120)
"""


def _running(pid):
    """True while ``pid`` exists and is not a zombie (an exited child nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads process states from /proc")
@pytest.mark.parametrize("started_by", ["main", "thread"])
def test_pool_workers_exit_when_their_parent_is_killed(tmp_path, started_by):
    """SIGKILL of the process owning a DenseCRFPool ends its workers within seconds; workers started
    by a thread that has ended keep working until then (the parent-death signal is not armed)."""
    script = tmp_path / "parent.py"
    script.write_text(POOL_PARENT)
    # import this checkout's sgan
    repository = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parent = subprocess.Popen([sys.executable, str(script), started_by], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": repository})
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(_running(pid) for pid in workers)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.time() + 5
    while any(_running(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.1)
    lingering = [pid for pid in workers if _running(pid)]
    for pid in lingering:
        os.kill(pid, signal.SIGKILL)
    assert not lingering, f"CRF workers {lingering} outlived their parent"
