"""Torch executor: runs an ONNX graph as a differentiable torch.nn.Module ("one graph, two engines").

Usage:
    from toolchain.executor import OnnxModule
    module = OnnxModule(onnx_model)                 # frozen; OnnxModule(onnx_model, trainable=True) for parameters
    y = module(x)
    with module.bn_input_hook(lambda node, inp: ...):
        module(x)

`ops` holds the op registry (`register`, `supported_ops`); `module` the graph walker.
"""

from toolchain.executor.module import BatchNormNode, BnHook, OnnxModule
from toolchain.executor.ops import NodeContext, register, supported_ops

__all__ = ["BatchNormNode", "BnHook", "NodeContext", "OnnxModule", "register", "supported_ops"]
