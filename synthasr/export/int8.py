"""Int8 ONNX files for sherpa-onnx: dynamic weight quantization, and the check that an int8 file computes
what its quantization promises on the CPU it runs on.

Weights are stored as signed integers with one scale per output channel; activations are quantized
on the fly to uint8 by ``DynamicQuantizeLinear``; the products are accumulated in int32. The catch is
the CPU: on x86 without VNNI (AVX2, and AVX-512 without VNNI: e.g. AMD EPYC before Zen 4, Intel before
Cascade Lake) onnxruntime multiplies uint8 activations by int8 weights with ``VPMADDUBSW``, which adds
two u8*s8 products in a *saturating int16*. With full 8-bit weights 255 * 127 * 2 = 64770 does not
fit, so wherever a tanh/ReLU output near its maximum meets two large weights of one sign the sum is
clipped; the joiner (a matrix product right after ``tanh``) suffers most. So the export keeps the
weights to 7 bits (``reduce_range``: |q| <= 64, and 255 * 64 * 2 = 32640 fits) and gives each output
channel its own scale (``per_channel``), which wins back most of the bit. The int8 model then computes
the same integers on every CPU and keeps the fast u8s8 kernels (VNNI, or VPMADDUBSW). Uint8 weights
would also avoid the overflow, but take onnxruntime's slower u8u8 kernels: slower than fp32 on the
machine measured. The measurements behind this choice (a VNNI Intel Xeon and an emulated AVX2-only
AMD EPYC) are in docs/deployment.md, "int8 models".

:func:`check_int8_model` is CPU-independent by construction: for every quantized matrix product it
compares onnxruntime's float result with ``X @ W`` computed from the fp32 weights, against the largest
error that rounding X and W to their quantization steps can cause. Exact int32 arithmetic stays
inside that bound on any CPU; a saturating kernel, a wrong scale or a weight that was not quantized
at all does not.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

log = logging.getLogger(__name__)

# The export's quantization (see the module docstring and docs/deployment.md for the measurements).
WEIGHT_TYPE = "QInt8"
PER_CHANNEL = True
REDUCE_RANGE = True
# VPMADDUBSW adds two u8*s8 products in int16: the largest stored |int8 weight| that cannot overflow it
INT16_PAIR_LIMIT = 32767
# float32 work after the exact integer product: int32 -> float cast, two scale multiplications
_FLOAT_SLACK = 1e-5


class Int8CheckError(RuntimeError):
    """An int8 file does not compute what its quantization promises (or is not quantized at all)."""


def quantize_int8(src: Path, dst: Path, op_types: Iterable[str]) -> None:
    """Dynamic int8 weight quantization of ``src`` (float ONNX) into ``dst`` with the export's settings.

    Raises whatever ``onnxruntime.quantization`` raises; the caller turns it into one line."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs one INFO line per tensor on the root logger
    try:
        quantize_dynamic(model_input=str(src), model_output=str(dst), op_types_to_quantize=list(op_types),
                         weight_type=getattr(QuantType, WEIGHT_TYPE), per_channel=PER_CHANNEL,
                         reduce_range=REDUCE_RANGE)
    finally:
        root.setLevel(level)


# --------------------------------------------------------------------------------------------------
# What an int8 file contains
# --------------------------------------------------------------------------------------------------
@dataclass
class QuantizedWeight:
    """One integer initializer, its quantization parameters and the fp32 tensor it stands for."""

    name: str              # initializer in the int8 file
    source: str            # fp32 initializer it encodes ("<name>.T" when stored transposed)
    values: np.ndarray     # the integers, as stored
    scale: np.ndarray      # broadcastable to ``values``
    zero_point: np.ndarray
    original: np.ndarray   # the fp32 tensor, in the stored layout

    def dequantized(self) -> np.ndarray:
        return (self.values.astype(np.float64) - self.zero_point.astype(np.float64)) * self.scale.astype(np.float64)


@dataclass
class QuantizedMatMul:
    """A float ``x @ W`` that the int8 file computes with integers: the float tensors around it."""

    node: str
    x: str              # float input, quantized by DynamicQuantizeLinear
    y: str              # float output (before any bias)
    weight: QuantizedWeight


