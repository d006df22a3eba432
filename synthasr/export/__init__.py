"""Deployment export: ONNX in sherpa-onnx's offline transducer layout (see :mod:`synthasr.export.onnx`).

Importing this package is cheap; torch/onnx are imported when an export function is first used.
"""
from __future__ import annotations

from typing import Any

__all__ = ["ExportError", "OnnxExport", "UnsupportedModelError", "check_exportable", "export_model_onnx",
           "export_onnx"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from synthasr.export import onnx as _onnx

        return getattr(_onnx, name)
    raise AttributeError(f"module 'synthasr.export' has no attribute {name!r}")
