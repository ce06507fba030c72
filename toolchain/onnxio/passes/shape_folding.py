"""Fold shape arithmetic whose inputs have static shapes, so that no int64 subgraph reaches calibration.

Usage:
    run_passes(model, [FoldStaticShapesPass(), FoldConstantsPass(), RemoveUnusedPass()])

Exporters compute shapes from `x.size()` at run time: torchvision's channel shuffle is
Shape -> Gather -> Div -> Unsqueeze -> Concat -> Reshape, a ViT reshapes its tokens from `x.shape`,
torch.onnx's dynamo exporter makes a zero bias from Shape(weight) -> Expand and casts constants with
CastLike, and chunks with SplitToSequence -> SequenceAt. This pass evaluates such subgraphs on shapes
from onnx shape inference, each dimension an int or a symbol (the dynamic batch):

- a value that comes out fully known becomes an initializer (FoldConstantsPass carries on from there);
- a Reshape target that still holds symbols is rewritten where each symbol is the data's own dimension
  at that position (ONNX's 0, "copy") and at most one is unknown (-1): `view(b, g, c // g, h, w)` becomes
  Reshape(x, [0, 2, 8, 4, 4]) whatever the batch;
- CastLike(x, y) becomes Cast(x, to=type of y); SplitToSequence read only by constant SequenceAt becomes Split.

Where a shape is really dynamic (a symbol that is not a copied dimension), the subgraph is left as it
is: it stays integer and is never treated as an activation by the quantizer.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from toolchain.onnxio.passes.base import GraphPass, PassResult

logger = logging.getLogger(__name__)

Dim = int | str  # a known size, or a symbol standing for one size (equal symbols: equal sizes)
_MAX_SHAPE_VALUES = 64  # int initializers longer than this are data, not shapes
_INTEGER_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}
_SHAPE_VALUE_TYPES = _INTEGER_TYPES | {onnx.TensorProto.BOOL}


@dataclass(frozen=True)
class ShapeValue:
    """A 1-D (or scalar) integer tensor whose elements are known sizes or symbols."""

    items: tuple[Dim, ...]
    scalar: bool = False
    dtype: int = onnx.TensorProto.INT64  # INT64, INT32 or BOOL: the type an initializer of this value must have

    @property
    def static(self) -> bool:
        return all(isinstance(d, int) for d in self.items)

    def array(self) -> np.ndarray:
        values = np.array(self.items, helper.tensor_dtype_to_np_dtype(self.dtype))
        return values.reshape(()) if self.scalar else values


def symbolic_shapes(model: onnx.ModelProto) -> tuple[dict[str, list[Dim]], dict[str, int]]:
    """(shape per tensor with unknown dims as unique symbols, element type per tensor) from onnx shape inference."""
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True).graph
    except Exception as err:  # noqa: BLE001 - inference is best effort on graphs it does not understand
        logger.debug("shape inference failed: %s", err)
        inferred = model.graph
    shapes: dict[str, list[Dim]] = {}
    types: dict[str, int] = {}
    for init in model.graph.initializer:
        shapes[init.name], types[init.name] = list(init.dims), init.data_type
    for value in (*inferred.input, *inferred.value_info, *inferred.output):
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            continue
        if tensor.elem_type:
            types.setdefault(value.name, tensor.elem_type)
        if tensor.HasField("shape") and value.name not in shapes:
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or f"?{value.name}[{i}]")
                                  for i, d in enumerate(tensor.shape.dim)]
    return shapes, types


def _combine(op: Callable[[int, int], int], symbol: str, a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return op(a, b)
    if symbol in "*/" and b == 1:
        return a
    if symbol == "*" and a == 1:
        return b
    if symbol in "+-" and b == 0:
        return a
    return f"({a}{symbol}{b})"


_ARITHMETIC = {"Add": (operator.add, "+"), "Sub": (operator.sub, "-"), "Mul": (operator.mul, "*"),
               "Div": (lambda a, b: int(a / b) if b else 0, "/")}


class _Evaluator:
    """Values of the integer shape tensors of a graph, evaluated node by node."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.shapes, self.types = symbolic_shapes(model)
        self.values: dict[str, ShapeValue] = {}
        for init in model.graph.initializer:
            if init.data_type in _SHAPE_VALUE_TYPES and len(init.dims) <= 1 and int(np.prod(init.dims)) <= _MAX_SHAPE_VALUES:
                array = numpy_helper.to_array(init)
                self.values[init.name] = ShapeValue(tuple(int(v) for v in array.reshape(-1)), array.ndim == 0, init.data_type)

    def ints(self, name: str) -> list[int] | None:
        value = self.values.get(name)
        return [int(v) for v in value.items] if value is not None and value.static else None

    def evaluate(self, node: onnx.NodeProto) -> ShapeValue | None:
        """The node's single output value, or None when it is not shape arithmetic this evaluator knows."""
        op, inputs = node.op_type, [self.values.get(name) for name in node.input]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if op == "Shape":
            dims = self.shapes.get(node.input[0])
            if dims is None:
                return None
            rank = len(dims)
            start, end = attrs.get("start", 0), attrs.get("end", rank)
            return ShapeValue(tuple(dims[slice(start, end)]))
        if not inputs or inputs[0] is None:
            return None
        first = inputs[0]
        known = [v for v in inputs if v is not None]  # every input known: len(known) == len(inputs)
        if op == "Identity":
            return first
        if op == "Cast" and attrs.get("to") in _INTEGER_TYPES:
            return replace(first, dtype=attrs["to"])
        if op == "Gather" and not first.scalar and attrs.get("axis", 0) == 0 and len(inputs) > 1 and inputs[1] is not None:
            index = inputs[1]
            if not index.static:
                return None
            picked = tuple(first.items[int(i)] for i in index.items)
            return ShapeValue(picked, index.scalar, first.dtype)
        if op == "Unsqueeze" and first.scalar:
            return replace(first, scalar=False)
        if op == "Squeeze" and len(first.items) == 1:
            return replace(first, scalar=True)
        if op == "Reshape" and len(inputs) > 1 and inputs[1] is not None and inputs[1].items in ((-1,), (1,), ()):
            return replace(first, scalar=inputs[1].items == ())  # between a scalar and a 1-element vector
        if op == "Equal" and len(inputs) > 1 and inputs[1] is not None:
            equal = _elementwise(first, inputs[1], _equal)
            return None if equal is None else replace(equal, dtype=onnx.TensorProto.BOOL)
        if op == "Where" and len(known) == len(inputs) == 3 and first.static:
            n = max(len(v.items) for v in known)
            cond, a, b = (v.items * n if len(v.items) == 1 else v.items for v in known)
            if not len(cond) == len(a) == len(b) == n:
                return None
            return ShapeValue(tuple(x if c else y for c, x, y in zip(cond, a, b)), dtype=known[1].dtype)
        if op == "Concat" and attrs.get("axis") == 0 and len(known) == len(inputs) and not any(v.scalar for v in known):
            return ShapeValue(tuple(d for v in known for d in v.items), dtype=first.dtype)
        if op == "Slice" and not first.scalar:
            bounds = [self.ints(name) if name else None for name in node.input[1:5]]
            starts, ends = bounds[0], bounds[1] if len(bounds) > 1 else None
            axes, steps = [*bounds, None, None][2:4]
            if starts is None or ends is None or (axes not in (None, [0], [-1])) or len(starts) != 1:
                return None
            return replace(first, items=tuple(first.items[slice(starts[0], ends[0], (steps or [1])[0])]))
        if op in _ARITHMETIC and len(inputs) == 2 and inputs[1] is not None:
            fn, symbol = _ARITHMETIC[op]
            return _elementwise(first, inputs[1], lambda x, y: _combine(fn, symbol, x, y))
        return None


