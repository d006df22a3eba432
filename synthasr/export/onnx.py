"""Export a SynthASR transducer to ONNX in the layout sherpa-onnx's OFFLINE transducer recognizer loads.

Layout (the one icefall's ``export-onnx.py`` writes for non-streaming Conformer/Zipformer transducers,
and what ``sherpa_onnx.OfflineRecognizer.from_transducer`` expects)::

    encoder.onnx  x (N, T, F) float32, x_lens (N,) int64 -> encoder_out (N, T', joiner_dim), encoder_out_lens (N,) int64
    decoder.onnx  y (N, context_size) int64              -> decoder_out (N, joiner_dim)
    joiner.onnx   encoder_out (N, joiner_dim), decoder_out (N, joiner_dim) -> logit (N, vocab_size)
    tokens.txt    "<piece> <id>" per line, <blk> 0 first

The joiner's input projections are folded into the other two models: ``encoder.onnx`` ends with
``joiner.encoder_proj`` and ``decoder.onnx`` with ``joiner.decoder_proj``, so sherpa-onnx projects each
encoder frame once and each decoder output once, and ``joiner.onnx`` is just ``output_linear(tanh(a + b))``.

Metadata sherpa-onnx reads: ``model_type`` on the encoder (``"conformer"`` selects the transducer
recognizer when no ``model_type`` is passed on the command line) and ``vocab_size`` / ``context_size`` on
the decoder (required: the recognizer aborts without them). Everything else written here is
informational (sizes, the feature front end, the source checkpoint).

Features: sherpa-onnx computes 80-bin kaldi-native-fbank features (25 ms / 10 ms povey window, dither 0,
snip_edges false, low_freq 20, high_freq -400, log floor FLT_EPSILON) on samples in [-1, 1]
(``normalize_samples=True``, its default: no scaling by 32768). Those are lhotse ``Fbank``'s defaults,
which is what :func:`synthasr.data.features.make_extractor` builds, so the two front ends agree; a
feature config with other window sizes is refused. Whisper-encoder models (``whisper_fbank``) export to
the same files, but sherpa-onnx cannot compute Whisper's log-mel: whoever runs ``encoder.onnx`` must feed
it ``make_extractor(feature_config)`` features (the export logs a warning and says so in the metadata).

The export is atomic: all files are written and checked against PyTorch in a staging folder inside
``out_dir``, then renamed into place one by one; a failed export leaves ``out_dir`` as it was.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from synthasr.checkpoint import CheckpointError, load_checkpoint
from synthasr.utils.io import atomic_path

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
DEFAULT_OPSET = 17
SUBSAMPLING_FACTOR = 4
FEATURE_DESCRIPTIONS = {
    "fbank": "kaldi fbank, povey window, dither 0, snip_edges false, samples in [-1, 1]",
    "whisper_fbank": "Whisper log-mel (log10, clamp to max - 8, (x + 4) / 4); not sherpa-onnx's front end",
}
# sherpa-onnx's offline front end: frame length/shift are fixed in its Python API.
SHERPA_FRAME_SHIFT_S = 0.010
SHERPA_FRAME_LENGTH_S = 0.025
FP32_FILES = ("encoder.onnx", "decoder.onnx", "joiner.onnx")
INT8_FILES = ("encoder.int8.onnx", "decoder.int8.onnx", "joiner.int8.onnx")
# Which ops dynamic int8 quantization touches per model (icefall's choice: attention/FFN MatMuls; the
# decoder's embedding table is a Gather).
_INT8_OPS = {"encoder": ["MatMul"], "decoder": ["MatMul", "Gather"], "joiner": ["MatMul"]}


class ExportError(RuntimeError):
    """The export itself failed (ONNX export, quantization, or the exported model disagrees with PyTorch)."""


class UnsupportedModelError(ValueError):
    """The checkpoint describes a model sherpa-onnx's offline transducer cannot represent."""


