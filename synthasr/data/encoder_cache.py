"""Encoder outputs of a frozen encoder, computed once and stored like features.

Why: while the encoder is frozen (and in eval mode) its output for a cut never changes, yet training
from features recomputes it at every step -- on a CPU, most of the step time for a pretrained encoder.
:func:`build_encoder_cache` runs the encoder once per cut and stores the result as a lhotse array
(``cut.encoder_out``, a :class:`lhotse.array.TemporalArray` whose frame shift is the encoder frame
rate); :class:`synthasr.data.dataset.AsrDataset` with ``inputs="encoder_out"`` then yields those
arrays and :meth:`synthasr.model.Transducer.forward` starts from them.

Storage: float16 ``.npy`` files (lhotse ``NumpyFilesWriter``, one file per cut). Measured on espeak-ng
speech through the tiny and small Conformers (LayerNorm output, std 1.0, |x| <= 4.2): float16 has a
relative RMS error of 2.0e-4 at 2 bytes/value; lilcom (``LilcomChunkyWriter``) has 9.0e-3 at any
``tick_power`` from -5 to -10 (0.8-1.5 bytes/value) -- 45x the error for at most 2.6x less disk,
on activations that, unlike log-mel features, are not smooth in time. One file per cut also makes
resuming exact: a file whose cut is not yet in the progress ledger is simply rewritten.

Layout of ``out_dir``::

    cache_key.json        key of (encoder weights + encoder config + feature config + storage format)
    encoder_out/          the arrays
    progress.jsonl        one line per finished cut (appended + fsynced per batch): a rerun skips them
    cuts.jsonl.gz         the input cuts with ``encoder_out`` attached, written atomically at the end

A cache built for another encoder or feature config is refused (one-line :class:`EncoderCacheError`)
instead of being silently reused.

Offline augmentation (Kaldi-style copies): ``encode_view`` maps a cut to what the encoder should hear
(e.g. an augmented copy, see ``augment_copies`` in :mod:`synthasr.train.schedule`). The stored
manifest keeps the cut itself, so its tags and transcript are untouched, and the ledger records the
view's full description: a changed augmentation recomputes exactly the copies it changes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch
from torch import nn

from synthasr.config import to_dict
from synthasr.data.features import FeatureConfig

log = logging.getLogger(__name__)
PathLike = Union[str, Path]

FIELD = "encoder_out"
FORMAT = "numpy_files/float16/v1"
KEY_FILE = "cache_key.json"
PROGRESS_FILE = "progress.jsonl"
MANIFEST_FILE = "cuts.jsonl.gz"
# Model-config keys that cannot change an encoder's output (decoder/joiner sizes, provenance).
_NOT_ENCODER_KEYS = frozenset({"preset", "vocab_size", "decoder_type", "decoder_dim", "context_size", "lstm_layers",
                               "joiner_dim", "checkpoint", "pretrained_from"})


class EncoderCacheError(RuntimeError):
    """The encoder cache cannot be built or used (stale key, unusable cut); the message says which."""


def encoder_cache_key(model: nn.Module, feature_config: FeatureConfig) -> str:
    """SHA-256 over the encoder's state dict (names, dtypes, shapes, bytes), the encoder's config and
    the feature config: any change to what the encoder would output changes the key."""
    h = hashlib.sha256()
    h.update(FORMAT.encode())
    h.update(type(model.encoder).__qualname__.encode())
    config = getattr(model, "config", None)
    config_dict = to_dict(config) if config is not None else {}
    h.update(json.dumps(_encoder_relevant(config_dict), sort_keys=True, default=str).encode())
    h.update(json.dumps(to_dict(feature_config), sort_keys=True).encode())
    for name, tensor in sorted(model.encoder.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _encoder_relevant(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _encoder_relevant(v) for k, v in value.items() if k not in _NOT_ENCODER_KEYS}
    return value


def encoder_frame_shift(model: nn.Module, feature_config: FeatureConfig) -> float:
    """Seconds per encoder frame: the feature frame shift times the encoder's subsampling factor,
    measured by running the encoder on a silent probe (encoder-agnostic; 4 for the Conformer)."""
    encoder = model.encoder
    param = next(encoder.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    error: Optional[Exception] = None
    for frames in (800, 400, 200, 100):  # the longest probe the encoder accepts
        x = torch.zeros(1, frames, feature_config.num_mel_bins, device=device)
        try:
            with torch.no_grad():
                _, out_lens = encoder(x, torch.tensor([frames], device=device))
        except (ValueError, RuntimeError) as e:
            error = e
            continue
        factor = round(frames / max(int(out_lens[0]), 1))
        return feature_config.frame_shift * factor
    raise EncoderCacheError(f"cannot measure the encoder's frame rate: {error}")


def _features_ref(cut) -> str:
    """What the encoder input of ``cut`` is made from; a changed reference invalidates its entry."""
    if cut.has_features:
        f = cut.features
        return f"features:{f.storage_type}:{f.storage_path}:{f.storage_key}:{f.num_frames}:{cut.start}:{cut.duration}"
    return f"audio:{cut.recording_id}:{cut.start}:{cut.duration}"


def check_cache_key(out_dir: PathLike, key: str) -> None:
    """Raise :class:`EncoderCacheError` when ``out_dir`` holds a cache built under another key."""
    path = Path(out_dir) / KEY_FILE
    if not path.is_file():
        return
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))["key"]
    except (ValueError, KeyError) as e:
        raise EncoderCacheError(f"{path}: unreadable cache key ({e}); delete {out_dir} to rebuild") from None
    if stored != key:
        raise EncoderCacheError(
            f"{path}: cache was built for another encoder or feature config (key {stored[:12]}, this model "
            f"has {key[:12]}); delete {out_dir} to rebuild it"
        )


def _write_key(out_dir: Path, key: str, frame_shift: float, feature_config: FeatureConfig) -> None:
    from synthasr.utils.io import atomic_write

    with atomic_write(out_dir / KEY_FILE) as f:
        json.dump({"key": key, "format": FORMAT, "frame_shift": frame_shift,
                   "feature_config": to_dict(feature_config)}, f, indent=2)


def _read_progress(out_dir: Path) -> Dict[str, Dict[str, Any]]:
    """Finished cuts by id; a torn last line (killed mid-append) is ignored, later lines win."""
    path = out_dir / PROGRESS_FILE
    done: Dict[str, Dict[str, Any]] = {}
    if not path.is_file():
        return done
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
                done[record["id"]] = record
            except (ValueError, KeyError):
                continue
    return done


def _end_torn_line(path: Path) -> None:
    """Terminate a last line cut short by a kill, so the next record starts on a line of its own."""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


# The parts of a view's manifest form that decide what the encoder hears. Not ``custom``: lhotse's
# samplers write ``dataloading_info`` onto the cuts they yield, so after any data loading over the same
# cut objects (e.g. building the clean cache) the whole-manifest digest changed and every copy was
# recomputed. Not the supervisions either: the text does not reach the encoder.
HEARD_FIELDS = ("recording", "features", "start", "duration", "channel")


def _view_ref(cut, view) -> str:
    """The ledger reference of ``cut`` heard as ``view``: its features/audio, plus a digest of the view's
    audio (source, every transform and its parameters, span) when the encoder hears something else."""
    if view is None:
        return _features_ref(cut)
    heard = {k: v for k, v in view.to_dict().items() if k in HEARD_FIELDS}
    digest = hashlib.sha256(json.dumps(heard, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{_features_ref(cut)}|view:{digest}"


def _still_valid(record: Dict[str, Any], ref: str) -> bool:
    if record.get("ref") != ref:
        return False
    array = record[FIELD]["array"]
    return (Path(array["storage_path"]) / array["storage_key"]).is_file()


def build_encoder_cache(
    model: nn.Module,
    cuts,
    out_dir: PathLike,
    feature_config: Optional[FeatureConfig] = None,
    max_duration: float = 200.0,
    device: Union[str, torch.device] = "cpu",
    on_the_fly_features: bool = False,
    encode_view: Optional[Callable[[Any], Any]] = None,
):
    """Store ``model.encoder``'s output for every cut in ``out_dir``; return the cuts with ``encoder_out``.

    The encoder runs in eval mode without gradients, in duration-sorted batches of at most
    ``max_duration`` seconds, on the same features the trainer would compute (stored ones unless
    ``on_the_fly_features``). Each cut keeps its exact encoder length (the stored array's first dim).
    Resumable: cuts already in the progress ledger (same features, file present) are not recomputed.
    The model's train/eval mode and device are restored afterwards.

    ``encode_view(cut)``, when given, is what the encoder hears for ``cut`` (an augmented copy: its
    features are computed on the fly); the returned cut is still ``cut`` with the view's output.
    """
    from lhotse import CutSet, NumpyFilesWriter

    from synthasr.data.dataset import AsrDataset, make_loader, make_sampler
    from synthasr.utils.io import atomic_path

    feature_config = feature_config or FeatureConfig()
    out_dir = Path(out_dir)
    cuts = cuts.to_eager() if cuts.is_lazy else cuts
    key = encoder_cache_key(model, feature_config)
    check_cache_key(out_dir, key)
    encoder = model.encoder
    was_training = encoder.training
    param = next(encoder.parameters(), None)
    home = param.device if param is not None else torch.device("cpu")
    encoder.to(device).eval()
    try:
        frame_shift = encoder_frame_shift(model, feature_config)
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_key(out_dir, key, frame_shift, feature_config)
        done = _read_progress(out_dir)
        views = {c.id: encode_view(c).with_id(c.id) for c in cuts} if encode_view is not None else {}
        refs = {c.id: _view_ref(c, views.get(c.id)) for c in cuts}
        todo = CutSet.from_cuts(c for c in cuts if not (c.id in done and _still_valid(done[c.id], refs[c.id])))
        if len(todo):
            log.info("%s: computing encoder outputs for %d of %d cuts", out_dir, len(todo), len(cuts))
            heard = CutSet.from_cuts(views[c.id] for c in todo) if views else todo
            dataset = AsrDataset(feature_config=feature_config,
                                 on_the_fly_features=on_the_fly_features or encode_view is not None)
            sampler = make_sampler(heard.sort_by_duration(), max_duration=max_duration, shuffle=False, seed=0,
                                   bucketing=False)
            writer = NumpyFilesWriter(out_dir / "encoder_out")
            _end_torn_line(out_dir / PROGRESS_FILE)
            with open(out_dir / PROGRESS_FILE, "a", encoding="utf-8") as ledger:
                for batch in make_loader(dataset, sampler):
                    records = _encode_batch(encoder, batch, writer, frame_shift, device, todo, refs)
                    for record in records:
                        done[record["id"]] = record
                        ledger.write(json.dumps(record) + "\n")
                    ledger.flush()
                    os.fsync(ledger.fileno())
    finally:
        encoder.to(home).train(was_training)
    from lhotse.array import TemporalArray

    with_outputs = CutSet.from_cuts(c.with_custom(FIELD, TemporalArray.from_dict(dict(done[c.id][FIELD])))
                                    for c in cuts)
    with atomic_path(out_dir / MANIFEST_FILE) as tmp:
        with_outputs.to_file(tmp)
    return with_outputs


def _encode_batch(encoder: nn.Module, batch: Dict[str, Any], writer, frame_shift: float, device,
                  cuts, refs: Dict[str, str]) -> List[Dict[str, Any]]:
    """Encode one batch, store each cut's exact-length output as float16; the ledger records."""
    with torch.inference_mode():
        out, out_lens = encoder(batch["features"].to(device), batch["feature_lens"].to(device))
    out = out.float().cpu().numpy()
    records = []
    for i, cut_id in enumerate(batch["cut_ids"]):
        n = int(out_lens[i])
        if n <= 0:
            raise EncoderCacheError(f"cut {cut_id}: {int(batch['feature_lens'][i])} feature frames give no "
                                    f"encoder output (too short); remove it from the cuts")
        array = out[i, :n].astype(np.float16)
        if not np.isfinite(array).all():
            raise EncoderCacheError(f"cut {cut_id}: non-finite encoder output (float16 overflow or a bad model)")
        cut = cuts[cut_id]
        stored = writer.store_array(cut_id, array, frame_shift=frame_shift, temporal_dim=0, start=cut.start)
        records.append({"id": cut_id, "ref": refs[cut_id], FIELD: stored.to_dict()})
    return records


def load_encoder_out(cut) -> np.ndarray:
    """The stored (T', D) encoder output of ``cut`` as float32, whole (its exact stored length)."""
    custom = getattr(cut, "custom", None) or {}
    if FIELD not in custom:
        raise EncoderCacheError(f"cut {cut.id}: no '{FIELD}' field (build it with build_encoder_cache)")
    return custom[FIELD].load().astype(np.float32)
