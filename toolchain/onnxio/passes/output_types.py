"""Give every graph output a complete type (element type and shape), as onnx.checker requires.

Usage:
    CompleteOutputTypesPass()(model)      # in place; modified=True when an output type was filled in

`make_tensor_value_info("y", FLOAT, None)` is accepted by onnxruntime but fails onnx.checker ("Field
'shape' of 'type' is required but missing"), and so would every model the quantizer derives from it. The
shape comes from onnx shape inference; when inference cannot tell (an op it does not know), the model is
run once in onnxruntime on a zero input of batch 1 and the output's rank is taken from the result, every
dimension named symbolically (`y_dim0`, ...) so that no size is promised that was not proven.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, shape_inference

from toolchain.onnxio.passes.base import GraphPass, PassResult

logger = logging.getLogger(__name__)


def _complete(value: onnx.ValueInfoProto) -> bool:
    tensor = value.type.tensor_type
    return value.type.HasField("tensor_type") and tensor.elem_type != 0 and tensor.HasField("shape")


def _inferred(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as err:  # noqa: BLE001 - inference is best effort; the fallback below runs the model
        logger.debug("shape inference failed: %s", err)
        return {}
    return {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.output) if _complete(v)}


def _ranks_from_a_run(model: onnx.ModelProto, names: list[str]) -> dict[str, tuple[int, int]]:
    """(element type, rank) of `names` from one onnxruntime run on zeros; {} when the model does not run."""
    import onnxruntime as ort  # deferred: onnxruntime loads only when this runs (start-up time)

    from toolchain.onnxio.sessions import inference_session  # deferred: onnxruntime loads only when this runs (start-up time)

    initializers = {i.name for i in model.graph.initializer}
    feeds = {}
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        session = inference_session(model, options)
        for arg in session.get_inputs():
            if arg.name in initializers:
                continue
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in arg.shape]
            dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}.get(arg.type, np.float32)
            feeds[arg.name] = np.zeros(shape, dtype)
        values = session.run(names, feeds)
    except Exception as err:  # noqa: BLE001 - a model that does not run is reported by the stage that needs it
        logger.debug("could not run the model to learn output ranks: %s", err)
        return {}
    return {name: (helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), np.asarray(v).ndim) for name, v in zip(names, values)}


class CompleteOutputTypesPass(GraphPass):
    """Fill in missing element types and shapes of graph outputs (inferred, else rank from one run)."""

    def call(self, model: onnx.ModelProto) -> PassResult:
        missing = [o for o in model.graph.output if not _complete(o)]
        if not missing:
            return PassResult(model, modified=False)
        inferred = _inferred(model)
        unresolved = [o.name for o in missing if o.name not in inferred]
        ranks = _ranks_from_a_run(model, unresolved) if unresolved else {}
        modified = False
        for output in missing:
            if output.name in inferred:
                output.type.CopyFrom(inferred[output.name].type)
            elif output.name in ranks:
                elem_type, rank = ranks[output.name]
                known = output.type.tensor_type.elem_type or elem_type
                dims = [f"{output.name}_dim{i}" for i in range(rank)]
                output.type.CopyFrom(helper.make_tensor_type_proto(known, dims))
            else:
                continue
            modified = True
        return PassResult(model, modified=modified)