# --------------------------------------------------------------------------------------------------
# Export wrappers: one nn.Module per ONNX file, with the exact inputs/outputs sherpa-onnx feeds/reads.
# --------------------------------------------------------------------------------------------------
class OnnxEncoder(nn.Module):
    """Conformer encoder followed by ``joiner.encoder_proj``: (x, x_lens) -> (projected frames, lengths)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.encoder_proj = model.joiner.encoder_proj

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        encoder_out, encoder_out_lens = self.encoder(x, x_lens)
        return self.encoder_proj(encoder_out), encoder_out_lens


class OnnxDecoder(nn.Module):
    """Stateless prediction network on the last ``context_size`` tokens, then ``joiner.decoder_proj``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.decoder = model.decoder
        self.decoder_proj = model.joiner.decoder_proj

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        decoder_out = self.decoder(y, need_pad=False)[:, -1]  # (N, decoder_dim)
        return self.decoder_proj(decoder_out)


class OnnxJoiner(nn.Module):
    """``output_linear(tanh(encoder_out + decoder_out))`` on already projected inputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.output_linear = model.joiner.output_linear

    def forward(self, encoder_out: torch.Tensor, decoder_out: torch.Tensor) -> torch.Tensor:
        return self.output_linear(torch.tanh(encoder_out + decoder_out))


# --------------------------------------------------------------------------------------------------
# What can be exported
# --------------------------------------------------------------------------------------------------
def check_exportable(model_config, feature_config, where: str = "checkpoint") -> None:
    """Raise :class:`UnsupportedModelError` (one line) if sherpa-onnx's offline transducer cannot run
    this model with the features it was trained on."""
    if model_config.decoder_type != "stateless":
        raise UnsupportedModelError(
            f"{where}: model_config.decoder_type={model_config.decoder_type!r} cannot be exported: sherpa-onnx's "
            "offline transducer only runs a stateless decoder (input: the last context_size tokens, no "
            "recurrent state); retrain with decoder_type: stateless")
    if feature_config.type not in FEATURE_DESCRIPTIONS:
        raise UnsupportedModelError(
            f"{where}: feature_config.type={feature_config.type!r}: expected one of {sorted(FEATURE_DESCRIPTIONS)}")
    if feature_config.type == "whisper_fbank":
        log.warning("%s: Whisper log-mel model: sherpa-onnx's front end computes kaldi fbank, not these features; "
                    "run encoder.onnx on synthasr.data.features.make_extractor features (docs/deployment.md)", where)
    for key, expected in (("frame_shift", SHERPA_FRAME_SHIFT_S), ("frame_length", SHERPA_FRAME_LENGTH_S)):
        value = float(getattr(feature_config, key))
        if abs(value - expected) > 1e-9:
            raise UnsupportedModelError(
                f"{where}: feature_config.{key}={value}: sherpa-onnx's offline recognizer uses a fixed "
                f"{expected * 1000:g} ms {key.replace('_', ' ')}")
    if model_config.feature_dim != feature_config.num_mel_bins:
        raise UnsupportedModelError(
            f"{where}: model_config.feature_dim={model_config.feature_dim} differs from "
            f"feature_config.num_mel_bins={feature_config.num_mel_bins}")


def _read_configs(ckpt: Mapping, where: str):
    """(ModelConfig resolved, FeatureConfig) from a loaded checkpoint; CheckpointError if malformed."""
    from synthasr.config import ConfigError, from_dict
    from synthasr.data.features import FeatureConfig
    from synthasr.model import ModelConfig

    try:
        model_cfg = ModelConfig.from_any(ckpt["model_config"]).resolved()
        feature_cfg = from_dict(FeatureConfig, dict(ckpt.get("feature_config") or {}), where="feature_config")
    except ConfigError as e:
        raise CheckpointError(f"{where}: {e}") from None
    return model_cfg, feature_cfg


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------
@dataclass
class OnnxExport:
    """Where an export went and what sherpa-onnx needs to load it."""

    out_dir: Path
    encoder: Path
    decoder: Path
    joiner: Path
    tokens: Path
    sample_rate: int
    feature_dim: int
    int8: Dict[str, Path] = field(default_factory=dict)  # "encoder"/"decoder"/"joiner" -> *.int8.onnx

    def files(self, int8: bool = False) -> Dict[str, str]:
        """Keyword arguments for ``OfflineRecognizer.from_transducer`` (model files + tokens)."""
        chosen = self.int8 if int8 else {"encoder": self.encoder, "decoder": self.decoder, "joiner": self.joiner}
        if int8 and not chosen:
            raise ExportError(f"{self.out_dir}: no int8 models were exported (use int8=True / --int8)")
        return {**{k: str(v) for k, v in chosen.items()}, "tokens": str(self.tokens)}


def export_onnx(checkpoint: PathLike, out_dir: PathLike, int8: bool = False, opset: int = DEFAULT_OPSET,
                verify: bool = True) -> OnnxExport:
    """Export a SynthASR checkpoint to ``out_dir`` for sherpa-onnx (see the module docstring).

    Raises :class:`CheckpointError` (missing/corrupt checkpoint), :class:`UnsupportedModelError` (config
    sherpa-onnx cannot represent) or :class:`ExportError` (export/quantization/verification failed).
    """
    from synthasr.decode.bundle import ASRBundle

    where = str(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    model_cfg, feature_cfg = _read_configs(ckpt, where)
    check_exportable(model_cfg, feature_cfg, where)
    del ckpt
    bundle = ASRBundle.from_checkpoint(checkpoint)  # the consistency checks decode() relies on
    meta = {"source_checkpoint": Path(checkpoint).name}
    return export_model_onnx(bundle.model, bundle.tokenizer.tokens_txt(), feature_cfg, out_dir, int8=int8,
                             opset=opset, verify=verify, extra_meta=meta)


def export_model_onnx(model: nn.Module, tokens_txt: str, feature_config, out_dir: PathLike, int8: bool = False,
                      opset: int = DEFAULT_OPSET, verify: bool = True,
                      extra_meta: Optional[Mapping[str, str]] = None) -> OnnxExport:
    """Export an in-memory Transducer (+ its ``tokens.txt`` text and FeatureConfig) atomically.

    The model is moved to the CPU and left in eval mode.
    """
    cfg = model.config
    check_exportable(cfg, feature_config, where="model")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").eval()
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        names = _write_all(model, tokens_txt, feature_config, staging, int8, opset, extra_meta or {})
        if verify:
            # a sanity gate, looser than the unit tests' 1e-4 so large models' float noise never blocks it
            verify_against_torch(model, staging, rtol=1e-3, atol=1e-3)
            if int8:
                verify_int8(model, staging)
        for name in names:
            _publish(staging / name, out_dir / name)
        _remove_stale(out_dir, keep=names)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result = OnnxExport(out_dir=out_dir, encoder=out_dir / "encoder.onnx", decoder=out_dir / "decoder.onnx",
                        joiner=out_dir / "joiner.onnx", tokens=out_dir / "tokens.txt",
                        sample_rate=int(feature_config.sampling_rate), feature_dim=int(cfg.feature_dim))
    if int8:
        result.int8 = {part: out_dir / f"{part}.int8.onnx" for part in ("encoder", "decoder", "joiner")}
    log.info("exported %s to %s", ", ".join(names), out_dir)
    return result


def _write_all(model: nn.Module, tokens_txt: str, feature_config, staging: Path, int8: bool, opset: int,
               extra_meta: Mapping[str, str]) -> List[str]:
    from tqdm import tqdm

    metadata = model_metadata(model, feature_config, extra_meta)
    steps = [("encoder", _export_encoder), ("decoder", _export_decoder), ("joiner", _export_joiner)]
    names: List[str] = []
    with tqdm(total=len(steps) * (2 if int8 else 1), desc="export onnx", unit="model",
              disable=not log.isEnabledFor(logging.INFO)) as bar:
        for part, export_fn in steps:
            path = staging / f"{part}.onnx"
            export_fn(model, path, opset)
            add_metadata(path, metadata[part])
            names.append(path.name)
            bar.update(1)
            if int8:
                quantize_int8(path, staging / f"{part}.int8.onnx", _INT8_OPS[part])
                names.append(f"{part}.int8.onnx")
                bar.update(1)
    (staging / "tokens.txt").write_text(tokens_txt, encoding="utf-8")
    names.append("tokens.txt")
    return names


def _publish(staged: Path, target: Path) -> None:
    """Move a staged file onto its target through :func:`atomic_path` (rename, never a partial file)."""
    with atomic_path(target) as tmp:
        os.replace(staged, tmp)


def _remove_stale(out_dir: Path, keep: Iterable[str]) -> None:
    """Drop int8 files left by an earlier ``--int8`` export: they belong to a different model."""
    for name in set(INT8_FILES) - set(keep):
        (out_dir / name).unlink(missing_ok=True)


def _torch_export(module: nn.Module, args: tuple, path: Path, input_names: List[str], output_names: List[str],
                  dynamic_axes: Dict[str, Dict[int, str]], opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shape arithmetic are expected and harmless
        try:
            with torch.no_grad():
                torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset,
                                  input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
                                  do_constant_folding=True)
        except Exception as e:  # torch raises many types (RuntimeError, OnnxExporterError, TypeError...)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(f"{path.name}: torch.onnx.export failed: {first}") from None


def _export_encoder(model: nn.Module, path: Path, opset: int) -> None:
    frames = 100
    x = torch.zeros(1, frames, model.config.feature_dim)
    x_lens = torch.tensor([frames], dtype=torch.int64)
    _torch_export(OnnxEncoder(model), (x, x_lens), path, ["x", "x_lens"], ["encoder_out", "encoder_out_lens"],
                  {"x": {0: "N", 1: "T"}, "x_lens": {0: "N"}, "encoder_out": {0: "N", 1: "T_out"},
                   "encoder_out_lens": {0: "N"}}, opset)


def _export_decoder(model: nn.Module, path: Path, opset: int) -> None:
    y = torch.zeros(4, model.decoder.context_size, dtype=torch.int64)
    _torch_export(OnnxDecoder(model), (y,), path, ["y"], ["decoder_out"],
                  {"y": {0: "N"}, "decoder_out": {0: "N"}}, opset)


def _export_joiner(model: nn.Module, path: Path, opset: int) -> None:
    dim = model.joiner.output_linear.in_features
    enc, dec = torch.zeros(4, dim), torch.zeros(4, dim)
    _torch_export(OnnxJoiner(model), (enc, dec), path, ["encoder_out", "decoder_out"], ["logit"],
                  {"encoder_out": {0: "N"}, "decoder_out": {0: "N"}, "logit": {0: "N"}}, opset)


def model_metadata(model: nn.Module, feature_config, extra: Mapping[str, str] = ()) -> Dict[str, Dict[str, str]]:
    """Per-file ONNX metadata. Required by sherpa-onnx: encoder ``model_type``; decoder ``vocab_size``
    and ``context_size``. The rest documents the model and its front end for whoever deploys it."""
    from synthasr import __version__

    cfg = model.config
    common = {"model_author": "synthasr", "version": "1", "synthasr_version": __version__, **dict(extra)}
    encoder = {
        **common,
        "model_type": "conformer",
        "comment": f"SynthASR non-streaming {getattr(cfg, 'encoder', 'conformer')} transducer; encoder_out is "
                   "already projected by joiner.encoder_proj",
        "encoder_dim": str(cfg.encoder_dim),
        "joiner_dim": str(cfg.joiner_dim),
        "num_encoder_layers": str(cfg.num_encoder_layers),
        "subsampling_factor": str(_subsampling_factor(cfg)),
        "feature_dim": str(cfg.feature_dim),
        "sample_rate": str(feature_config.sampling_rate),
        "frame_shift_ms": f"{feature_config.frame_shift * 1000:g}",
        "frame_length_ms": f"{feature_config.frame_length * 1000:g}",
        "feature": FEATURE_DESCRIPTIONS[feature_config.type],
    }
    decoder = {
        **common,
        "comment": "stateless decoder + joiner.decoder_proj; input: last context_size token ids",
        "vocab_size": str(cfg.vocab_size),
        "context_size": str(model.decoder.context_size),
        "blank_id": str(model.blank_id),
        "joiner_dim": str(cfg.joiner_dim),
    }
    joiner = {**common, "comment": "output_linear(tanh(encoder_out + decoder_out))",
              "joiner_dim": str(cfg.joiner_dim), "vocab_size": str(cfg.vocab_size)}
    return {"encoder": encoder, "decoder": decoder, "joiner": joiner}


def _subsampling_factor(cfg) -> int:
    """Input frames per encoder frame: 4 for the Conformer, 2 (x extra_subsampling) for Whisper."""
    if getattr(cfg, "encoder", "conformer") == "whisper":
        return 2 * cfg.whisper.extra_subsampling
    return SUBSAMPLING_FACTOR


def add_metadata(path: Path, metadata: Mapping[str, str]) -> None:
    """Write ``metadata`` into the model's ``metadata_props`` (replacing keys already there)."""
    import onnx

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    onnx.save(model, str(path))


