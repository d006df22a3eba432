"""Coqui ``TTS`` as an optional backend, strictly from a LOCAL checkpoint.

Coqui's high-level API downloads models by name; SynthASR must never touch the network at run
time, so this engine only accepts ``model_path`` + ``config_path`` on disk and drives
``TTS.utils.synthesizer.Synthesizer`` directly. Paths are checked before the import so the error
names what is missing first.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

import numpy as np

from tts_gen.engines.base import EngineUnavailableError, SynthesisError, TTSEngine
from tts_gen.voices import Voice

COQUI_HINT = "install it with: pip install TTS"
DEFAULT_SPEAKER = "default"


class CoquiEngine(TTSEngine):
    """A local Coqui TTS model; multi-speaker models expose their speakers as voices."""

    name = "coqui"

    def __init__(self, model_path: Optional[Union[str, Path]] = None,
                 config_path: Optional[Union[str, Path]] = None, use_cuda: bool = False) -> None:
        if model_path is None or config_path is None:
            raise EngineUnavailableError("coqui engine needs local model_path and config_path (models are never downloaded)")
        self.model_path, self.config_path = Path(model_path).expanduser(), Path(config_path).expanduser()
        for label, path in (("model", self.model_path), ("config", self.config_path)):
            if not path.exists():
                raise EngineUnavailableError(f"coqui {label} path not found: {path}")
        try:
            synth_mod = importlib.import_module("TTS.utils.synthesizer")
        except ImportError:
            raise EngineUnavailableError(f"python package 'TTS' (Coqui) is not importable; {COQUI_HINT}") from None
        checkpoint = self.model_path
        if checkpoint.is_dir():  # a model dir: take its single checkpoint file
            candidates = sorted(list(checkpoint.glob("*.pth")) + list(checkpoint.glob("*.pt")))
            if not candidates:
                raise EngineUnavailableError(f"coqui model dir has no .pth/.pt checkpoint: {checkpoint}")
            checkpoint = candidates[0]
        self._synth: Any = synth_mod.Synthesizer(tts_checkpoint=str(checkpoint), tts_config_path=str(self.config_path),
                                                 use_cuda=use_cuda)

    def list_voices(self) -> List[str]:
        manager = getattr(getattr(self._synth, "tts_model", None), "speaker_manager", None)
        names = list(getattr(manager, "speaker_names", None) or [])
        return sorted(names) if names else [DEFAULT_SPEAKER]

    def voice_pool(self) -> List[Voice]:
        return [Voice.coqui(name) for name in self.list_voices()]

    def synthesize(self, text: str, voice: Voice, seed: int = 0) -> Tuple[np.ndarray, int]:
        if voice.engine != self.name:
            raise SynthesisError(f"voice {voice.id!r} is not a coqui voice")
        speaker = None if voice.name == DEFAULT_SPEAKER else voice.name
        try:
            wav = self._synth.tts(text, speaker_name=speaker)
        except Exception as e:  # the model's own errors vary; report one line
            raise SynthesisError(f"coqui synthesis failed for voice {voice.id}: {str(e).splitlines()[0][:200]}") from None
        audio = np.asarray(wav, dtype=np.float32).reshape(-1)
        if audio.size == 0:
            raise SynthesisError(f"coqui produced no audio for voice {voice.id}")
        return audio, int(self._synth.output_sample_rate)
