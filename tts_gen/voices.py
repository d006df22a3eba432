"""Voices: an engine voice plus variant, rate and pitch, with a stable string id.

A :class:`Voice` is the unit of speaker variety in synthetic data. Its id (``espeak:en-gb-scotland+f3:
r165:p42``) goes into the supervision's ``speaker`` field, so train/test voice disjointness can be
checked on the manifests alone. Sampling and splitting are seeded so every shard of a cluster job
and every rerun sees the same voice set.
"""
from __future__ import annotations

import difflib
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Union

from synthasr.utils.io import atomic_write
from tts_gen.engines.base import canonical_engine_name

if TYPE_CHECKING:  # pragma: no cover
    from tts_gen.engines.base import TTSEngine


class VoiceSpecError(ValueError):
    """A voice id or hold-out rule that does not parse."""


class UnknownVoiceError(ValueError):
    """A voice name/variant the engine does not have; the message lists close valid names."""


class VoicePoolError(ValueError):
    """More voices requested than the (filtered) pools hold."""


#: engine defaults; fields that do not apply to an engine keep these values and stay out of its id
ESPEAK_DEFAULT_RATE = 175
ESPEAK_DEFAULT_PITCH = 50
ESPEAK_DEFAULT_AMPLITUDE = 100
PIPER_DEFAULT_NOISE_SCALE = 0.667
PIPER_DEFAULT_NOISE_W = 0.8

# Default engine shares of *utterances* (piper is ~10x slower than espeak on CPU).
DEFAULT_ENGINE_WEIGHTS: Dict[str, float] = {"espeak": 0.85, "piper": 0.15, "coqui": 0.15}

_TAG_RE = re.compile(r"^(ns|nw|r|p|a)([+-]?[0-9]+(?:\.[0-9]+)?)$")