def read_metadata(path: PathLike) -> Dict[str, str]:
    """The custom metadata of an ONNX file, as onnxruntime (and so sherpa-onnx) sees it."""
    session = _session(Path(path))
    return dict(session.get_modelmeta().custom_metadata_map)


def quantize_int8(src: Path, dst: Path, op_types: Iterable[str]) -> None:
    """Dynamic int8 weight quantization (activations stay float) with the settings chosen in
    :mod:`synthasr.export.int8` (7-bit per-channel weights: no int16 saturation on CPUs without VNNI);
    metadata is carried over."""
    from synthasr.export import int8

    try:
        int8.quantize_int8(src, dst, op_types)
    except Exception as e:  # onnxruntime.quantization raises plain Exception/ValueError subclasses
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"{dst.name}: int8 quantization failed: {first}") from None
    _ensure_metadata(src, dst)


def _ensure_metadata(src: Path, dst: Path) -> None:
    import onnx

    source = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    have = {p.key for p in onnx.load(str(dst), load_external_data=False).metadata_props}
    if set(source) - have:
        add_metadata(dst, source)


# --------------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------------
def _session(path: Path, num_threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = num_threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"{path}: onnxruntime cannot load it: {first}") from None


def reference_outputs(model: nn.Module, x: torch.Tensor, x_lens: torch.Tensor, y: torch.Tensor,
                      enc: torch.Tensor, dec: torch.Tensor) -> Dict[str, List[np.ndarray]]:
    """What each exported piece must produce, computed with the PyTorch modules."""
    with torch.no_grad():
        encoder_out, encoder_out_lens = OnnxEncoder(model).eval()(x, x_lens)
        return {
            "encoder": [encoder_out.numpy(), encoder_out_lens.numpy()],
            "decoder": [OnnxDecoder(model).eval()(y).numpy()],
            "joiner": [OnnxJoiner(model).eval()(enc, dec).numpy()],
        }


