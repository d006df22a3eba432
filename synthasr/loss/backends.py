"""Optional compiled RNN-T loss backends (k2, fast_rnnt, torchaudio), imported lazily and guarded.

The builtin implementation is always available; the others are used only when importable and
applicable to the inputs.  Asking explicitly for a missing backend fails with one line saying what to
install, never with an ImportError traceback from deep inside a training step.
"""
from __future__ import annotations

import functools
import importlib
import logging
from types import ModuleType
from typing import Dict, List, Optional, Sequence

import torch

KNOWN_BACKENDS = ("builtin", "k2", "fast_rnnt", "torchaudio")
BACKEND_CHOICES = ("auto",) + KNOWN_BACKENDS
# Preference order for backend="auto"; builtin is the fallback.
_AUTO_ORDER = ("k2", "fast_rnnt", "torchaudio")
_INSTALL_HINTS = {
    "k2": "install a k2 wheel matching your torch/CUDA (https://k2-fsa.github.io/k2/installation/)",
    "fast_rnnt": "build it with tools/build_fast_rnnt.sh (or `pip install fast_rnnt`)",
    "torchaudio": "`pip install torchaudio==<your torch version>` (the same CUDA build as torch)",
}
# Why a backend that is present on disk could not be used (filled by backend_module).
_UNUSABLE: Dict[str, str] = {}

log = logging.getLogger(__name__)


class LossBackendError(RuntimeError):
    """A requested RNN-T loss backend is unknown, not installed, or cannot handle these inputs."""


@functools.lru_cache(maxsize=None)
def backend_module(name: str) -> Optional[ModuleType]:
    """The imported backend module, or None when it is missing or unusable.

    A backend that is not installed is silent (that is the normal case); one that is installed but
    fails to import (a compiled extension built for another torch/CUDA) or lacks the RNN-T loss is
    logged once, with the reason, because otherwise training silently runs on a slower backend.
    """
    module_name = "torchaudio.functional" if name == "torchaudio" else name
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.split(".")[0] == e.name.split(".")[0]:
            return None  # not installed
        _mark_unusable(name, f"import failed: {_first_line(e)}")
        return None
    except Exception as e:  # a broken compiled extension (OSError: undefined symbol, ...)
        _mark_unusable(name, f"import failed: {type(e).__name__}: {_first_line(e)}")
        return None
    # torchaudio releases after 2.8 dropped some ops; only count it if the RNN-T loss is there.
    if not hasattr(module, "rnnt_loss"):
        version = getattr(importlib.import_module(module_name.split(".")[0]), "__version__", "?")
        _mark_unusable(name, f"{module_name} {version} has no rnnt_loss")
        return None
    return module


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _mark_unusable(name: str, why: str) -> None:
    _UNUSABLE[name] = why
    log.warning("RNN-T loss backend %s is installed but unusable (%s); it will not be used", name, why)


def require_backend(name: str) -> None:
    """Raise :class:`LossBackendError` (one line) unless ``name`` is auto, builtin or importable.

    Cheap, device-independent check for the start of a run, so that a config asking for a backend
    this environment lacks fails before any data is loaded instead of at the first training step.
    """
    if name not in BACKEND_CHOICES:
        raise LossBackendError(f"unknown RNN-T loss backend {name!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    if name in ("auto", "builtin"):
        return
    if backend_module(name) is None:
        raise LossBackendError(_missing_message(name))


def _missing_message(name: str) -> str:
    why = _UNUSABLE.get(name)
    state = f"is installed but unusable ({why})" if why else "is not installed"
    return f"RNN-T loss backend {name!r} {state}: {_INSTALL_HINTS[name]}"


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
        raise LossBackendError(_missing_message(requested))
    if not _supports_device(requested, device):
        raise LossBackendError(f"RNN-T loss backend {requested!r} was built without CUDA; use backend='builtin' on {device}")
    if not external_ok:
        raise LossBackendError(f"backend {requested!r} cannot handle these inputs for {what}; use backend='builtin'")
    return requested
