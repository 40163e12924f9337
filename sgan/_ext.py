"""Loads the compiled extension ``sgan._C`` (registers ``torch.ops.sgan_ext.*``) on demand."""
import torch  # noqa: F401  (loads libtorch, which sgan._C links against)

BUILD_HINT = (
    "build it from the repository root with `pip install --no-build-isolation -e .` "
    "(a C++ compiler is needed; for the CUDA part also a CUDA toolkit and a CUDA build of torch, "
    "see the README's 'Build flags')"
)


_loaded = None  # (the module or None, the import error or None, built), set by the first _load()


def _load():
    """(sgan._C or None, why it could not be imported, whether a built sgan._C is there at all).
    ``built`` and no module means a broken build (an ABI mismatch with this torch, a missing
    library). Cached in a module global rather than with functools.lru_cache, whose wrapper
    torch.compile traces through with a warning."""
    global _loaded
    if _loaded is None:
        try:
            from sgan import _C  # noqa: F401  (import registers the operators)
            _loaded = (_C, None, True)
        except ImportError as exc:
            not_built = isinstance(exc, ModuleNotFoundError) and exc.name == "sgan._C"
            _loaded = (None, f"{type(exc).__name__}: {exc}", not not_built)
    return _loaded


def problem(device_type):
    """None if the extension runs ``device_type`` ("cpu", "cuda") tensors here, else (why, broken):
    ``broken`` when a built sgan._C is there but fails to import."""
    ext, err, built = _load()
    if ext is None:
        return f"sgan._C could not be imported ({err})", built
    if device_type == "cuda" and not getattr(ext, "with_cuda", False):
        return "sgan._C was built for CPU only", False
    return None


def available(device_type="cpu"):
    """True if the extension is built, and built with CUDA when ``device_type == "cuda"``."""
    return problem(device_type) is None


def require(backend, device_type):
    """Raise a RuntimeError that says how to build the extension if ``backend`` is not available."""
    ext, err, _ = _load()
    if ext is None:
        raise RuntimeError(f"backend={backend!r} needs the compiled extension sgan._C, which could not "
                           f"be imported ({err}); {BUILD_HINT}")
    if device_type == "cuda" and not getattr(ext, "with_cuda", False):
        raise RuntimeError(f"backend={backend!r} needs sgan._C built with CUDA, but it was built for CPU "
                           f"only; on a machine with a CUDA toolkit and a CUDA torch, rebuild with "
                           f"SGAN_CUDA=1 `pip install --no-build-isolation -e .`")
