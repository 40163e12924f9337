"""SIGTERM (what SLURM and Kubernetes send before they kill a job) stops a command as Ctrl-C does.

:func:`sigterm_as_interrupt` (the CLI's, around one command) makes SIGTERM raise :class:`Terminated`,
a KeyboardInterrupt, in the main thread: every step stops the way Ctrl-C stops it (its outputs are
written atomically, so nothing partial is left and a rerun completes). Inside
:func:`deferred_termination` (a training loop's iterations) SIGTERM only sets a flag, which the
loop reads between iterations to write a resumable checkpoint before it raises Terminated itself; a
second SIGTERM there raises at once. DataLoader workers ignore SIGTERM (:func:`ignore_sigterm`, their
``worker_init_fn``): sent to the whole process group (as SLURM does), it would otherwise kill them
in the middle of an iteration; their parent ends them when it stops.
"""
import contextlib
import os
import signal
import threading


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""


class TerminationRequest:
    """The flag of :func:`deferred_termination`: ``requested`` turns True on SIGTERM."""

    def __init__(self):
        self.requested = False


_handler_state = {"owner": None, "deferred": None}


def _on_sigterm(signum, frame):
    if os.getpid() != _handler_state["owner"]:   # a forked worker: the parent decides and ends it
        return
    request = _handler_state["deferred"]
    if request is not None and not request.requested:
        request.requested = True
        return
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises :class:`Terminated` in the block (the previous handler is restored after it);
    outside the main thread, where Python cannot set handlers, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    owner, _handler_state["owner"] = _handler_state["owner"], os.getpid()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _handler_state["owner"] = owner


@contextlib.contextmanager
def deferred_termination():
    """Yield a :class:`TerminationRequest` that SIGTERM sets instead of raising (when the CLI's
    handler is installed); the caller checks it at safe points and raises Terminated itself. If it
    is still set when the block ends normally, Terminated is raised then."""
    request, previous = TerminationRequest(), _handler_state["deferred"]
    _handler_state["deferred"] = request
    try:
        yield request
    finally:
        _handler_state["deferred"] = previous
    if request.requested:
        raise Terminated()


def ignore_sigterm(worker_id=None):
    """A DataLoader ``worker_init_fn``: the worker ignores SIGTERM (its parent decides when to stop)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
