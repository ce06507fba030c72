"""OnnxModule: an ONNX graph run node by node in torch, differentiable end to end.

Usage:
    module = OnnxModule(model)                       # initializers as frozen buffers
    logits = module(x)                               # one output -> the tensor; several -> a tuple
    logits.sum().backward()                          # x.grad is filled (x.requires_grad_() first)

    module = OnnxModule(model, trainable=True)       # float initializers become nn.Parameters
    weight = module.initializer("conv1.weight")      # by ONNX name; module.initializer_names maps to attributes
    module.set_initializer("w_quantized", soft)      # rebind one (e.g. float soft-rounded weights for a DQ)

    module.runtime_nodes                             # [(op_type, node name)] run by forward, constants folded
    for bn in module.bn_nodes: print(bn.name, bn.channels)
    mean, var = module.bn_statistics()["/bn1/BatchNormalization"]
    with module.bn_input_hook(lambda name, x: seen.append((name, x))):
        module(x)                                    # fn(node_name, input) for every BN node, in graph order
    with module.output_hooks({"q_node": lambda inputs, out: out}):
        module(x)                                    # replace named nodes' outputs (e.g. QDrop)

Construction does everything that does not depend on the input: it checks every op is supported,
sorts the nodes, folds Constant nodes (and nodes computed only from constants), builds one kernel per
node with its attributes already decoded, and numbers every value so that a forward pass is a loop
over a list with no name lookups. Each intermediate value is dropped after its last consumer.

Quantized (QDQ) graphs run as fake quantization: QuantizeLinear outputs its integers as float32 values
(round half to even, with a straight-through gradient to x and to a trainable scale), DequantizeLinear
maps them (or an integer initializer) back to float. Integer initializers keep an integer dtype (INT4/
INT2 as int8, UINT4/UINT2 as uint8; `initializer_types` has the ONNX types) and are never parameters.

The module has no training-mode behaviour: BatchNormalization always uses its running statistics
and Dropout is the identity, as the ONNX graph (exported in eval mode) says.
"""

from __future__ import annotations

import contextlib
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from torch.utils.hooks import RemovableHandle

from toolchain.executor.graph_prep import check_supported, default_opset, node_attributes, to_tensor, topological_order
from toolchain.executor.ops import SUB_BYTE_HOLDERS, constant_value
from toolchain.executor.registry import NodeContext, supported_spec

BnHook = Callable[[str, torch.Tensor], None]
OutputHook = Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor]  # (node inputs, output) -> output

_NONE_SLOT = 0  # always None: absent optional inputs read it


@dataclass(frozen=True)
class BatchNormNode:
    """A BatchNormalization node as the executor runs it: node name, input value, channels, statistics names."""

    name: str
    input: str
    channels: int
    epsilon: float
    mean: str
    var: str


@dataclass(frozen=True, slots=True)
class _Step:
    """One node, ready to run: kernel, value slots read and written, slots to free after it."""

    kernel: Callable[..., Any]
    inputs: tuple[int, ...]
    output: int  # the slot of a single output, or -1 when the node has several
    outputs: tuple[int, ...]
    free: tuple[int, ...]
    bn_name: str | None  # set on BatchNormalization nodes: input hooks are called with this name
    label: str
    name: str  # the node's name: output hooks are keyed by it