@dataclass
class Int8Report:
    """What :func:`check_int8_model` found; every ratio is error / allowed error (<= 1 passes)."""

    path: Path
    weights: List[QuantizedWeight]
    matmuls: List[QuantizedMatMul]
    weight_ratio: float = 0.0                                 # worst |dequantized - fp32| / scale
    matmul_ratio: Dict[str, float] = field(default_factory=dict)  # node -> worst |y - x @ W| / bound

    @property
    def worst(self) -> float:
        return max([self.weight_ratio, *self.matmul_ratio.values()])


def _initializers(model) -> Dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _fp32_counterpart(name: str, dequantized: np.ndarray, fp32: Mapping[str, np.ndarray]) -> Tuple[str, np.ndarray]:
    """The fp32 initializer a quantized one encodes: by onnxruntime's naming (``W_quantized``, or
    ``W_Transposed_quantized`` for a Gemm weight), else the same-shaped (or transposed) fp32 tensor
    closest to the dequantized values."""
    base = name[: -len("_quantized")] if name.endswith("_quantized") else name
    if base in fp32 and fp32[base].shape == dequantized.shape:
        return base, fp32[base]
    plain = base[: -len("_Transposed")] if base.endswith("_Transposed") else None
    if plain in fp32 and fp32[plain].T.shape == dequantized.shape:
        return plain + ".T", fp32[plain].T
    candidates = [(k, v) for k, v in fp32.items() if v.shape == dequantized.shape]
    candidates += [(k + ".T", v.T) for k, v in fp32.items() if v.ndim == 2 and v.T.shape == dequantized.shape]
    if not candidates:
        raise Int8CheckError(f"quantized initializer {name!r} {list(dequantized.shape)} matches no fp32 weight")
    return min(candidates, key=lambda kv: float(np.max(np.abs(kv[1] - dequantized))))


def _broadcast(param: np.ndarray, values: np.ndarray, axis: Optional[int]) -> np.ndarray:
    """A per-tensor (scalar) or per-channel (1-D along ``axis``) parameter shaped to broadcast to ``values``."""
    if param.ndim == 0 or param.size == 1:
        return param.reshape(())
    if axis is None or values.shape[axis % values.ndim] != param.size:
        matching = [a for a, n in enumerate(values.shape) if n == param.size]
        if len(matching) != 1:
            raise Int8CheckError(f"quantization parameter of {param.size} values for a tensor of shape "
                                 f"{list(values.shape)}: no single axis it belongs to")
        axis = matching[0]
    axis %= values.ndim
    shape = [1] * values.ndim
    shape[axis] = param.size
    return param.reshape(shape)


def count_quantizable(fp32_path: Path, op_types: Iterable[str]) -> int:
    """How many weights quantizing ``op_types`` must turn into integers: the constant float right-hand
    side of each MatMul (and Gemm, which the quantizer rewrites as MatMul), the constant float table of
    each Gather (shared tensors count once)."""
    import onnx

    model = onnx.load(str(fp32_path))
    floats = {k for k, v in _initializers(model).items() if v.dtype == np.float32}
    weight_input = {"MatMul": 1, "Gemm": 1, "Gather": 0}
    ops = set(op_types) | ({"Gemm"} if "MatMul" in op_types else set())  # the quantizer turns Gemm into MatMul
    return len({node.input[weight_input[node.op_type]] for node in model.graph.node
                if node.op_type in ops & set(weight_input) and node.input[weight_input[node.op_type]] in floats})


