"""The one small interface every TTS engine implements, plus a name -> engine registry.

An engine turns (text, :class:`~tts_gen.voices.Voice`) into mono float32 samples at the engine's
native rate; resampling, file writing and manifests live in :mod:`tts_gen.generate`, so an engine
module only knows how to drive one synthesizer.
"""
from __future__ import annotations

import abc
import importlib
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - import cycle guard (voices imports nothing from here at runtime)
    from tts_gen.voices import Voice


class EngineError(RuntimeError):
    """Base class for engine failures; messages are one line."""


class EngineUnavailableError(EngineError):
    """The engine's binary, package or model file is missing; the message says how to get it."""


class SynthesisError(EngineError):
    """The engine ran but could not speak one text (bad exit code, empty audio, ...)."""


class UnknownEngineError(ValueError):
    """An engine name that is not registered."""


class TTSEngine(abc.ABC):
    """A speech synthesizer: a pool of named voices and a ``synthesize`` call."""

    #: canonical engine name, used as the first field of a voice id (``espeak:...``)
    name: str = ""
    #: the phoneme alphabet ``synthesize(pronunciations=...)`` takes (see :mod:`tts_gen.pronounce`);
    #: ``None``: the engine takes no phoneme input and speaks every word by its own rules
    phoneme_alphabet: Optional[str] = None

    @abc.abstractmethod
    def list_voices(self) -> List[str]:
        """Engine voice names usable in :class:`Voice.name` (e.g. ``en-gb-scotland``)."""

    def list_variants(self) -> List[str]:
        """Variants that may follow a voice name (espeak's ``+f3``); ``[""]`` when the engine has none."""
        return [""]

    @abc.abstractmethod
    def voice_pool(self) -> List["Voice"]:
        """The finite grid of voice configurations this engine offers for sampling."""

    @abc.abstractmethod
    def synthesize(self, text: str, voice: "Voice", seed: int = 0,
                   pronunciations: Optional[Mapping[str, str]] = None) -> Tuple[np.ndarray, int]:
        """Speak ``text``; return ``(float32 mono samples in [-1, 1], sample_rate)``.

        ``seed`` makes stochastic engines (piper's noise) reproducible per utterance; deterministic
        engines ignore it. ``pronunciations`` maps terms (whole words of ``text``) to phonemes in
        :attr:`phoneme_alphabet`, spoken instead of the engine's own guess; callers pass it only to
        engines whose alphabet is not ``None``, so an engine without phoneme input may omit it.
        """


# canonical name -> "module:Class"; aliases map user spellings onto canonical names.
_REGISTRY: Dict[str, str] = {
    "espeak": "tts_gen.engines.espeak:EspeakEngine",
    "piper": "tts_gen.engines.piper:PiperEngine",
    "coqui": "tts_gen.engines.coqui:CoquiEngine",
}
_ALIASES: Dict[str, str] = {"espeak-ng": "espeak", "espeakng": "espeak", "tts": "coqui", "coqui-tts": "coqui"}


def canonical_engine_name(name: str) -> str:
    """Map ``espeak-ng``/``espeak``/... to the canonical registry name, or raise naming valid ones."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        valid = ", ".join(sorted(set(_REGISTRY) | set(_ALIASES)))
        raise UnknownEngineError(f"unknown TTS engine {name!r} (valid: {valid})")
    return key


def engine_names() -> List[str]:
    """Canonical names of all registered engines."""
    return sorted(_REGISTRY)


def get_engine(name: str, **opts: Any) -> TTSEngine:
    """Instantiate engine ``name`` with engine-specific options (binary path, model paths, ...)."""
    module_name, cls_name = _REGISTRY[canonical_engine_name(name)].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(**opts)
