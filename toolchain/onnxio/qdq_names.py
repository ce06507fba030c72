"""The names of everything the quantizer adds to a graph, written and read back from this one place.

Usage:
    qdq_names.quantized("conv1.weight")          # "conv1.weight_quantized": the integers (initializer or Q output)
    qdq_names.dequantized("/relu/Relu_output_0")  # "..._dequantized": the float value every consumer now reads
    qdq_names.scale(root), qdq_names.zero_point(root)   # the Q/DQ parameters of a tensor (or its shared root)
    qdq_names.value_in_qdq(tensor, graph_outputs)       # what a float tensor is called in the QDQ graph

For a float tensor `t` the QDQ graph holds: `t_quantized` (integers), `t_dequantized` (float, read by every
consumer of `t`), `t_scale` / `t_zero_point` (named after the root of a shared quantizer), the nodes
`t_QuantizeLinear` / `t_DequantizeLinear`, and for low-bit values held in a wider type `t_clipped`, `t_Clip`,
`t_clip_min`, `t_clip_max`. A graph output keeps its own name at the end of its Q -> DQ; its producer writes
`t_float`. Reports, reconstruction and tests find tensors through these functions, never by rebuilding a suffix.
"""

from __future__ import annotations

from collections.abc import Collection


def quantized(tensor: str) -> str:
    return f"{tensor}_quantized"


def dequantized(tensor: str) -> str:
    return f"{tensor}_dequantized"


def scale(tensor: str) -> str:
    return f"{tensor}_scale"


def zero_point(tensor: str) -> str:
    return f"{tensor}_zero_point"


def quantize_node(tensor: str) -> str:
    return f"{tensor}_QuantizeLinear"


def dequantize_node(tensor: str) -> str:
    return f"{tensor}_DequantizeLinear"


def clipped(tensor: str) -> str:
    return f"{tensor}_clipped"


def clip_node(tensor: str) -> str:
    return f"{tensor}_Clip"


def clip_bounds(tensor: str) -> tuple[str, str]:
    return f"{tensor}_clip_min", f"{tensor}_clip_max"


def float_producer_output(tensor: str) -> str:
    """What the producer of graph output `tensor` writes once the output's Q -> DQ ends in the output's name."""
    return f"{tensor}_float"


def value_in_qdq(tensor: str, graph_outputs: Collection[str]) -> str:
    """The QDQ graph's name of the (de)quantized value of float tensor `tensor`: a graph output keeps its name."""
    return tensor if tensor in graph_outputs else dequantized(tensor)


def is_weight_integers(name: str) -> bool:
    """An initializer of weight integers (`<...>weight_quantized`), as the exporters name weights."""
    return name.endswith(quantized("weight"))
