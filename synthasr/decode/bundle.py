"""``ASRBundle``: everything needed to turn audio into text, loaded from one checkpoint.

In the spirit of torchaudio's pipeline bundles: the checkpoint carries the weights, the model config,
the feature config and the tokenizer, so ``ASRBundle.from_checkpoint(path).transcribe("a.wav")`` needs
nothing else. Audio of any sample rate and channel count is accepted (downmixed to mono, resampled
by :func:`synthasr.utils.audio.resample`, the lhotse transform the training features went through);
integer arrays are PCM, scaled by their dtype's range. Long audio is cut into equal chunks of at most
``chunk_seconds`` and the chunk texts are joined.

Error policy: for ONE input (a path, array or tensor) unreadable/truncated/corrupt/empty audio raises
:class:`AudioError` (one line, naming the file). For a LIST of inputs each bad item is reported with
one warning naming it and its result is ``None``; the other items are still decoded. A ``sample_rate``
that is not a positive whole number of Hz is an :class:`AudioError` for the whole call. Audio too
short to yield a single encoder frame (< ~70 ms, including zero-length arrays) decodes to ``""``.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from synthasr.checkpoint import CheckpointError, load_checkpoint, tokenizer_proto
from synthasr.data.features import FeatureConfig, make_extractor
from synthasr.utils.audio import (ARRAY_NAME, AudioError, check_sample_rate, read_audio, resample,  # noqa: F401
                                  to_float32, to_mono)

log = logging.getLogger(__name__)

AudioInput = Union[str, os.PathLike, np.ndarray, torch.Tensor]
METHODS = ("greedy_search", "modified_beam_search")
_MIN_FRAMES = 7  # synthasr.model.encoder.MIN_INPUT_FRAMES


@dataclass
class _Chunk:
    item: int  # index of the input it belongs to
    position: int  # chunk number inside that input
    features: torch.Tensor  # (T, F)


class ASRBundle:
    """Model + tokenizer + feature extractor from one checkpoint; see :meth:`transcribe`."""

    def __init__(self, model, tokenizer, feature_config: FeatureConfig, device: Union[str, torch.device] = "cpu",
                 source: str = "<memory>") -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.feature_config = feature_config
        self.feature_extractor = make_extractor(feature_config)
        self.device = torch.device(device)
        self.source = source

    # -- loading ----------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu",
                        num_threads: Optional[int] = None) -> "ASRBundle":
        """Load a SynthASR checkpoint; :class:`CheckpointError` (one line) if it is inconsistent."""
        from synthasr.config import ConfigError, from_dict
        from synthasr.model import ModelConfig, build_model
        from synthasr.tokenizer import Tokenizer

        if num_threads is not None:
            torch.set_num_threads(num_threads)
        ckpt = load_checkpoint(path)
        try:
            model_cfg = ModelConfig.from_any(ckpt["model_config"]).resolved()
            feature_cfg = from_dict(FeatureConfig, dict(ckpt.get("feature_config") or {}), where="feature_config")
        except ConfigError as e:
            raise CheckpointError(f"{path}: {e}") from None
        proto = tokenizer_proto(ckpt)
        if proto is None:
            raise CheckpointError(f"{path}: checkpoint has no embedded tokenizer")
        try:
            tokenizer = Tokenizer.from_bytes(proto, source=str(path))
        except Exception as e:  # sentencepiece raises plain RuntimeError/OSError on a bad proto
            raise CheckpointError(f"{path}: embedded tokenizer is unreadable: {str(e).splitlines()[0]}") from None
        if tokenizer.vocab_size != model_cfg.vocab_size:
            raise CheckpointError(
                f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model was built for "
                f"vocab_size={model_cfg.vocab_size}")
        with torch.device("meta"):  # shapes only: a config that disagrees with the weights allocates nothing
            check_state_dict(build_model(model_cfg).state_dict(), ckpt["model"], str(path))
        model = build_model(model_cfg)
        model.load_state_dict(ckpt["model"], strict=True)
        return cls(model, tokenizer, feature_cfg, device=device, source=str(path))

    # -- decoding ---------------------------------------------------------------------------------
    def transcribe(self, audio: Union[AudioInput, Sequence[AudioInput]], sample_rate: Optional[int] = None,
                   method: str = "greedy_search", beam_size: int = 4,
                   hotwords: Optional[Sequence[Union[str, Tuple[str, float]]]] = None,
                   hotword_score: float = 0.5, chunk_seconds: float = 30.0, batch_size: int = 8,
                   progress: bool = False, context_graph=None, lm=None, lm_scale: float = 0.5,
                   lm_token_bonus: float = 2.0, ilm_scale: float = 0.0) -> Union[str, List[Optional[str]]]:
        """Text for one input (str) or for a list of inputs (list; ``None`` for unreadable items).

        ``sample_rate`` is required for arrays/tensors and ignored for files. ``hotwords`` (phrases,
        ``"phrase:score"`` strings or ``(phrase, score)`` pairs) switch on contextual biasing, which
        needs ``method="modified_beam_search"`` (it is selected automatically when hotwords are given).
        A prebuilt ``context_graph`` (see :meth:`context_graph`) may be passed instead of ``hotwords``.
        ``lm`` (an ARPA path over this model's BPE units, or a loaded :class:`synthasr.lm.ngram.NgramLM`)
        adds shallow fusion (weight ``lm_scale``, ``lm_token_bonus`` per token, and ``ilm_scale`` times the
        model's internal LM estimate subtracted; see :class:`synthasr.decode.search.ShallowFusion`) and
        also selects modified beam search.
        """
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if chunk_seconds <= 0:
            raise ValueError(f"chunk_seconds must be positive, got {chunk_seconds}")
        if context_graph is None and hotwords:
            context_graph = self.context_graph(hotwords, hotword_score)
        fusion = None
        if lm is None and ilm_scale:
            raise ValueError("ilm_scale needs lm: it corrects the external LM's fusion")
        if lm is not None:
            from synthasr.decode.search import ShallowFusion

            lm = lm if hasattr(lm, "log_probs") else self.language_model(lm)
            fusion = ShallowFusion(lm, lm_scale, lm_token_bonus, ilm_scale)
        if context_graph is not None or fusion is not None:
            method = "modified_beam_search"
        if sample_rate is not None:
            sample_rate = check_sample_rate(sample_rate)
        single = not isinstance(audio, (list, tuple))
        items = [audio] if single else list(audio)

        chunks: List[_Chunk] = []
        failed: Dict[int, str] = {}
        for i, item in enumerate(items):
            try:
                samples = self.load_audio(item, sample_rate)
            except AudioError as e:
                if single:
                    raise
                failed[i] = str(e)
                warnings.warn(str(e), stacklevel=2)  # the one report; logging it too printed it twice
                continue
            chunks.extend(self._chunk_features(i, samples, chunk_seconds))

        texts = self._decode_chunks(chunks, method, beam_size, context_graph, batch_size, progress, fusion)
        results: List[Optional[str]] = []
        for i in range(len(items)):
            if i in failed:
                results.append(None)
                continue
            pieces = [texts[(i, c.position)] for c in chunks if c.item == i]
            results.append(" ".join(p for p in pieces if p))
        return results[0] if single else results

    def context_graph(self, hotwords, hotword_score: float = 0.5):
        """A :class:`ContextGraph` for ``hotwords`` with this bundle's tokenizer (None when empty)."""
        from synthasr.decode.context_graph import ContextGraph

        return ContextGraph.from_phrases(list(hotwords or []), self.tokenizer, score=hotword_score)

    def language_model(self, path: Union[str, os.PathLike]):
        """An n-gram LM (ARPA, optionally .gz) over this bundle's BPE units, for ``transcribe(lm=...)``."""
        from synthasr.lm.ngram import NgramLM

        return NgramLM.load(path, self.tokenizer)

    def load_audio(self, item: AudioInput, sample_rate: Optional[int] = None) -> np.ndarray:
        """Mono float32 samples at the model's sampling rate (see :func:`load_audio`)."""
        return load_audio(item, self.feature_config.sampling_rate, sample_rate)

    def _chunk_features(self, item: int, samples: np.ndarray, chunk_seconds: float) -> List[_Chunk]:
        rate = self.feature_config.sampling_rate
        max_len = max(1, int(round(chunk_seconds * rate)))
        num_chunks = max(1, math.ceil(len(samples) / max_len))
        size = math.ceil(len(samples) / num_chunks) if len(samples) else 0
        out = []
        for c in range(num_chunks):
            piece = samples[c * size: (c + 1) * size]
            out.append(_Chunk(item, c, self._features(piece)))
        return out

    def _features(self, samples: np.ndarray) -> torch.Tensor:
        rate = self.feature_config.sampling_rate
        frame_length = int(self.feature_config.frame_length * rate)
        if len(samples) < frame_length:
            return torch.zeros(0, self.feature_config.num_mel_bins)
        feats = self.feature_extractor.extract(samples.astype(np.float32), sampling_rate=rate)
        return torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))

    @torch.inference_mode()
    def _decode_chunks(self, chunks: List[_Chunk], method: str, beam_size: int, context_graph,
                       batch_size: int, progress: bool, fusion=None) -> Dict[Tuple[int, int], str]:
        from tqdm import tqdm

        from synthasr.decode.search import greedy_search, modified_beam_search

        texts = {(c.item, c.position): "" for c in chunks}
        usable = sorted((c for c in chunks if c.features.size(0) >= _MIN_FRAMES),
                        key=lambda c: c.features.size(0), reverse=True)
        batches = [usable[i: i + batch_size] for i in range(0, len(usable), batch_size)]
        for batch in tqdm(batches, desc="decode", disable=not progress, unit="batch"):
            lens = torch.tensor([c.features.size(0) for c in batch])
            x = torch.nn.utils.rnn.pad_sequence([c.features for c in batch], batch_first=True)
            enc, enc_lens = self.model.encode(x.to(self.device), lens.to(self.device))
            if method == "greedy_search":
                hyps = greedy_search(self.model, enc, enc_lens, unk_id=self.tokenizer.unk_id)
            else:
                hyps = modified_beam_search(self.model, enc, enc_lens, beam_size=beam_size,
                                            context_graph=context_graph, unk_id=self.tokenizer.unk_id,
                                            fusion=fusion)
            for c, text in zip(batch, self.tokenizer.decode(hyps)):
                texts[(c.item, c.position)] = text
        return texts


