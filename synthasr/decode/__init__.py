"""Decoding: greedy / modified beam search, hotword biasing, CutSet evaluation, the ASR bundle.

Submodules import torch; this package's names are resolved lazily so ``import synthasr.decode`` stays
cheap until something is used.

``synthasr.decode`` is both this package and the top-level ``synthasr.decode(audio, model=...)``
function: importing a subpackage rebinds the parent's attribute to the module, so the module itself is
made callable (it forwards to :func:`synthasr.decode.bundle.decode`) and both spellings keep working.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_EXPORTS = {
    "greedy_search": "synthasr.decode.search",
    "modified_beam_search": "synthasr.decode.search",
    "ShallowFusion": "synthasr.decode.search",
    "ContextGraph": "synthasr.decode.context_graph",
    "ContextState": "synthasr.decode.context_graph",
    "HotwordError": "synthasr.decode.context_graph",
    "evaluate": "synthasr.decode.evaluation",
    "decode_cuts": "synthasr.decode.evaluation",
    "evaluate_decodings": "synthasr.decode.evaluation",
    "Decoding": "synthasr.decode.evaluation",
    "encode_cuts": "synthasr.decode.evaluation",
    "search_encoded": "synthasr.decode.evaluation",
    "ASRBundle": "synthasr.decode.bundle",
    "AudioError": "synthasr.decode.bundle",
    "load_model": "synthasr.decode.bundle",
    "decode": "synthasr.decode.bundle",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'synthasr.decode' has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any):
        from synthasr.decode.bundle import decode

        return decode(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