def _elementwise(a: ShapeValue, b: ShapeValue, fn: Callable[[Dim, Dim], Dim | None]) -> ShapeValue | None:
    """fn over the broadcast elements of two values; None when their lengths do not broadcast or fn cannot tell."""
    if len(a.items) != len(b.items) and 1 not in (len(a.items), len(b.items)):
        return None
    n = max(len(a.items), len(b.items))
    left = a.items * n if len(a.items) == 1 else a.items
    right = b.items * n if len(b.items) == 1 else b.items
    items = [fn(x, y) for x, y in zip(left, right)]
    known = tuple(item for item in items if item is not None)
    return ShapeValue(known, a.scalar and b.scalar, a.dtype) if len(known) == len(items) else None


def _equal(a: Dim, b: Dim) -> int | None:
    if isinstance(a, int) and isinstance(b, int):
        return int(a == b)
    if a == b:
        return 1
    negative = a if isinstance(a, int) else b
    return 0 if isinstance(negative, int) and negative < 0 else None  # a symbol is a size: never negative


def _reshape_target(value: ShapeValue, data_dims: list[Dim] | None, allowzero: bool) -> list[int] | None:
    """A constant Reshape target for a partly symbolic one: each symbol the data's own dimension at that position
    (0, "copy", unless allowzero makes 0 a literal size) or the one size left to infer (-1); None otherwise."""
    target, unknown = [], 0
    for i, dim in enumerate(value.items):
        if isinstance(dim, int):
            target.append(dim)
        elif not allowzero and data_dims is not None and i < len(data_dims) and data_dims[i] == dim:
            target.append(0)
        else:
            unknown += 1
            target.append(-1)
    if unknown > 1 or (unknown == 1 and -1 in value.items):
        return None  # two sizes to infer: ONNX allows one -1
    return target