def check_state_dict(expected: Dict[str, torch.Tensor], found: Dict[str, Any], where: str) -> None:
    """Raise CheckpointError naming the first missing/unexpected key or shape mismatch."""
    for key, tensor in expected.items():
        if key not in found:
            raise CheckpointError(f"{where}: weights do not match model_config: missing key {key}")
        got = tuple(getattr(found[key], "shape", ()))
        if got != tuple(tensor.shape):
            raise CheckpointError(
                f"{where}: weights do not match model_config: {key} has shape {list(got)}, "
                f"config expects {list(tensor.shape)}")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise CheckpointError(f"{where}: weights do not match model_config: unexpected key {extra[0]}")


def load_audio(item: AudioInput, target_rate: int, sample_rate: Optional[int] = None) -> np.ndarray:
    """Read a file (any format soundfile knows) or take an array/tensor; return mono float32 at
    ``target_rate``. Arrays may be (samples,), (channels, samples) or (samples, channels): the
    smaller axis is taken as channels. Integer arrays are PCM (int16 / 32768, as for a 16-bit file)."""
    if isinstance(item, (str, os.PathLike)):
        samples, rate = read_audio(Path(item))
        name = str(item)
    else:
        if sample_rate is None:
            raise AudioError("sample_rate= is required when passing audio as an array or tensor")
        rate, name = check_sample_rate(sample_rate), ARRAY_NAME
        samples = to_mono(to_float32(_as_array(item), name), name)
    if not np.all(np.isfinite(samples)):
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    return resample(samples, rate, target_rate)


