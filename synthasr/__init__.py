"""SynthASR: adapt RNN-T recognizers to new domains from synthetic speech, without forgetting.

``synthasr.decode(audio, model="exp/pretrained.pt")`` and ``synthasr.load_model(path)`` are the two
entry points most users need; both import torch only when first called.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "decode", "load_model"]


def load_model(path, device: str = "cpu", num_threads: Any = None):
    """Load (and cache by path + mtime) a checkpoint as an :class:`synthasr.decode.bundle.ASRBundle`."""
    from synthasr.decode.bundle import load_model as _load_model

    return _load_model(path, device=device, num_threads=num_threads)


def decode(audio, model, method: str = "greedy_search", beam_size: int = 4, sample_rate: Any = None,
           hotwords: Any = None, hotword_score: float = 0.5, **kwargs: Any):
    """Transcribe a path / array / tensor (-> str) or a list of them (-> list, None for bad items).

    ``model`` is a checkpoint path (loaded once, cached) or an ASRBundle. Extra keyword arguments
    (``chunk_seconds``, ``device``, ``num_threads``) go to :func:`synthasr.decode.bundle.decode`.
    """
    from synthasr.decode.bundle import decode as _decode

    return _decode(audio, model=model, method=method, beam_size=beam_size, sample_rate=sample_rate,
                   hotwords=hotwords, hotword_score=hotword_score, **kwargs)
