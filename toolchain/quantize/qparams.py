"""Integer types and quantization parameters (scale, zero point), with the numpy reference maths.

Usage:
    qtype = activation_type(4)                              # UINT4: [0, 15]
    params = asymmetric_params(lo=-0.3, hi=2.1, qtype=qtype)
    q = params.quantize(x)                                  # integers (int64) in [qmin, qmax]
    y = params.dequantize(q)                                # float32
    w_params = symmetric_params(absmax_per_channel, weight_type(4), axis=0)

Rounding is half to even, as ONNX QuantizeLinear does, so these functions predict onnxruntime exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx


@dataclass(frozen=True)
class IntType:
    """An ONNX integer element type for Q/DQ: its range and the opset that introduced it."""

    name: str
    bits: int
    signed: bool
    onnx_type: int
    min_opset: int

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def symmetric_qmin(self) -> int:
        """Weights: a narrow range at 8 bits ([-127, 127], onnxruntime's symmetric convention; it does not keep
        the u8s8 kernels of CPUs without VNNI from saturating: see REDUCED_INT8); the full range below 8 bits,
        where every level matters."""
        return -self.qmax if self.bits == 8 else self.qmin


_T = onnx.TensorProto
INT_TYPES = {
    ("int", 8): IntType("INT8", 8, True, _T.INT8, 13),
    ("uint", 8): IntType("UINT8", 8, False, _T.UINT8, 13),
    ("int", 4): IntType("INT4", 4, True, _T.INT4, 21),
    ("uint", 4): IntType("UINT4", 4, False, _T.UINT4, 21),
    ("int", 2): IntType("INT2", 2, True, _T.INT2, 25),
    ("uint", 2): IntType("UINT2", 2, False, _T.UINT2, 25),
    ("int", 16): IntType("INT16", 16, True, _T.INT16, 21),
    ("uint", 16): IntType("UINT16", 16, False, _T.UINT16, 21),
    ("int", 32): IntType("INT32", 32, True, _T.INT32, 13),
}


def activation_type(bits: int, signed: bool = False) -> IntType:
    """Activations: unsigned by default (uint8 on x86); signed for runtimes that want int8 (ARM, TensorRT)."""
    return INT_TYPES[("int" if signed else "uint", bits)]


# 8-bit weights restricted to 7 bits ([-64, 63] in an INT8 tensor): onnxruntime's u8s8 kernels on x86 CPUs
# without VNNI (AVX2, AVX-512 before Cascade Lake) add pairs of u8 x s8 products in int16 with saturation
# (VPMADDUBSW), and 2 x 255 x 127 overflows it; 2 x 255 x 64 does not. Same as onnxruntime's reduce_range.
REDUCED_INT8 = IntType("INT8", 7, True, _T.INT8, 13)


# 3-bit weights ([-4, 3]) have no ONNX type of their own: they are held in INT4 in either storage, as 7-bit
# weights are in INT8 (what a runtime reads is the container; the values only use 3 bits).
INT3_IN_INT4 = IntType("INT4", 3, True, _T.INT4, 21)


def weight_type(bits: int, reduce_range: bool = False) -> IntType:
    if reduce_range and bits == 8:
        return REDUCED_INT8
    if bits == 3:
        return INT3_IN_INT4
    return INT_TYPES[("int", bits)]


BIAS_TYPE = INT_TYPES[("int", 32)]


def storage_type(qtype: IntType, low_bit_storage: str, activation: bool = False) -> IntType:
    """The ONNX type that holds values of `qtype` in the file (see QuantConfig.low_bit_storage): under "ort",
    low-bit weights in INT4, low-bit activations in an 8-bit container of their signedness (UINT8; INT8 for
    the signed activations of ort-arm)."""
    if low_bit_storage == "native" or qtype.bits >= 7 or qtype is INT3_IN_INT4:  # 7: REDUCED_INT8 in INT8; 3: in INT4
        return qtype
    if activation:
        return INT_TYPES[("int" if qtype.signed else "uint", 8)]
    return INT_TYPES[("int", 4)] if qtype.signed else INT_TYPES[("uint", 8)]


@dataclass(frozen=True, eq=False)
class QParams:
    """scale and zero point, per tensor (axis None, 0-d arrays) or per channel along `axis` (1-D arrays)."""

    scale: np.ndarray  # float32
    zero_point: np.ndarray  # int64 values within the type's range
    qtype: IntType
    axis: int | None = None
    qmin: int | None = None  # the clamp range used; defaults to the type's range

    @property
    def low(self) -> int:
        return self.qtype.qmin if self.qmin is None else self.qmin

    def _broadcast(self, array: np.ndarray, ndim: int) -> np.ndarray:
        if self.axis is None or array.ndim == 0:
            return array
        shape = [1] * ndim
        shape[self.axis] = -1
        return array.reshape(shape)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """round_half_even(x / scale) + zero_point, clamped to the range (float32 division, as ONNX)."""
        x = np.asarray(x, np.float32)
        scale = self._broadcast(self.scale.astype(np.float32), x.ndim)
        zero = self._broadcast(self.zero_point, x.ndim)
        return np.clip(np.rint(x / scale).astype(np.int64) + zero, self.low, self.qtype.qmax)

    def quantize_compact(self, x: np.ndarray) -> np.ndarray:
        """`quantize` in the smallest integer dtype that holds the range (int8, uint8, int16, uint16; int64 for 32-bit types).

        Same values; computed in float32, where types of up to 16 bits are exact, without int64 temporaries of
        8 bytes per value (a 537 M-parameter weight would need 4.3 GB for each).
        """
        if self.qtype.bits > 16:
            return self.quantize(x)
        x = np.asarray(x, np.float32)
        q = x / self._broadcast(self.scale.astype(np.float32), x.ndim)
        np.rint(q, out=q)
        q += self._broadcast(self.zero_point.astype(np.float32), x.ndim)
        np.clip(q, self.low, self.qtype.qmax, out=q)
        return q.astype(_compact_dtype(self.low, self.qtype.qmax))

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        scale = self._broadcast(self.scale.astype(np.float32), q.ndim)
        zero = self._broadcast(self.zero_point, q.ndim)
        return ((q - zero).astype(np.float32) * scale).astype(np.float32)

    def fake_quantize(self, x: np.ndarray) -> np.ndarray:
        """dequantize(quantize(x)), the same float32 values; below 32 bits computed in float32 throughout (the
        integers are exact there), without int64 temporaries: the MSE searches call this thousands of times."""
        if self.qtype.bits > 16:
            return self.dequantize(self.quantize(x))
        x = np.asarray(x, np.float32)
        scale = self._broadcast(self.scale.astype(np.float32), x.ndim)
        zero = self._broadcast(self.zero_point.astype(np.float32), x.ndim)
        q = x / scale
        np.rint(q, out=q)
        q += zero
        np.clip(q, self.low, self.qtype.qmax, out=q)
        q -= zero
        q *= scale
        return q

    def to_dict(self) -> dict:
        return {
            "type": self.qtype.name,
            "axis": self.axis,
            "scale": self.scale.astype(float).tolist(),
            "zero_point": self.zero_point.astype(int).tolist(),
        }


def _compact_dtype(low: int, high: int) -> type:
    for dtype in (np.int8, np.uint8, np.int16, np.uint16):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return dtype
    return np.int32


_TINY = np.float32(1e-8)  # a floor for scales: an all-zero tensor still needs a valid (positive) scale


def asymmetric_params(lo: float, hi: float, qtype: IntType) -> QParams:
    """Per-tensor parameters covering [lo, hi] (widened to include 0, so zero is exactly representable)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    levels = qtype.qmax - qtype.qmin
    scale = np.float32(max((hi - lo) / levels, float(_TINY)))
    zero = int(np.clip(np.rint(qtype.qmin - lo / scale), qtype.qmin, qtype.qmax))
    return QParams(np.asarray(scale, np.float32), np.asarray(zero, np.int64), qtype)