def _fmt(x: float) -> str:
    """Compact, stable number formatting for ids (1.1 -> '1.1', 165.0 -> '165')."""
    text = f"{x:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker configuration.

    ``rate`` is words/minute for espeak and the phoneme ``length_scale`` for piper (>1 = slower);
    ``pitch`` is espeak's 0-99 pitch or piper's pitch shift in semitones. ``amplitude`` is espeak
    only; ``noise_scale``/``noise_w`` are piper's VITS sampling noises.
    """

    engine: str
    name: str
    variant: str = ""
    rate: float = ESPEAK_DEFAULT_RATE
    pitch: float = ESPEAK_DEFAULT_PITCH
    amplitude: int = ESPEAK_DEFAULT_AMPLITUDE
    noise_scale: float = PIPER_DEFAULT_NOISE_SCALE
    noise_w: float = PIPER_DEFAULT_NOISE_W

    def __post_init__(self) -> None:
        object.__setattr__(self, "engine", canonical_engine_name(self.engine))
        if not self.name or ":" in self.name or any(c.isspace() for c in self.name):
            raise VoiceSpecError(f"invalid voice name {self.name!r}: must be non-empty, without ':' or spaces")
        for f in ("rate", "pitch", "noise_scale", "noise_w"):
            object.__setattr__(self, f, round(float(getattr(self, f)), 3))

    # --- constructors -------------------------------------------------------------------------
    @classmethod
    def espeak(cls, name: str, variant: str = "", rate: int = ESPEAK_DEFAULT_RATE,
               pitch: int = ESPEAK_DEFAULT_PITCH, amplitude: int = ESPEAK_DEFAULT_AMPLITUDE) -> "Voice":
        return cls("espeak", name, variant, rate, pitch, amplitude)

    @classmethod
    def piper(cls, name: str, length_scale: float = 1.0, semitones: float = 0.0,
              noise_scale: float = PIPER_DEFAULT_NOISE_SCALE, noise_w: float = PIPER_DEFAULT_NOISE_W) -> "Voice":
        return cls("piper", name, "", length_scale, semitones, ESPEAK_DEFAULT_AMPLITUDE, noise_scale, noise_w)

    @classmethod
    def coqui(cls, name: str = "default") -> "Voice":
        return cls("coqui", name, "", 1.0, 0.0)

    # --- ids ----------------------------------------------------------------------------------
    @property
    def base(self) -> str:
        """Speaker identity without prosody: ``espeak:en-gb+f3``; test/train splits group on it."""
        return f"{self.engine}:{self.name}" + (f"+{self.variant}" if self.variant else "")

    @property
    def id(self) -> str:
        """Stable, parseable id: ``espeak:en-gb-scotland+f3:r165:p42``."""
        if self.engine == "espeak":
            parts = [self.base, f"r{_fmt(self.rate)}", f"p{_fmt(self.pitch)}"]
            if self.amplitude != ESPEAK_DEFAULT_AMPLITUDE:
                parts.append(f"a{self.amplitude}")
        elif self.engine == "piper":
            semis = _fmt(self.pitch)
            parts = [self.base, f"r{_fmt(self.rate)}", f"p{'+' if self.pitch > 0 else ''}{semis}",
                     f"ns{_fmt(self.noise_scale)}", f"nw{_fmt(self.noise_w)}"]
        else:
            parts = [self.base]
        return ":".join(parts)

    def __str__(self) -> str:
        return self.id

    @classmethod
    def parse(cls, voice_id: str) -> "Voice":
        """Inverse of :attr:`id`; missing fields take the engine defaults."""
        text = voice_id.strip()
        fields = text.split(":")
        if len(fields) < 2 or not fields[1]:
            raise VoiceSpecError(f"invalid voice id {voice_id!r}: expected ENGINE:NAME[+VARIANT][:rN][:pN]...")
        try:
            engine = canonical_engine_name(fields[0])
        except ValueError as e:
            raise VoiceSpecError(f"invalid voice id {voice_id!r}: {e}") from None
        name, variant = fields[1], ""
        if engine == "espeak" and "+" in name:
            name, variant = name.split("+", 1)
        if engine == "piper":
            kwargs: Dict[str, float] = {"rate": 1.0, "pitch": 0.0}
        elif engine == "coqui":
            kwargs = {"rate": 1.0, "pitch": 0.0}
        else:
            kwargs = {}
        keys = {"r": "rate", "p": "pitch", "a": "amplitude", "ns": "noise_scale", "nw": "noise_w"}
        for tag in fields[2:]:
            m = _TAG_RE.match(tag)
            if not m:
                raise VoiceSpecError(f"invalid voice id {voice_id!r}: bad field {tag!r} (expected rN, pN, aN, nsN, nwN)")
            kwargs[keys[m.group(1)]] = float(m.group(2))
        if "amplitude" in kwargs:
            kwargs["amplitude"] = int(kwargs["amplitude"])
        return cls(engine, name, variant, **kwargs)  # type: ignore[arg-type]

    def matches(self, entry: str) -> bool:
        """True if an exclude/voice-file entry names this voice: full id, base, name or name+variant."""
        entry = entry.strip()
        local = self.name + (f"+{self.variant}" if self.variant else "")
        return entry in (self.id, self.base, self.name, local)


def parse_voices(ids: Iterable[str]) -> List[Voice]:
    """Parse many ids, keeping order and dropping exact duplicates."""
    seen: Set[str] = set()
    out: List[Voice] = []
    for vid in ids:
        voice = Voice.parse(vid)
        if voice.id not in seen:
            seen.add(voice.id)
            out.append(voice)
    return out


def read_voice_file(path: Union[str, Path]) -> List[str]:
    """Voice ids/names from a text file: one per line, blank lines and ``#`` comments ignored."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise VoiceSpecError(f"{path}: cannot read voice file: {e.strerror or e}") from None
    return [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]


def write_voice_file(path: Union[str, Path], voices: Sequence[Voice]) -> None:
    """Write voice ids, one per line, atomically."""
    with atomic_write(path) as f:
        for v in voices:
            f.write(v.id + "\n")


# --- validation against engines -----------------------------------------------------------------
def check_voice(voice: Voice, engine: "TTSEngine") -> None:
    """Raise :class:`UnknownVoiceError` (listing close names) if ``engine`` lacks the voice/variant."""
    names = engine.list_voices()
    if voice.name not in names:
        close = difflib.get_close_matches(voice.name, names, n=5, cutoff=0.5) or names[:5]
        raise UnknownVoiceError(
            f"unknown {engine.name} voice {voice.name!r} in {voice.id!r} (close: {', '.join(close)})"
        )
    variants = engine.list_variants()
    if voice.variant not in variants:
        close = difflib.get_close_matches(voice.variant, [v for v in variants if v], n=5, cutoff=0.5)
        close = close or [v for v in variants if v][:5]
        raise UnknownVoiceError(
            f"unknown {engine.name} variant {voice.variant!r} in {voice.id!r} (close: {', '.join(close)})"
        )