def describe_int8(fp32_path: Path, int8_path: Path) -> Tuple[List[QuantizedWeight], List[QuantizedMatMul]]:
    """The quantized weights and integer matrix products of ``int8_path``, each tied to its fp32 weight
    in ``fp32_path``. Raises :class:`Int8CheckError` for a pattern it does not know."""
    import onnx

    fp32 = {k: v for k, v in _initializers(onnx.load(str(fp32_path))).items() if v.dtype == np.float32}
    model = onnx.load(str(int8_path))
    inits = _initializers(model)
    producer = {out: node for node in model.graph.node for out in node.output}
    consumers: Dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def weight(q_name: str, scale_name: str, zp_name: str, axis: Optional[int]) -> QuantizedWeight:
        values = inits[q_name]
        if values.dtype not in (np.int8, np.uint8):
            raise Int8CheckError(f"{int8_path.name}: {q_name!r} is {values.dtype}, not int8/uint8")
        for param in (scale_name, zp_name):
            if param not in inits:
                raise Int8CheckError(f"{int8_path.name}: quantization parameter {param!r} of {q_name!r} is "
                                     "not a constant")
        scale, zero_point = _broadcast(inits[scale_name], values, axis), _broadcast(inits[zp_name], values, axis)
        dequantized = (values.astype(np.float64) - zero_point.astype(np.float64)) * scale.astype(np.float64)
        source, original = _fp32_counterpart(q_name, dequantized, fp32)
        return QuantizedWeight(q_name, source, values, scale, zero_point, original)

    def rescaling(node):
        """The Mul that turns the int32 product into floats (after a Cast, possibly other one-input ops),
        and the weight-scale initializer in the scale product it multiplies by."""
        tensor = node.output[0]
        for _ in range(4):
            found = consumers.get(tensor, [])
            if len(found) != 1:
                break
            step = found[0]
            if step.op_type == "Mul":
                other = producer.get(next(i for i in step.input if i != tensor))
                scales = [i for i in other.input if i in inits] if other is not None and other.op_type == "Mul" else []
                if len(scales) == 1:
                    return step, scales[0]
                break
            tensor = step.output[0]
        raise Int8CheckError(f"{int8_path.name}: cannot follow MatMulInteger {node.name!r} to its rescaling Mul")

    weights: Dict[str, QuantizedWeight] = {}
    matmuls: List[QuantizedMatMul] = []
    for node in model.graph.node:
        if node.op_type == "MatMulInteger" and node.input[1] in inits:
            quantize = producer.get(node.input[0])
            if quantize is None or quantize.op_type != "DynamicQuantizeLinear":
                raise Int8CheckError(f"{int8_path.name}: MatMulInteger {node.name!r} input is not dynamically "
                                     "quantized")
            rescale, w_scale = rescaling(node)
            if node.input[1] not in weights:
                weights[node.input[1]] = weight(node.input[1], w_scale, node.input[3], axis=-1)
            w = weights[node.input[1]]
            matmuls.append(QuantizedMatMul(node.name or node.output[0], quantize.input[0], rescale.output[0], w))
        elif node.op_type == "DequantizeLinear" and node.input[0] not in inits:
            gather = producer.get(node.input[0])  # a quantized embedding table: Gather then DequantizeLinear
            if gather is not None and gather.op_type == "Gather" and gather.input[0] in inits \
                    and gather.input[0] not in weights:
                # DequantizeLinear's axis counts the gathered rows' axes, not the table's: match by length
                weights[gather.input[0]] = weight(gather.input[0], node.input[1], node.input[2], None)
        elif node.op_type == "DequantizeLinear" and node.input[0] in inits and node.input[0] not in weights:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            weights[node.input[0]] = weight(node.input[0], node.input[1], node.input[2], axis)
        elif node.op_type in ("QLinearMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm"):
            raise Int8CheckError(f"{int8_path.name}: node {node.name!r} ({node.op_type}) is a quantized op this "
                                 "check does not know")
    return list(weights.values()), matmuls


# --------------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------------
def _activation_step(x: np.ndarray) -> float:
    """DynamicQuantizeLinear's uint8 step for tensor ``x``: its range (stretched to include 0) over 255."""
    return (max(float(x.max()), 0.0) - min(float(x.min()), 0.0)) / 255.0


def matmul_error_bound(x: np.ndarray, w: QuantizedWeight) -> np.ndarray:
    """The largest ``|x^ @ W^ - x @ W|`` per output (shape ``(rows of x, columns of W)``) that rounding
    ``x`` to its uint8 step ``s_x`` (half a step, a full one at the clipped ends) and W to its stored
    integers can cause::

        sum_k s_x * (|W_kj| + |dW_kj|) + |x_k| * |dW_kj|      with dW = W^ - W taken from the file

    plus float32 rounding of the rescaling. Exact int32 accumulation stays within it on any CPU."""
    x64 = x.astype(np.float64).reshape(-1, x.shape[-1])
    original = w.original.astype(np.float64)
    delta = np.abs(w.dequantized() - original)
    s_x = _activation_step(x)
    bound = s_x * (np.abs(original) + delta).sum(0) + np.abs(x64) @ delta
    return bound + _FLOAT_SLACK * (np.abs(x64) @ np.abs(original)) + 1e-30


