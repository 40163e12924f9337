"""Loads the compiled extension ``sgan._C`` (registers ``torch.ops.sgan_ext.*``) on demand."""
import torch  # noqa: F401  (loads libtorch, which sgan._C links against)

BUILD_HINT = (
    "build it from the repository root with `pip install --no-build-isolation -e .` "
    "(a C++ compiler is needed; for the CUDA part also a CUDA toolkit and a CUDA build of torch, "
    "see the README's 'Build flags')"
)


_loaded = None  # (the module or None, the import error or None), set by the first _load()


def _load():
    """(sgan._C or None, why it could not be imported). Cached in a module global rather than with
    functools.lru_cache, whose wrapper torch.compile traces through with a warning."""
    global _loaded
    if _loaded is None:
        try:
            from sgan import _C  # noqa: F401  (import registers the operators)
            _loaded = (_C, None)
        except ImportError as exc:
            _loaded = (None, str(exc))
    return _loaded


def available(device_type="cpu"):
    """True if the extension is built, and built with CUDA when ``device_type == "cuda"``."""
    ext, _ = _load()
    if ext is None:
        return False
    return device_type == "cpu" or bool(getattr(ext, "with_cuda", False))


def require(backend, device_type):
    """Raise a RuntimeError that says how to build the extension if ``backend`` is not available."""
    ext, err = _load()
    if ext is None:
        raise RuntimeError(f"backend={backend!r} needs the compiled extension sgan._C, which could not "
                           f"be imported ({err}); {BUILD_HINT}")
    if device_type == "cuda" and not getattr(ext, "with_cuda", False):
        raise RuntimeError(f"backend={backend!r} needs sgan._C built with CUDA, but it was built for CPU "
                           f"only; on a machine with a CUDA toolkit and a CUDA torch, rebuild with "
                           f"SGAN_CUDA=1 `pip install --no-build-isolation -e .`")