class FoldStaticShapesPass(GraphPass):
    """Shape arithmetic over static shapes becomes constants; symbolic Reshape targets become 0/-1 constants."""

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        evaluator = _Evaluator(model)
        outputs = {o.name for o in graph.output}
        modified = _rewrite_cast_like(graph, evaluator.types) | _rewrite_sequences(graph, evaluator)
        for node in list(graph.node):
            if node.op_type == "Reshape" and node.input[0] not in evaluator.values and node.input[1] in evaluator.values:
                value = evaluator.values[node.input[1]]
                if not value.static and node.input[1] not in {i.name for i in graph.initializer}:
                    allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
                    target = _reshape_target(value, evaluator.shapes.get(node.input[0]), allowzero)
                    if target is not None:
                        name = f"{node.name or node.output[0]}_static_shape"
                        graph.initializer.append(numpy_helper.from_array(np.array(target, np.int64), name))
                        node.input[1] = name
                        modified = True
                continue
            if len(node.output) != 1 or node.output[0] in outputs or node.domain not in ("", "ai.onnx"):
                continue
            folded = evaluator.evaluate(node)
            if folded is None:
                continue
            evaluator.values[node.output[0]] = folded
            if folded.static:
                graph.initializer.append(numpy_helper.from_array(folded.array(), node.output[0]))
                graph.node.remove(node)
                modified = True
        return PassResult(model, modified)


def _rewrite_cast_like(graph: onnx.GraphProto, types: dict[str, int]) -> bool:
    """CastLike(x, y) -> Cast(x, to=elem type of y) where that type is known (then x constant folds)."""
    modified = False
    for index, node in enumerate(graph.node):
        if node.op_type == "CastLike" and node.domain in ("", "ai.onnx") and types.get(node.input[1]):
            cast = helper.make_node("Cast", [node.input[0]], list(node.output), name=node.name, to=types[node.input[1]])
            graph.node.remove(node)
            graph.node.insert(index, cast)
            modified = True
    return modified


def _rewrite_sequences(graph: onnx.GraphProto, evaluator: _Evaluator) -> bool:
    """SplitToSequence whose only readers are SequenceAt at constant positions -> one Split with those outputs."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    modified = False
    for node in list(graph.node):
        if node.op_type != "SplitToSequence" or node.output[0] in {o.name for o in graph.output}:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis = attrs.get("axis", 0)
        dims = evaluator.shapes.get(node.input[0])
        if dims is None or not isinstance(dims[axis], int) or (not attrs.get("keepdims", 1) and len(node.input) < 2):
            continue
        if len(node.input) > 1 and node.input[1]:
            split = evaluator.ints(node.input[1])
            if split is None:
                continue
            sizes = split if len(split) > 1 or not evaluator.values[node.input[1]].scalar else \
                [split[0]] * (dims[axis] // split[0]) + ([dims[axis] % split[0]] if dims[axis] % split[0] else [])
        else:
            sizes = [1] * dims[axis]
            if not attrs.get("keepdims", 1):
                continue  # squeezed elements: not a plain Split
        users = readers.get(node.output[0], [])
        positions = [p for p in (evaluator.ints(user.input[1]) for user in users) if p is not None]
        if not users or len(positions) != len(users) or any(u.op_type != "SequenceAt" for u in users):
            continue
        names = [f"{node.output[0]}_{i}" for i in range(len(sizes))]
        split_sizes = f"{node.name or node.output[0]}_sizes"
        graph.initializer.append(numpy_helper.from_array(np.array(sizes, np.int64), split_sizes))
        index = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(index, helper.make_node("Split", [node.input[0], split_sizes], names, name=node.name, axis=axis))
        for user, position in zip(users, positions):
            source = names[position[0] % len(sizes)]
            at = list(graph.node).index(user)
            graph.node.remove(user)
            graph.node.insert(at, helper.make_node("Identity", [source], list(user.output), name=user.name))
        modified = True
    return modified