# --- pools, sampling ----------------------------------------------------------------------------
def make_matcher(entries: Iterable[str]) -> Callable[[Voice], bool]:
    """Predicate for exclude lists: ids, bases, names, ``name+variant`` or hold-out rules (with ``=``)."""
    cleaned = [e.strip() for e in entries if e.strip()]
    rules = [HoldoutRule.parse(e) for e in cleaned if "=" in e]
    plain = {e for e in cleaned if "=" not in e}

    def matches(voice: Voice) -> bool:
        local = voice.name + (f"+{voice.variant}" if voice.variant else "")
        keys = (voice.id, voice.base, voice.name, local)
        return any(k in plain for k in keys) or any(r.matches(voice) for r in rules)

    return matches


def build_pools(engines: Sequence["TTSEngine"], exclude: Iterable[str] = ()) -> Dict[str, List[Voice]]:
    """Each engine's voice grid, minus voices matched by any ``exclude`` entry or hold-out rule."""
    excluded = make_matcher(exclude)
    return {engine.name: [v for v in engine.voice_pool() if not excluded(v)] for engine in engines}


def _quotas(n: int, sizes: Mapping[str, int], weights: Mapping[str, float]) -> Dict[str, int]:
    """Split ``n`` voices over engines by weight (largest remainder), capped by pool size.

    Every engine with a non-empty pool gets at least one voice when ``n`` allows, so a weighted-down
    engine is still represented.
    """
    live = [e for e in sizes if sizes[e] > 0]
    w = {e: max(float(weights.get(e, 1.0)), 0.0) for e in live}
    total_w = sum(w.values()) or 1.0
    quota = {e: 0 for e in sizes}
    if n >= len(live):
        for e in live:
            quota[e] = 1
    remaining = n - sum(quota.values())
    while remaining > 0:
        open_engines = [e for e in live if quota[e] < sizes[e]]
        if not open_engines:
            break
        # give one voice to the engine furthest below its weighted share
        target = {e: w[e] / total_w * n - quota[e] for e in open_engines}
        best = max(open_engines, key=lambda e: (target[e], -open_engines.index(e)))
        quota[best] += 1
        remaining -= 1
    return quota


def _diverse_pick(pool: Sequence[Voice], k: int, rng: random.Random) -> List[Voice]:
    """Pick ``k`` voices, cycling over shuffled base speakers so prosody repeats come last."""
    groups: Dict[str, List[Voice]] = {}
    for v in pool:
        groups.setdefault(v.base, []).append(v)
    bases = sorted(groups)
    rng.shuffle(bases)
    for b in bases:
        rng.shuffle(groups[b])
    picked: List[Voice] = []
    depth = 0
    while len(picked) < k:
        for b in bases:
            if depth < len(groups[b]):
                picked.append(groups[b][depth])
                if len(picked) == k:
                    break
        depth += 1
    return picked


def sample_voices(engines: Sequence["TTSEngine"], n: int, seed: int = 0, exclude: Iterable[str] = (),
                  engine_weights: Optional[Mapping[str, float]] = None) -> List[Voice]:
    """Seeded sample of ``n`` distinct voices from the engines' pools.

    ``exclude`` holds voice ids, bases (``espeak:en-gb+f3``), engine voice names (``en-gb-scotland``)
    or hold-out rules (``espeak:name=en-gb-scotland``); matching voices are never sampled.
    """
    return sample_from_pools(build_pools(engines, exclude), n, seed, engine_weights)


def sample_from_pools(pools: Mapping[str, Sequence[Voice]], n: int, seed: int = 0,
                      engine_weights: Optional[Mapping[str, float]] = None) -> List[Voice]:
    """Seeded, diversity-first sample of ``n`` distinct voices from per-engine pools."""
    if n <= 0:
        raise VoicePoolError(f"number of voices must be positive, got {n}")
    sizes = {e: len(p) for e, p in pools.items()}
    if sum(sizes.values()) < n:
        detail = ", ".join(f"{e}={s}" for e, s in sizes.items())
        raise VoicePoolError(f"asked for {n} voices but the pools hold only {sum(sizes.values())} ({detail})")
    weights = dict(DEFAULT_ENGINE_WEIGHTS)
    weights.update(engine_weights or {})
    quotas = _quotas(n, sizes, weights)
    voices: List[Voice] = []
    for engine_name, pool in pools.items():
        rng = random.Random(f"sample_voices:{seed}:{engine_name}")
        unique = sorted({v.id: v for v in pool}.values(), key=lambda v: v.id)
        voices.extend(_diverse_pick(unique, quotas[engine_name], rng))
    return voices


# --- train/test splits --------------------------------------------------------------------------
_RULE_FIELDS = ("name", "variant", "base", "rate", "pitch", "amplitude", "noise_scale", "noise_w")


