"""Dense CRF (Krähenbühl & Koltun, via pydensecrf) on batches, in a process pool (docs/design.md §3).

Constants: unary -log p (p clipped at 1e-5); Gaussian term sxy = 3/s, compat 3; bilateral term
sxy = 80/s, srgb = 13, compat 10; 10 mean-field iterations. s = 12 for the boundary loss at the
41x41 training resolution (``TRAIN_SCALE``), s = 1 at test time on full-size images (``TEST_SCALE``).

``dense_crf`` is the synchronous batch function; ``DenseCRFPool`` owns worker processes and returns
futures, so training can submit the next batch's CRF and keep working while it runs. Workers end
with the process that started them, even when it is killed (:func:`_exit_with_parent`). The module
imports only numpy at the top, so that worker processes start quickly.
"""
import atexit
import concurrent.futures
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time

import numpy as np

TRAIN_SCALE = 12.0
TEST_SCALE = 1.0
ITERATIONS = 10
UNARY_CLIP = 1e-5
GAUSSIAN_SXY, GAUSSIAN_COMPAT = 3.0, 3.0
BILATERAL_SXY, BILATERAL_SRGB, BILATERAL_COMPAT = 80.0, 13.0, 10.0
PROB_SUM_TOLERANCE = 1e-3
PARENT_POLL_S = 0.5  # how often a worker checks that its parent is alive
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def default_processes():
    """The number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def crf_single(image, probs, scale, iterations):
    """One image: uint8 (H, W, 3) C-contiguous RGB, probs float (K, H, W) -> float32 (K, H, W)."""
    import pydensecrf.densecrf as dcrf

    num_labels, height, width = probs.shape
    crf = dcrf.DenseCRF2D(width, height, num_labels)
    unary = -np.log(np.clip(probs, UNARY_CLIP, 1.0)).reshape(num_labels, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=GAUSSIAN_SXY / scale, compat=GAUSSIAN_COMPAT)
    crf.addPairwiseBilateral(sxy=BILATERAL_SXY / scale, srgb=BILATERAL_SRGB, rgbim=image, compat=BILATERAL_COMPAT)
    result = np.asarray(crf.inference(iterations), dtype=np.float32)
    return result.reshape(num_labels, height, width)


def _to_numpy(value, name):
    if isinstance(value, np.ndarray):
        return value, False
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the package
        torch = None
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy(), True
    raise TypeError(f"{name}: expected a numpy array or a torch tensor, got {type(value).__name__}")


def check_crf_inputs(images, probs, scale, iterations):
    """Validated (images uint8 (B, H, W, 3), probs float32 (B, K, H, W), probs_was_tensor)."""
    images, _ = _to_numpy(images, "images")
    probs, probs_was_tensor = _to_numpy(probs, "probs")
    if images.dtype != np.uint8:
        raise TypeError(f"images: expected uint8 RGB, got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"images: expected shape (B, H, W, 3) RGB, got {images.shape}")
    if not images.flags["C_CONTIGUOUS"]:
        raise ValueError("images: expected a C-contiguous array (pydensecrf reads the raw buffer); "
                         "pass np.ascontiguousarray(images)")
    if probs.ndim != 4:
        raise ValueError(f"probs: expected shape (B, K, H, W), got {probs.shape}")
    B, H, W = images.shape[:3]
    if probs.shape[0] != B or probs.shape[2:] != (H, W):
        raise ValueError(f"probs: expected shape (B={B}, K, H={H}, W={W}) to match images {images.shape}, "
                         f"got {probs.shape}")
    if probs.shape[1] < 2:
        raise ValueError(f"probs: expected at least 2 labels, got K={probs.shape[1]}")
    if not np.issubdtype(probs.dtype, np.floating):
        raise TypeError(f"probs: expected floating probabilities, got dtype {probs.dtype}")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError("probs: expected finite, non-negative probabilities")
    sums = probs.sum(axis=1, dtype=np.float64)
    worst = float(np.abs(sums - 1.0).max())
    if worst > PROB_SUM_TOLERANCE:
        raise ValueError(f"probs: expected probabilities that sum to 1 over the label axis (1), "
                         f"largest deviation {worst:.3g}")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale > 0:
        raise ValueError(f"scale: expected a positive number, got {scale!r}")
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
        raise ValueError(f"iterations: expected a positive int, got {iterations!r}")
    return images, np.ascontiguousarray(probs, dtype=np.float32), probs_was_tensor


def _as_output(result, as_tensor):
    if as_tensor:
        import torch
        return torch.from_numpy(result)
    return result


class _SpawnedByMainThread:
    """Pickles (when a spawned worker's arguments are sent to it, in the thread that starts it) as
    True if that thread is the main thread. Linux's parent-death signal fires when the *thread* that
    started a worker ends, so it may only be armed for workers started by the main thread, which
    lasts as long as the process; a worker started by a short-lived thread would otherwise be killed
    with the thread and break the pool."""

    def __reduce__(self):
        return bool, (threading.current_thread() is threading.main_thread(),)


def _exit_with_parent(parent_pid, spawned_by_main_thread):
    """Worker initializer: end this worker when the process ``parent_pid`` that started it dies, even
    by SIGKILL (otherwise workers idle forever, holding the pool's queues). On Linux, for workers
    started by the main thread, the kernel kills the worker at once (prctl PR_SET_PDEATHSIG); and
    everywhere a daemon thread checks every PARENT_POLL_S whether the worker was re-parented (its
    parent died), which acts once the worker's current task releases the interpreter."""
    if spawned_by_main_thread is True and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl in this libc: the thread below still works
            pass

    def watch():  # also catches a parent that died before the signal was armed
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class DenseCRFPool:
    """Worker processes that run the dense CRF; ``submit`` returns a future, so the CRF of one batch
    can run while the training loop does other work.

        with DenseCRFPool(processes=4) as pool:
            future = pool.submit(images, probs, scale=12)
            ...
            refined = future.result()           # (B, K, H, W), like dense_crf

    Workers start with the "spawn" method (no fork of a multi-threaded parent), so a script that
    creates a pool needs the usual ``if __name__ == "__main__":`` guard; each image of a batch is
    one task, so a batch spreads over all workers. Workers exit when this process dies.
    """

    def __init__(self, processes=None):
        if processes is None:
            processes = default_processes()
        if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
            raise ValueError(f"processes: expected a positive int or None, got {processes!r}")
        self.processes = processes
        self._executor = concurrent.futures.ProcessPoolExecutor(
            max_workers=processes, mp_context=multiprocessing.get_context("spawn"),
            initializer=_exit_with_parent, initargs=(os.getpid(), _SpawnedByMainThread()))

    def submit(self, images, probs, scale=TRAIN_SCALE, iterations=ITERATIONS):
        """Future of the CRF output (B, K, H, W) float32 (a tensor if ``probs`` was a tensor)."""
        images, probs, as_tensor = check_crf_inputs(images, probs, scale, iterations)
        batch_future = concurrent.futures.Future()
        results = [None] * images.shape[0]
        remaining = [len(results)]
        lock = threading.Lock()

        def collect(index, image_future):
            error = image_future.exception()
            with lock:
                if batch_future.done():
                    return
                if error is not None:
                    batch_future.set_exception(error)
                    return
                results[index] = image_future.result()
                remaining[0] -= 1
                if remaining[0] == 0:
                    batch_future.set_result(_as_output(np.stack(results), as_tensor))

        for index in range(images.shape[0]):
            image_future = self._executor.submit(crf_single, images[index], probs[index], float(scale), iterations)
            image_future.add_done_callback(lambda f, i=index: collect(i, f))
        return batch_future

    def close(self):
        self._executor.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


_shared_pools = {}
_shared_pools_lock = threading.Lock()


@atexit.register
def _close_shared_pools():
    """Shut the shared pools down before interpreter teardown (else their manager thread errors)."""
    with _shared_pools_lock:
        for pool in _shared_pools.values():
            pool.close()
        _shared_pools.clear()


def _shared_pool(processes):
    """A pool per worker count, created on first use and reused by later ``dense_crf`` calls."""
    with _shared_pools_lock:
        pool = _shared_pools.get(processes)
        if pool is None:
            pool = _shared_pools[processes] = DenseCRFPool(processes)
        return pool


def dense_crf(images, probs, scale=TRAIN_SCALE, iterations=ITERATIONS, processes=None):
    """Dense CRF of a batch: images uint8 (B, H, W, 3) C-contiguous RGB, probs (B, K, H, W) that sum
    to 1 over K (numpy or CPU tensors). Returns the CRF marginals (B, K, H, W) float32, a tensor if
    ``probs`` was a tensor. ``scale`` s divides both spatial widths (12 for the training loss at
    41x41, 1 at test time). ``processes``: None = all cores, 1 = serial in this process, n = a
    shared pool of n workers (kept for later calls).

    Example::

        >>> images = np.random.randint(0, 256, (2, 60, 80, 3), dtype=np.uint8)
        >>> probs = torch.softmax(torch.randn(2, 21, 60, 80), dim=1)
        >>> refined = dense_crf(images, probs, scale=1.0, processes=1)   # test-time CRF, s = 1
        >>> refined.shape, refined.dtype
        (torch.Size([2, 21, 60, 80]), torch.float32)
    """
    images, probs, as_tensor = check_crf_inputs(images, probs, scale, iterations)
    if processes is None:
        processes = default_processes()
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        raise ValueError(f"processes: expected a positive int or None, got {processes!r}")
    if processes == 1 or images.shape[0] == 1:
        result = np.stack([crf_single(images[b], probs[b], float(scale), iterations) for b in range(images.shape[0])])
        return _as_output(result, as_tensor)
    refined = _shared_pool(processes).submit(images, probs, scale, iterations).result()
    return _as_output(refined, as_tensor)
