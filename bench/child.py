"""One function call in a fresh process, and that process's peak resident set size.

Kept free of torch so that a child running something small starts in well under a second.
"""
import dataclasses
import multiprocessing
import resource
import sys


class ChildFailed(RuntimeError):
    """The child process raised (the message is the error's type and first line) or died."""


@dataclasses.dataclass(frozen=True)
class ChildResult:
    """What the function returned in the child, and the child's peak RSS in bytes when it had."""
    value: object
    peak_rss_bytes: int


def peak_rss_bytes():
    """This process's peak resident set size so far (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _child_main(connection, function, args):
    try:
        value = function(*args)
    except BaseException as error:  # reported to the parent, which raises ChildFailed
        first_line = str(error).splitlines()[0] if str(error) else ""
        connection.send(("error", f"{type(error).__name__}: {first_line}"))
    else:
        connection.send(("ok", (value, peak_rss_bytes())))
    finally:
        connection.close()


def run_in_child(function, *args):
    """``function(*args)`` in a fresh (spawned) process; a ChildResult. ``function`` and ``args``
    must be picklable (a module-level function). Raises ChildFailed if it raises or dies."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(sender, function, args))
    process.start()
    sender.close()
    try:
        kind, payload = receiver.recv()
    except EOFError:
        process.join()
        killed = "; killed, perhaps out of memory" if process.exitcode == -9 else ""
        raise ChildFailed(f"the child process died (exit code {process.exitcode}{killed})") from None
    finally:
        receiver.close()
    process.join()
    if kind == "error":
        raise ChildFailed(payload)
    return ChildResult(*payload)