def _as_array(item: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    if isinstance(item, torch.Tensor):
        tensor = item.detach().cpu()
        if tensor.is_floating_point() and tensor.dtype not in (torch.float32, torch.float64):
            tensor = tensor.float()  # bfloat16 has no numpy twin
        return tensor.numpy()
    return np.asarray(item)


# -- module-level convenience with a small cache ------------------------------------------------
_CACHE: "OrderedDict[Tuple[str, int, str], ASRBundle]" = OrderedDict()
_CACHE_SIZE = 4
_CACHE_LOCK = threading.Lock()


def load_model(path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu",
               num_threads: Optional[int] = None) -> ASRBundle:
    """Cached :meth:`ASRBundle.from_checkpoint`: keyed by resolved path + mtime, so a rewritten
    checkpoint is reloaded and repeated ``decode()`` calls are cheap."""
    resolved = Path(path).resolve()
    if not resolved.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    key = (str(resolved), resolved.stat().st_mtime_ns, str(torch.device(device)))
    with _CACHE_LOCK:
        bundle = _CACHE.get(key)
        if bundle is not None:
            _CACHE.move_to_end(key)
            return bundle
    bundle = ASRBundle.from_checkpoint(resolved, device=device)
    with _CACHE_LOCK:
        _CACHE[key] = bundle
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return bundle


def decode(audio: Union[AudioInput, Sequence[AudioInput]], model: Union[str, os.PathLike, ASRBundle],
           method: str = "greedy_search", beam_size: int = 4, sample_rate: Optional[int] = None,
           hotwords: Optional[Sequence[str]] = None, hotword_score: float = 0.5, chunk_seconds: float = 30.0,
           device: Union[str, torch.device] = "cpu", num_threads: Optional[int] = None,
           lm=None, lm_scale: float = 0.5, lm_token_bonus: float = 2.0,
           ilm_scale: float = 0.0) -> Union[str, List[Optional[str]]]:
    """Transcribe ``audio`` with a checkpoint path (cached) or a loaded bundle; ``lm``: an ARPA path
    (or loaded n-gram) over the model's BPE units for shallow fusion (see :meth:`ASRBundle.transcribe`)."""
    bundle = model if isinstance(model, ASRBundle) else load_model(model, device=device, num_threads=num_threads)
    return bundle.transcribe(audio, sample_rate=sample_rate, method=method, beam_size=beam_size,
                             hotwords=hotwords, hotword_score=hotword_score, chunk_seconds=chunk_seconds,
                             lm=lm, lm_scale=lm_scale, lm_token_bonus=lm_token_bonus, ilm_scale=ilm_scale)