@dataclass(frozen=True)
class HoldoutRule:
    """``ENGINE:FIELD=VALUE`` or ``ENGINE:FIELD=LO..HI`` (inclusive band); ENGINE may be ``*``.

    Examples: ``espeak:name=en-gb-scotland`` (a whole accent), ``piper:rate=1.15..1.3`` (a piper
    length-scale band), ``espeak:variant=f3``.
    """

    engine: str
    field: str
    value: str = ""
    low: Optional[float] = None
    high: Optional[float] = None

    @classmethod
    def parse(cls, spec: str) -> "HoldoutRule":
        m = re.match(r"^\s*([^:=\s]+):([a-z_]+)=(\S+)\s*$", spec)
        if not m:
            raise VoiceSpecError(f"invalid hold-out rule {spec!r}: expected ENGINE:FIELD=VALUE or ENGINE:FIELD=LO..HI")
        engine, field, value = m.groups()
        if engine != "*":
            try:
                engine = canonical_engine_name(engine)
            except ValueError as e:
                raise VoiceSpecError(f"invalid hold-out rule {spec!r}: {e}") from None
        if field not in _RULE_FIELDS:
            raise VoiceSpecError(f"invalid hold-out rule {spec!r}: unknown field {field!r} (valid: {', '.join(_RULE_FIELDS)})")
        if ".." in value:
            lo, hi = value.split("..", 1)
            try:
                return cls(engine, field, value, float(lo), float(hi))
            except ValueError:
                raise VoiceSpecError(f"invalid hold-out rule {spec!r}: band {value!r} is not LO..HI numbers") from None
        return cls(engine, field, value)

    def matches(self, voice: Voice) -> bool:
        if self.engine != "*" and voice.engine != self.engine:
            return False
        actual = getattr(voice, self.field)
        if self.low is not None and self.high is not None:
            return isinstance(actual, (int, float)) and self.low <= float(actual) <= self.high
        if isinstance(actual, (int, float)):
            try:
                return math.isclose(float(actual), float(self.value))
            except ValueError:
                return False
        return actual == self.value


@dataclass
class VoiceSplit:
    """Disjoint voice sets; ``test`` bases never appear in ``train`` unless only a band was held out."""

    train: List[Voice]
    test: List[Voice]


def split_voices(pool: Sequence[Voice], test_fraction: float = 0.1, seed: int = 0,
                 holdout: Sequence[str] = ()) -> VoiceSplit:
    """Split ``pool`` into disjoint train/test sets.

    Voices matched by a hold-out rule go to test. Then, per engine, a random ``test_fraction`` of the
    remaining *base speakers* (engine voice + variant) goes to test with all their rate/pitch
    configurations, so a test speaker is never heard in training at another speed. Engines with a
    single base speaker (one piper model) only contribute to test through hold-out rules.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise VoiceSpecError(f"test_fraction must be in [0, 1), got {test_fraction}")
    rules = [HoldoutRule.parse(h) for h in holdout]
    unique = {v.id: v for v in pool}
    held = {vid for vid, v in unique.items() if any(r.matches(v) for r in rules)}
    for rule in rules:
        if not any(rule.matches(v) for v in unique.values()):
            raise VoiceSpecError(f"hold-out rule '{rule.engine}:{rule.field}={rule.value}' matches no voice in the pool")
    test_bases: Set[str] = set()
    by_engine: Dict[str, Set[str]] = {}
    for vid, v in unique.items():
        if vid not in held:
            by_engine.setdefault(v.engine, set()).add(v.base)
    for engine, bases in sorted(by_engine.items()):
        if len(bases) < 2 or test_fraction == 0:
            continue
        k = min(len(bases) - 1, max(1, round(test_fraction * len(bases))))
        rng = random.Random(f"split_voices:{seed}:{engine}")
        test_bases.update(rng.sample(sorted(bases), k))
    test = [v for vid, v in sorted(unique.items()) if vid in held or v.base in test_bases]
    test_ids = {v.id for v in test}
    train = [v for vid, v in sorted(unique.items()) if vid not in test_ids]
    return VoiceSplit(train=train, test=test)


def voices_by_engine(voices: Sequence[Voice]) -> Dict[str, List[Voice]]:
    """Group voices by engine, each list sorted by id (assignment must not depend on input order)."""
    out: Dict[str, List[Voice]] = {}
    for v in sorted({v.id: v for v in voices}.values(), key=lambda v: v.id):
        out.setdefault(v.engine, []).append(v)
    return out