def matmul_error_ratio(x: np.ndarray, y: np.ndarray, w: QuantizedWeight) -> float:
    """Worst ``|y - x @ W| / matmul_error_bound(x, w)`` over all outputs; W the fp32 weight."""
    x64 = x.astype(np.float64).reshape(-1, x.shape[-1])
    y64 = y.astype(np.float64).reshape(-1, y.shape[-1])
    if not y64.size:
        return 0.0
    return float(np.max(np.abs(y64 - x64 @ w.original.astype(np.float64)) / matmul_error_bound(x, w)))


def u8s8_pair_max(w: QuantizedWeight) -> int:
    """The largest ``|a1*b1 + a2*b2|`` (a uint8 activations, b the stored int8 weights) that a
    ``VPMADDUBSW`` kernel forms from this weight; 0 for uint8 weights (u8u8 kernels widen first)."""
    if w.values.dtype != np.int8:
        return 0
    return 255 * 2 * int(np.abs(w.values.astype(np.int64)).max(initial=0))


def weight_error_ratio(w: QuantizedWeight) -> float:
    """Worst ``|W^ - W| / scale``: rounding moves a weight by at most half a step (a full one where the
    range's end is clipped), so > 1 means a wrong scale/zero point or integers of another tensor."""
    scale = w.scale.astype(np.float64)
    if not np.all(np.isfinite(scale)) or not np.all(scale > 0):
        return float("inf")
    return float(np.max(np.abs(w.dequantized() - w.original) / (scale * (1 + _FLOAT_SLACK))))


def _run_with(path: Path, tensors: List[str], feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Run an ONNX file with some intermediate float tensors added as outputs."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    have = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            have.add(name)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds))))


def check_int8_model(fp32_path: Path, int8_path: Path, feeds: Iterable[Mapping[str, np.ndarray]],
                     expect_quantized: Optional[int] = None) -> Int8Report:
    """Check ``int8_path`` against the fp32 file it was made from, on each of ``feeds``.

    Raises :class:`Int8CheckError` (one line) if nothing is quantized (or fewer than ``expect_quantized``
    weights), if a stored weight is further from its fp32 value than its scale allows, if int8 matrix
    weights are large enough to saturate a non-VNNI kernel (on any CPU: the file is what is checked),
    or if a quantized matrix product on these inputs is further from ``x @ W`` than quantization can
    explain (on this CPU)."""
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    weights, matmuls = describe_int8(fp32_path, int8_path)
    report = Int8Report(int8_path, weights, matmuls)
    wanted = 1 if expect_quantized is None else expect_quantized
    if len(weights) < wanted:
        raise Int8CheckError(f"{int8_path.name}: {len(weights)} quantized weights, expected {wanted}")
    for w in weights:
        ratio = weight_error_ratio(w)
        report.weight_ratio = max(report.weight_ratio, ratio)
        if not ratio <= 1.0:
            raise Int8CheckError(f"{int8_path.name}: {w.name} is {ratio:.3g} quantization steps from fp32 "
                                 f"{w.source} (at most 1 allowed): wrong scale or zero point")
    for m in matmuls:
        if u8s8_pair_max(m.weight) > INT16_PAIR_LIMIT:
            raise Int8CheckError(
                f"{int8_path.name}: {m.weight.name} stores int8 weights up to {u8s8_pair_max(m.weight) // 510}: "
                f"pairs of u8*s8 products reach {u8s8_pair_max(m.weight)} > {INT16_PAIR_LIMIT} and saturate on "
                "x86 CPUs without VNNI (quantize with reduce_range, or uint8 weights)")
    tensors = [t for m in matmuls for t in (m.x, m.y)]
    for feed in feeds:
        values = _run_with(int8_path, tensors, feed) if matmuls else {}
        for m in matmuls:
            ratio = matmul_error_ratio(values[m.x], values[m.y], m.weight)
            report.matmul_ratio[m.node] = max(report.matmul_ratio.get(m.node, 0.0), ratio)
            if not ratio <= 1.0:
                raise Int8CheckError(
                    f"{int8_path.name}: {m.node} ({m.weight.source}) differs from x @ W by {ratio:.3g} times the "
                    "largest error quantization can cause: the integer kernel saturates or the scales are wrong")
    log.debug("%s: %d weights, %d matmuls, worst ratio %.3g", int8_path.name, len(weights), len(matmuls),
              report.worst)
    return report
