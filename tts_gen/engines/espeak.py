"""espeak-ng driven as a subprocess: formant synthesis, many English accents and variants, fast.

The text goes in on stdin and argv is a list (no shell), so a line such as ``$(rm -rf ~)`` is
spoken, never executed. WAV comes back on stdout and is parsed here, because espeak-ng writes a
streaming header whose chunk sizes are placeholders.
"""
from __future__ import annotations

import functools
import shutil
import struct
import subprocess
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from tts_gen.engines.base import EngineUnavailableError, SynthesisError, TTSEngine
from tts_gen.voices import Voice

INSTALL_HINT = "install it with: apt-get install espeak-ng"

#: rate (words/min) and pitch (0-99) grid used for sampling; 175/50 are espeak's defaults
POOL_RATES: Tuple[int, ...] = (140, 155, 170, 185, 200)
POOL_PITCHES: Tuple[int, ...] = (30, 40, 50, 60, 70)
#: human-sounding variants; the novelty ones (whisper, croak, Demonic, robosoft...) are left out
POOL_VARIANTS: Tuple[str, ...] = (
    "", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4", "Andy", "Annie", "david", "linda", "steph", "john",
)


class EspeakEngine(TTSEngine):
    """espeak-ng voices ``<accent>[+<variant>]`` with rate, pitch and amplitude."""

    name = "espeak"
    phoneme_alphabet = "espeak-ng mnemonics"

    def __init__(self, binary: str = "espeak-ng", timeout: float = 60.0,
                 variants: Optional[Sequence[str]] = None, rates: Sequence[int] = POOL_RATES,
                 pitches: Sequence[int] = POOL_PITCHES) -> None:
        resolved = shutil.which(binary)
        if resolved is None:
            raise EngineUnavailableError(f"espeak-ng binary not found: {binary!r} is not on PATH or not executable; {INSTALL_HINT}")
        self.binary = resolved
        self.timeout = timeout
        self._pool_variants = tuple(variants) if variants is not None else POOL_VARIANTS
        self._rates = tuple(rates)
        self._pitches = tuple(pitches)

    # --- voices ---------------------------------------------------------------------------------
    def list_voices(self) -> List[str]:
        """English espeak-ng voices (``--voices=en``); MBROLA voices need extra data and are skipped."""
        return _list_english_voices(self.binary)

    def list_variants(self) -> List[str]:
        return [""] + _list_variants(self.binary)

    def voice_pool(self) -> List[Voice]:
        available = set(self.list_variants())
        variants = [v for v in self._pool_variants if v in available]
        return [
            Voice.espeak(name, variant, rate, pitch)
            for name in self.list_voices()
            for variant in variants
            for rate in self._rates
            for pitch in self._pitches
        ]

    # --- synthesis ------------------------------------------------------------------------------
    def command(self, voice: Voice) -> List[str]:
        """The argv for one synthesis (no shell; the text is sent on stdin)."""
        voice_file = _english_voice_files(self.binary).get(voice.name, voice.name)
        spec = voice_file + (f"+{voice.variant}" if voice.variant else "")
        return [self.binary, "-v", spec, "-s", str(int(voice.rate)), "-p", str(int(voice.pitch)),
                "-a", str(int(voice.amplitude)), "--stdout"]

    def synthesize(self, text: str, voice: Voice, seed: int = 0,
                   pronunciations: Optional[Mapping[str, str]] = None) -> Tuple[np.ndarray, int]:
        """Speak ``text``; ``pronunciations`` (term -> mnemonics) go in as inline ``[[...]]`` phonemes."""
        if voice.engine != self.name:
            raise SynthesisError(f"voice {voice.id!r} is not an espeak voice")
        proc = self._run(self.command(voice), self.input_text(text, pronunciations), voice)
        samples, rate = parse_wav_bytes(proc.stdout)
        if samples.size == 0:
            raise SynthesisError(f"espeak-ng produced no audio for voice {voice.id}")
        return samples, rate

    @staticmethod
    def input_text(text: str, pronunciations: Optional[Mapping[str, str]] = None) -> str:
        """What goes to espeak-ng's stdin: ``text`` with each term span replaced by ``[[mnemonics]]``.

        Without pronunciations the text is passed through untouched (same audio as ever).
        """
        if not pronunciations:
            return text
        from tts_gen.pronounce import check_phonemes, markup

        for term, phonemes in pronunciations.items():
            why = check_phonemes(phonemes)
            if why:
                raise SynthesisError(f"pronunciation of {term!r}: {why}")
        return markup(text, pronunciations)

    def phonemize(self, text: str, voice: Voice, pronunciations: Optional[Mapping[str, str]] = None,
                  ipa: bool = False) -> str:
        """The phonemes espeak-ng reports (``-x`` mnemonics, or ``--ipa``) for exactly the input
        :meth:`synthesize` sends with the same voice: how a caller checks what was really spoken.
        """
        argv = [a for a in self.command(voice) if a != "--stdout"] + ["-q", "--ipa" if ipa else "-x"]
        proc = self._run(argv, self.input_text(text, pronunciations), voice)
        return " ".join(proc.stdout.decode("utf-8", "replace").split())

    def _run(self, argv: List[str], text: str, voice: Voice) -> "subprocess.CompletedProcess[bytes]":
        """Run espeak-ng once with ``text`` on stdin; failures become one-line engine errors."""
        try:
            proc = subprocess.run(argv, input=text.encode("utf-8"), capture_output=True,
                                  timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise SynthesisError(f"espeak-ng timed out after {self.timeout:.0f}s with voice {voice.id}") from None
        except OSError as e:
            raise EngineUnavailableError(f"cannot run {self.binary}: {e.strerror or e}; {INSTALL_HINT}") from None
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            raise SynthesisError(f"espeak-ng exited with {proc.returncode} for voice {voice.id}: {err[0] if err else 'no message'}")
        return proc


def parse_wav_bytes(data: bytes) -> Tuple[np.ndarray, int]:
    """Decode 16-bit PCM WAV bytes whose RIFF/data sizes may be bogus (streamed to a pipe)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise SynthesisError("espeak-ng output is not a WAV stream")
    pos, rate, channels, bits = 12, 0, 1, 16
    while pos + 8 <= len(data):
        chunk_id, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = pos + 8
        if chunk_id == b"fmt ":
            fmt_tag, channels, rate = struct.unpack("<HHI", data[body:body + 8])
            bits = struct.unpack("<H", data[body + 14:body + 16])[0]
            if fmt_tag != 1 or bits != 16:
                raise SynthesisError(f"unsupported WAV format (tag {fmt_tag}, {bits} bits)")
        elif chunk_id == b"data":
            if rate == 0:
                raise SynthesisError("WAV data chunk before fmt chunk")
            payload = data[body:]  # the declared size is a placeholder when streaming
            payload = payload[: len(payload) - len(payload) % (2 * channels)]
            pcm = np.frombuffer(payload, dtype="<i2").reshape(-1, channels)
            return (pcm.mean(axis=1) / 32768.0).astype(np.float32), rate
        pos = body + size + (size & 1)
    raise SynthesisError("WAV stream has no data chunk")


@functools.lru_cache(maxsize=8)
def _english_voice_files(binary: str) -> Dict[str, str]:
    """Language code -> voice file (``en-gb`` -> ``gmw/en``).

    We pass the *file* to ``-v``: espeak-ng resolves ``en-gb+f3`` by language and then silently
    drops the variant, while ``gmw/en+f3`` applies it.
    """
    files: Dict[str, str] = {}
    for fields in _voice_table(binary, "--voices=en"):
        language, file = fields[1], fields[4]
        if language.startswith("en") and not file.startswith("mb/") and language not in files:
            files[language] = file
    return files


def _list_english_voices(binary: str) -> List[str]:
    return list(_english_voice_files(binary))


@functools.lru_cache(maxsize=8)
def _list_variants(binary: str) -> List[str]:
    out: List[str] = []
    for fields in _voice_table(binary, "--voices=variant"):
        file = fields[4]
        has_space = len(fields) > 5 and not fields[5].startswith("(")  # "!v/Mr serious"
        if file.startswith("!v/") and not has_space and file[3:] not in out:
            out.append(file[3:])
    return out


def _voice_table(binary: str, flag: str) -> List[List[str]]:
    """Rows of ``espeak-ng --voices=...`` split on whitespace (Pty, Language, Age/Gender, Name, File...)."""
    try:
        proc = subprocess.run([binary, flag], capture_output=True, stdin=subprocess.DEVNULL, timeout=30, check=False)
    except OSError as e:
        raise EngineUnavailableError(f"cannot run {binary}: {e.strerror or e}; {INSTALL_HINT}") from None
    rows = []
    for line in proc.stdout.decode("utf-8", "replace").splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 5:
            rows.append(fields)
    return rows
