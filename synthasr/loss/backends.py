"""Optional compiled RNN-T loss backends (k2, fast_rnnt, torchaudio), imported lazily and guarded.

The builtin implementation is always available; the others are used only when importable and
applicable to the inputs.  Asking explicitly for a missing backend fails with one line saying what to
install, never with an ImportError traceback from deep inside a training step.
"""
from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import List, Optional, Sequence

import torch

KNOWN_BACKENDS = ("builtin", "k2", "fast_rnnt", "torchaudio")
BACKEND_CHOICES = ("auto",) + KNOWN_BACKENDS
# Preference order for backend="auto"; builtin is the fallback.
_AUTO_ORDER = ("k2", "fast_rnnt", "torchaudio")
_INSTALL_HINTS = {
    "k2": "install a k2 wheel matching your torch/CUDA (https://k2-fsa.github.io/k2/installation/)",
    "fast_rnnt": "build it with tools/build_fast_rnnt.sh (or `pip install fast_rnnt`)",
    "torchaudio": "`pip install torchaudio` matching your torch version",
}


class LossBackendError(RuntimeError):
    """A requested RNN-T loss backend is unknown, not installed, or cannot handle these inputs."""


@functools.lru_cache(maxsize=None)
def backend_module(name: str) -> Optional[ModuleType]:
    """The imported backend module, or None when it is missing or fails to import."""
    module_name = "torchaudio.functional" if name == "torchaudio" else name
    try:
        module = importlib.import_module(module_name)
    except Exception:  # a broken compiled extension counts as "not installed"
        return None
    # torchaudio releases after 2.8 dropped some ops; only count it if the RNN-T loss is there.
    return module if hasattr(module, "rnnt_loss") else None


def available_backends() -> List[str]:
    """Backends usable in this environment, builtin first."""
    return ["builtin"] + [name for name in KNOWN_BACKENDS[1:] if backend_module(name) is not None]


def _supports_device(name: str, device: torch.device) -> bool:
    if device.type != "cuda" or name == "torchaudio":
        return True
    with_cuda = getattr(backend_module(name), "with_cuda", True)
    return bool(with_cuda() if callable(with_cuda) else with_cuda)


def resolve_backend(
    requested: str,
    supported: Sequence[str],
    what: str,
    device: torch.device,
    external_ok: bool = True,
    auto_candidates: Optional[Sequence[str]] = None,
) -> str:
    """Pick the backend for one call.

    ``supported`` lists the backends that implement ``what`` (e.g. "the pruned loss");
    ``external_ok`` is False when the inputs are outside what the compiled backends accept
    (then ``auto`` falls back to builtin and an explicit request raises); ``auto_candidates`` limits
    what ``auto`` may pick (default: every supported compiled backend, in k2 > fast_rnnt > torchaudio order).
    """
    if requested not in BACKEND_CHOICES:
        raise LossBackendError(f"unknown RNN-T loss backend {requested!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    if requested == "auto":
        if not external_ok:
            return "builtin"
        for name in _AUTO_ORDER:
            if name in (supported if auto_candidates is None else auto_candidates) and backend_module(name) is not None and _supports_device(name, device):
                return name
        return "builtin"
    if requested not in supported:
        raise LossBackendError(f"backend {requested!r} does not implement {what}; use one of {', '.join(supported)}")
    if requested == "builtin":
        return requested
    if backend_module(requested) is None:
        raise LossBackendError(f"RNN-T loss backend {requested!r} is not installed: {_INSTALL_HINTS[requested]}")
    if not _supports_device(requested, device):
        raise LossBackendError(f"RNN-T loss backend {requested!r} was built without CUDA; use backend='builtin' on {device}")
    if not external_ok:
        raise LossBackendError(f"backend {requested!r} cannot handle these inputs for {what}; use backend='builtin'")
    return requested
