"""Shared helpers for the trainer/data tests: tiny corpora (espeak-ng speech or tones) and configs.

Not a test module by itself (no tests inside); imported by the ``test_train*``, ``test_dataset`` and
``test_features`` files.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf

SENTENCES = [
    "take two tablets",
    "call the doctor",
    "stop the pump",
    "check your pulse",
    "open the door",
]
# Different voices and rates give the tiny model real (but learnable) variability.
VOICES: List[Tuple[str, int]] = [("en-us", 165), ("en", 185), ("en-us+f3", 175), ("en+m3", 150)]


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def _resample_to_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    from math import gcd

    from scipy.signal import resample_poly

    if rate == 16000:
        return samples.astype(np.float32)
    g = gcd(rate, 16000)
    return resample_poly(samples, 16000 // g, rate // g).astype(np.float32)


def speak(text: str, voice: str, rate: int, out_wav: Path) -> None:
    """espeak-ng -> 16 kHz mono float WAV."""
    raw = out_wav.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(raw), text], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples, sr = sf.read(raw, dtype="float32")
    raw.unlink()
    sf.write(out_wav, _resample_to_16k(samples, sr), 16000, subtype="FLOAT")


def _cut_for(wav: Path, text: str, custom: Dict[str, str]):
    from lhotse import Recording, SupervisionSegment

    rec = Recording.from_file(wav)
    cut = rec.to_cut()
    cut.supervisions = [SupervisionSegment(id=rec.id, recording_id=rec.id, start=0.0, duration=rec.duration,
                                           text=text, speaker=custom.get("voice"), custom=custom)]
    return cut


def make_espeak_cuts(out_dir: Path, sentences: Sequence[str] = SENTENCES,
                     voices: Sequence[Tuple[str, int]] = VOICES):
    """One cut per (sentence, voice): ``len(sentences) * len(voices)`` cuts, 16 kHz."""
    return make_espeak_utterances(out_dir, [(text, voice) for text in sentences for voice in voices])


def make_espeak_utterances(out_dir: Path, items: Sequence[Tuple[str, Tuple[str, int]]]):
    """One cut per ``(text, (voice, rate))``; domains alternate so source fractions are non-trivial."""
    from lhotse import CutSet

    out_dir.mkdir(parents=True, exist_ok=True)
    cuts = []
    for i, (text, (voice, rate)) in enumerate(items):
        wav = out_dir / f"utt{i:03d}.wav"
        speak(text, voice, rate, wav)
        domain = "medication" if i % 2 == 0 else "general"
        cuts.append(_cut_for(wav, text, {"domain": domain, "source": "synthetic", "voice": voice}))
    return CutSet.from_cuts(cuts)


def make_tone_cuts(out_dir: Path, n: int = 12, seed: int = 0, min_dur: float = 0.6, max_dur: float = 1.4):
    """``n`` short tone+noise cuts with a word per distinct pitch; enough for mechanics tests."""
    from lhotse import CutSet

    words = ["alpha", "bravo", "charlie", "delta"]
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    cuts = []
    for i in range(n):
        dur = float(rng.uniform(min_dur, max_dur))
        t = np.arange(int(dur * 16000)) / 16000
        k = i % len(words)
        x = 0.3 * np.sin(2 * np.pi * (220 + 110 * k) * t) + 0.01 * rng.standard_normal(t.shape)
        wav = out_dir / f"tone{i:03d}.wav"
        sf.write(wav, x.astype(np.float32), 16000, subtype="FLOAT")
        domain = "medication" if k % 2 == 0 else "general"
        cuts.append(_cut_for(wav, f"{words[k]} {words[(k + 1) % 4]}", {"domain": domain, "source": "synthetic"}))
    return CutSet.from_cuts(cuts)


def train_tokenizer(texts: Sequence[str], out_dir: Path, vocab_size: int = 40):
    from synthasr.tokenizer import Tokenizer, train_bpe

    path = train_bpe(list(texts), out_dir, vocab_size=vocab_size, model_type="bpe", hard_vocab_limit=False)
    return Tokenizer.load(path)


def tiny_train_config(**overrides) -> "TrainConfig":  # noqa: F821
    """A TrainConfig for fast CPU tests: tiny model, no SpecAugment, no validation, quiet."""
    from synthasr.config import apply_overrides, from_dict
    from synthasr.train.config import TrainConfig

    base = {
        "seed": 7,
        "model": {"preset": "tiny"},
        "loss": {"warmup_steps": 50, "prune_range": 5},
        "optim": {"lr": 3e-3, "warmup_steps": 20, "lr_steps": 2000.0, "lr_epochs": 100.0},
        "data": {"max_duration": 8.0, "num_buckets": 2, "shuffle": True, "spec_augment": {"enabled": False}},
        "num_epochs": 1,
        "checkpoint_every_n_steps": 0,
        "log_every_n_steps": 5,
        "device": "cpu",
        "progress_bar": False,
    }
    return from_dict(TrainConfig, apply_overrides(base, overrides), where="test")


def state_dicts_equal(a: Dict, b: Dict) -> Optional[str]:
    """None when equal, else the first differing key."""
    import torch

    if a.keys() != b.keys():
        return f"keys differ: {sorted(set(a) ^ set(b))[:3]}"
    for k in a:
        if not torch.equal(a[k], b[k]):
            return k
    return None