def floored_params(floor: float, hi: float, qtype: IntType) -> QParams:
    """[floor, hi] for values known to stay above `floor` < 0: the zero point is rounded up, never down,
    so at least the level below zero stays on the grid (rounding it down to qmin would map every
    negative value to 0)."""
    floor, hi = min(float(floor), 0.0), max(float(hi), 0.0)
    levels = qtype.qmax - qtype.qmin
    scale = np.float32(max((hi - floor) / levels, float(_TINY)))
    zero = int(np.clip(np.ceil(qtype.qmin - floor / scale - 1e-6), qtype.qmin, qtype.qmax))
    return QParams(np.asarray(scale, np.float32), np.asarray(zero, np.int64), qtype)


def one_sided_params(hi: float, qtype: IntType) -> QParams:
    """[0, hi] with zero point = qmin (0 for unsigned): what a ReLU output needs so onnxruntime can drop the ReLU."""
    scale = np.float32(max(float(hi) / (qtype.qmax - qtype.qmin), float(_TINY)))
    return QParams(np.asarray(scale, np.float32), np.asarray(qtype.qmin, np.int64), qtype)


def symmetric_params(absmax: np.ndarray | np.floating, qtype: IntType, axis: int | None) -> QParams:
    """Zero point 0; absmax maps to the largest positive level (per channel when axis is set)."""
    absmax = np.asarray(absmax, np.float32)
    scale = np.maximum(absmax / np.float32(qtype.qmax), _TINY).astype(np.float32)
    zero = np.zeros(scale.shape, np.int64)
    return QParams(scale, zero, qtype, axis, qmin=qtype.symmetric_qmin)