class OnnxModule(nn.Module):
    """Runs an ONNX graph as a torch module (see the module docstring)."""

    def __init__(self, model: onnx.ModelProto, trainable: bool = False) -> None:
        super().__init__()
        graph = model.graph
        opset = default_opset(model)
        initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        self.input_names = [v.name for v in graph.input if v.name not in initializers]
        self.output_names = [v.name for v in graph.output]
        nodes = topological_order(graph, set(initializers) | set(self.input_names))
        check_supported(nodes)

        self.initializer_names: dict[str, str] = {}  # ONNX initializer name -> attribute name
        # ONNX initializer name -> ONNX element type (TensorProto.INT4, ...): INT4/INT2 are held as int8,
        # UINT4/UINT2 as uint8, so the tensor's dtype alone does not say it.
        self.initializer_types: dict[str, int] = {init.name: init.data_type for init in graph.initializer}
        self._initializer_dtypes = {name: array.dtype for name, array in initializers.items()}
        self._constant_names: dict[str, str] = {}  # Constant / folded value -> attribute name
        static_only = self._static_only_initializers(nodes, initializers)
        for name, array in initializers.items():
            tensor = to_tensor(array, f"initializer '{name}'")
            attribute = self._attribute_name(name)
            if trainable and tensor.is_floating_point() and name not in static_only:
                self.register_parameter(attribute, nn.Parameter(tensor))
            else:
                self.register_buffer(attribute, tensor)
            self.initializer_names[name] = attribute

        # Values known at construction, as numpy (what builders read) and as torch (what folding runs on).
        known: dict[str, np.ndarray] = dict(initializers)
        foldable: set[str] = {n for n, a in initializers.items() if not np.issubdtype(a.dtype, np.floating)}
        runtime_nodes: list[tuple[onnx.NodeProto, Callable[..., Any]]] = []
        self.bn_nodes: list[BatchNormNode] = []
        for node in nodes:
            spec = supported_spec(node.op_type)
            ctx = NodeContext(
                name=node.name, op_type=node.op_type, attrs=node_attributes(node), inputs=tuple(node.input),
                num_outputs=len(node.output),
                constants=tuple(known.get(name) if i in spec.static else None for i, name in enumerate(node.input)),
                opset=opset, shapes=tuple(None if name not in known else tuple(known[name].shape) for name in node.input),
            )
            if node.op_type == "Constant":
                self._add_constant(node.output[0], np.asarray(constant_value(ctx)), known, foldable)
                continue
            if self._alias_identity(node, known, foldable):
                continue
            kernel = spec.builder(ctx)
            if node.input and all(not name or name in foldable for name in node.input):
                self._fold(node, kernel, known, foldable)
                continue
            if node.op_type == "BatchNormalization":
                self.bn_nodes.append(self._bn_node(node, ctx, known))
            runtime_nodes.append((node, kernel))
        self._build_steps(runtime_nodes)
        # An OrderedDict, not a dict: RemovableHandle keeps a weak reference to it, and dicts cannot have one.
        self._bn_hooks: OrderedDict[int, BnHook] = OrderedDict()
        self._output_hooks: dict[str, OutputHook] = {}
        self.input_memory_format: torch.memory_format | None = None  # acceleration.to_channels_last sets NHWC

    # ------------------------------------------------------------------------------------ construction

    @staticmethod
    def _static_only_initializers(nodes: list[onnx.NodeProto], initializers: dict[str, np.ndarray]) -> set[str]:
        """Initializers used only as configuration (shapes, axes, bounds, BN statistics): never trainable."""
        dynamic_use: set[str] = set()
        for node in nodes:
            spec = supported_spec(node.op_type)
            dynamic_use.update(name for i, name in enumerate(node.input) if i not in spec.static)
        return set(initializers) - dynamic_use

    def _attribute_name(self, onnx_name: str) -> str:
        """A valid, unused attribute name for an ONNX value name ('layer1.0.conv1.weight' -> 'layer1_0_conv1_weight')."""
        base = re.sub(r"\W", "_", onnx_name).strip("_") or "value"
        if base[0].isdigit() or hasattr(self, base):
            base = f"v_{base}"
        name, suffix = base, 1
        while hasattr(self, name) or name in self._buffers or name in self._parameters:
            name, suffix = f"{base}_{suffix}", suffix + 1
        return name

    def _add_constant(self, name: str, array: np.ndarray, known: dict[str, np.ndarray], foldable: set[str]) -> None:
        attribute = self._attribute_name(name)
        # Not persistent: the value is part of the graph, not a weight a state dict should carry.
        self.register_buffer(attribute, to_tensor(array, f"constant '{name}'"), persistent=False)
        self._constant_names[name] = attribute
        known[name] = array
        foldable.add(name)

    def _alias_identity(self, node: onnx.NodeProto, known: dict[str, np.ndarray], foldable: set[str]) -> bool:
        """An Identity of an initializer or constant becomes another name for the same live tensor.

        torch.onnx shares equal tensors through Identity nodes (the BN parameters of layers still at their
        initial values, a weight used twice), so a BatchNormalization may read its statistics through one. An
        alias, not a copy: a trainable parameter keeps its gradient and set_initializer stays visible."""
        source = node.input[0] if node.op_type == "Identity" and len(node.input) == 1 else ""
        attribute = self.initializer_names.get(source) or self._constant_names.get(source)
        if attribute is None or node.output[0] in self.output_names:
            return False
        self._constant_names[node.output[0]] = attribute
        known[node.output[0]] = known[source]
        if source in foldable:
            foldable.add(node.output[0])
        return True

    def _fold(self, node: onnx.NodeProto, kernel: Callable[..., Any], known: dict[str, np.ndarray],
              foldable: set[str]) -> None:
        """Run a node whose inputs are all constants once, now, and keep its outputs as constants."""
        args = [self._tensor(name) if name else None for name in node.input]
        with torch.no_grad():
            result = kernel(*args)
        results = result if isinstance(result, tuple) else (result,)
        for name, value in zip(node.output, results):
            if name:
                self._add_constant(name, value.detach().cpu().numpy(), known, foldable)

    def _bn_node(self, node: onnx.NodeProto, ctx: NodeContext, known: dict[str, np.ndarray]) -> BatchNormNode:
        if len(node.input) != 5 or any(name not in known for name in node.input[1:]):
            raise ctx.error("scale, bias, mean and var must be initializers or constants; re-export the model")
        return BatchNormNode(name=node.name, input=node.input[0], channels=int(known[node.input[3]].size),
                             epsilon=float(ctx.attr("epsilon", 1e-5)), mean=node.input[3], var=node.input[4])

    def _build_steps(self, runtime_nodes: list[tuple[onnx.NodeProto, Callable[..., Any]]]) -> None:
        slots: dict[str, int] = {}

        def slot_of(name: str) -> int:
            if not name:
                return _NONE_SLOT
            if name not in slots:
                slots[name] = len(slots) + 1
            return slots[name]

        input_slots = [slot_of(name) for name in self.input_names]
        node_slots = []
        for node, _ in runtime_nodes:
            ins = tuple(slot_of(name) for name in node.input)
            # An absent optional output still gets a slot of its own, freed right away.
            outs = tuple(slot_of(name) if name else slot_of(f"\0unused:{node.name}:{i}") for i, name in enumerate(node.output))
            node_slots.append((ins, outs))
        output_slots = [slot_of(name) for name in self.output_names]

        constant_slots = {slot: name for name, slot in slots.items()
                          if name in self.initializer_names or name in self._constant_names}
        # Reference counting done once: a runtime value is freed after the last step that reads it.
        last_use: dict[int, int] = {}
        for index, (ins, outs) in enumerate(node_slots):
            for slot in (*outs, *ins):
                last_use[slot] = index
        keep = set(output_slots) | set(constant_slots) | {_NONE_SLOT}
        frees: list[list[int]] = [[] for _ in runtime_nodes]
        for slot, index in last_use.items():
            if slot not in keep:
                frees[index].append(slot)

        self._steps = [
            _Step(kernel, ins, outs[0] if len(outs) == 1 else -1, outs, tuple(frees[index]),
                  node.name if node.op_type == "BatchNormalization" else None, f"{node.op_type} node '{node.name}'",
                  node.name)
            for index, ((node, kernel), (ins, outs)) in enumerate(zip(runtime_nodes, node_slots))
        ]
        self.runtime_nodes = [(node.op_type, node.name) for node, _ in runtime_nodes]  # what forward runs
        self._num_slots = len(slots) + 1
        self._input_slots = tuple(input_slots)
        self._output_slots = tuple(output_slots)
        self._constant_slots = tuple(
            (slot, name in self.initializer_names and self.initializer_names[name] in self._parameters,
             self.initializer_names.get(name) or self._constant_names[name])
            for slot, name in constant_slots.items()
        )

    # ------------------------------------------------------------------------------------------ running

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(inputs) != len(self._input_slots):
            raise TypeError(f"the graph takes {len(self._input_slots)} input(s) {self.input_names}, got {len(inputs)}")
        values: list[Any] = [None] * self._num_slots
        params, buffers = self._parameters, self._buffers
        for slot, is_param, attribute in self._constant_slots:
            values[slot] = params[attribute] if is_param else buffers[attribute]
        layout = self.input_memory_format
        for slot, tensor in zip(self._input_slots, inputs):
            if layout is not None and tensor.dim() == 4 and tensor.is_floating_point():
                tensor = tensor.contiguous(memory_format=layout)
            values[slot] = tensor
        hooks = self._bn_hooks
        output_hooks = self._output_hooks
        step = None
        try:
            for step in self._steps:
                args = [values[i] for i in step.inputs]
                if hooks and step.bn_name is not None:
                    for fn in list(hooks.values()):
                        fn(step.bn_name, args[0])
                result = step.kernel(*args)
                if output_hooks and step.name in output_hooks:
                    result = output_hooks[step.name](args, result)
                if step.output >= 0:
                    values[step.output] = result
                else:
                    for slot, value in zip(step.outputs, result):
                        values[slot] = value
                for slot in step.free:
                    values[slot] = None
        except Exception as err:
            if step is not None and hasattr(err, "add_note"):  # Python 3.11+; 3.10 raises the error as it is
                err.add_note(f"while running {step.label} of the ONNX graph")
            raise
        outputs = tuple(values[slot] for slot in self._output_slots)
        return outputs[0] if len(outputs) == 1 else outputs

    def extra_repr(self) -> str:
        return (f"inputs={self.input_names}, outputs={self.output_names}, nodes={len(self.runtime_nodes)}, "
                f"batch_norms={len(self.bn_nodes)}, initializers={len(self.initializer_names)}")

    # ---------------------------------------------------------------------------------------- accessors

    def _tensor(self, onnx_name: str) -> torch.Tensor:
        attribute = self.initializer_names.get(onnx_name) or self._constant_names.get(onnx_name)
        if attribute is None:
            raise KeyError(f"'{onnx_name}' is not an initializer or constant of the graph")
        value = self._parameters[attribute] if attribute in self._parameters else self._buffers[attribute]
        assert value is not None, "registered with a value"
        return value

    def initializer(self, onnx_name: str) -> torch.Tensor:
        """The live tensor (buffer or parameter) of an ONNX initializer, by its ONNX name."""
        if onnx_name not in self.initializer_names:
            raise KeyError(f"'{onnx_name}' is not an initializer of the graph")
        return self._tensor(onnx_name)

    def set_initializer(self, onnx_name: str, value: torch.Tensor) -> None:
        """Rebind an initializer to `value`, read by forward from the next call on.

        For what a graph holds as integers but training wants as floats: e.g. soft-rounded weights (float,
        possibly requiring grad) in place of the integers of a weight's DequantizeLinear, which accepts
        float input. The value stays a buffer (or a parameter, if the initializer is one: then `value`
        must be an nn.Parameter); shapes are not checked.
        """
        if onnx_name not in self.initializer_names:
            raise KeyError(f"'{onnx_name}' is not an initializer of the graph")
        attribute = self.initializer_names[onnx_name]
        if attribute in self._parameters:
            if not isinstance(value, nn.Parameter):
                raise TypeError(f"initializer '{onnx_name}' is a parameter; pass an nn.Parameter")
            self._parameters[attribute] = value
        else:
            self._buffers[attribute] = value

    def initializer_arrays(self) -> dict[str, np.ndarray]:
        """Current value of every initializer, keyed by ONNX name (to write trained values back to the graph).

        Integer initializers come back in their ONNX type's numpy dtype (ml_dtypes.int4 for INT4, ...), so
        numpy_helper.from_array writes the same element type; float values held in their place (a learned
        rounding) come back as they are.
        """
        arrays = {}
        for name in self.initializer_names:
            array = self._tensor(name).detach().cpu().numpy()
            original = self._initializer_dtypes[name]
            if original in SUB_BYTE_HOLDERS and array.dtype == SUB_BYTE_HOLDERS[original]:
                array = array.astype(original)
            arrays[name] = array
        return arrays

    def bn_statistics(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """node name -> (running mean, running var), the live tensors, for every BatchNormalization node."""
        return {bn.name: (self._tensor(bn.mean), self._tensor(bn.var)) for bn in self.bn_nodes}

    # -------------------------------------------------------------------------------------------- hooks

    def register_bn_input_hook(self, fn: BnHook) -> RemovableHandle:
        """Call fn(node_name, input) before every BatchNormalization node runs; handle.remove() stops it."""
        handle = RemovableHandle(self._bn_hooks)
        self._bn_hooks[handle.id] = fn
        return handle

    @contextlib.contextmanager
    def output_hooks(self, hooks: dict[str, OutputHook]) -> Iterator[None]:
        """Replace the output of the named nodes by hook(inputs, output) inside a with block.

        For what the graph does not say but training needs, e.g. QDrop: a QuantizeLinear hook that lets
        some elements through unquantized. Single-output nodes only.
        """
        names = {name for _, name in self.runtime_nodes}
        unknown = sorted(set(hooks) - names)
        if unknown:
            raise KeyError(f"no runtime node named {unknown[0]!r} in the graph")
        previous = self._output_hooks
        self._output_hooks = {**previous, **hooks}
        try:
            yield
        finally:
            self._output_hooks = previous

    @contextlib.contextmanager
    def bn_input_hook(self, fn: BnHook) -> Iterator[None]:
        """register_bn_input_hook for the duration of a with block."""
        handle = self.register_bn_input_hook(fn)
        try:
            yield
        finally:
            handle.remove()