def run_exported(model_dir: PathLike, x: np.ndarray, x_lens: np.ndarray, y: np.ndarray, enc: np.ndarray,
                 dec: np.ndarray, int8: bool = False) -> Dict[str, List[np.ndarray]]:
    """Run the three exported files with onnxruntime on the given inputs."""
    model_dir = Path(model_dir)
    files = INT8_FILES if int8 else FP32_FILES
    encoder, decoder, joiner = (_session(model_dir / name) for name in files)
    return {
        "encoder": encoder.run(None, {"x": x, "x_lens": x_lens}),
        "decoder": decoder.run(None, {"y": y}),
        "joiner": joiner.run(None, {"encoder_out": enc, "decoder_out": dec}),
    }


def random_probe_inputs(model: nn.Module, seed: int = 0, lengths: Tuple[int, ...] = (83, 61, 29)):
    """Inputs of lengths the exporter never traced (it traced T=100, N=1/4), in one padded batch."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    x_lens = torch.tensor(lengths, dtype=torch.int64)
    x = torch.randn(len(lengths), int(x_lens.max()), cfg.feature_dim, generator=g)
    y = torch.randint(0, cfg.vocab_size, (5, model.decoder.context_size), generator=g)
    y[0] = model.blank_id  # the start context sherpa-onnx uses
    enc = torch.randn(7, cfg.joiner_dim, generator=g)
    dec = torch.randn(7, cfg.joiner_dim, generator=g)
    return x, x_lens, y, enc, dec


def verify_against_torch(model: nn.Module, model_dir: PathLike, rtol: float = 1e-4, atol: float = 1e-4) -> float:
    """Compare the fp32 ONNX files with PyTorch on random inputs; return the worst error relative to
    ``atol + rtol * |reference|`` (<= 1 passes). Raises :class:`ExportError` naming the file otherwise."""
    x, x_lens, y, enc, dec = random_probe_inputs(model)
    want = reference_outputs(model, x, x_lens, y, enc, dec)
    got = run_exported(model_dir, x.numpy(), x_lens.numpy(), y.numpy(), enc.numpy(), dec.numpy())
    worst = 0.0
    for part in ("encoder", "decoder", "joiner"):
        for name, a, b in zip(("output", "lengths"), got[part], want[part]):
            if a.shape != b.shape:
                raise ExportError(f"{part}.onnx: {name} has shape {list(a.shape)}, PyTorch gives {list(b.shape)}")
            if a.dtype.kind in "iu":
                if not np.array_equal(a, b):
                    raise ExportError(f"{part}.onnx: {name} {a.tolist()} differ from PyTorch {b.tolist()}")
                continue
            ratio = float(np.max(np.abs(a - b) / (atol + rtol * np.abs(b)))) if a.size else 0.0
            worst = max(worst, ratio)
            if ratio > 1.0:
                err = float(np.max(np.abs(a - b)))
                raise ExportError(f"{part}.onnx: output differs from PyTorch by up to {err:.3g} (tolerance "
                                  f"{atol:g} + {rtol:g}*|ref|)")
    return worst


def verify_int8(model: nn.Module, model_dir: PathLike) -> Dict[str, float]:
    """Check each ``*.int8.onnx`` against its fp32 file on random probe inputs: every weight of
    :data:`_INT8_OPS` is quantized, within one step of its fp32 value, and every integer matrix product
    stays within the error its quantization steps allow (see :func:`synthasr.export.int8.check_int8_model`;
    this holds on any CPU, and fails where an integer kernel saturates). Returns the worst error/bound
    ratio per file; raises :class:`ExportError` naming the file otherwise."""
    from synthasr.export.int8 import Int8CheckError, check_int8_model, count_quantizable

    model_dir = Path(model_dir)
    x, x_lens, y, enc, dec = (t.numpy() for t in random_probe_inputs(model, seed=1))
    feeds = {"encoder": {"x": x, "x_lens": x_lens}, "decoder": {"y": y},
             "joiner": {"encoder_out": enc, "decoder_out": dec}}
    worst = {}
    for part, feed in feeds.items():
        fp32, quantized = model_dir / f"{part}.onnx", model_dir / f"{part}.int8.onnx"
        try:
            report = check_int8_model(fp32, quantized, [feed], expect_quantized=count_quantizable(fp32, _INT8_OPS[part]))
        except Int8CheckError as e:
            raise ExportError(str(e)) from None
        worst[quantized.name] = report.worst
    return worst
