"""Torch executor: runs an ONNX graph as a differentiable torch.nn.Module ("one graph, two engines").

Usage:
    from toolchain.executor import OnnxModule
    module = OnnxModule(onnx_model)                 # frozen; OnnxModule(onnx_model, trainable=True) for parameters
    y = module(x)
    with module.bn_input_hook(lambda node, inp: ...):
        module(x)

`registry` maps op types to kernel builders (`register`, `supported_ops`), `ops` holds the builders,
`module` walks the graph.
"""

from toolchain.executor.module import BatchNormNode, BnHook, OnnxModule
from toolchain.executor.registry import NodeContext, register, supported_ops

__all__ = ["BatchNormNode", "BnHook", "NodeContext", "OnnxModule", "register", "supported_ops"]
