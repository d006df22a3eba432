"""TTS engines behind one interface (:class:`TTSEngine`); build them with :func:`get_engine`."""
from tts_gen.engines.base import (EngineError, EngineUnavailableError, SynthesisError, TTSEngine, UnknownEngineError,
                                  engine_names, get_engine)

__all__ = ["EngineError", "EngineUnavailableError", "SynthesisError", "TTSEngine", "UnknownEngineError",
           "engine_names", "get_engine"]
