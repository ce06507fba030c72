"""Clean-up passes: shape arithmetic folds away, Identity disappears, BatchNormalization stays."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from toolchain.onnxio.passes import cleanup_passes, run_passes

F = onnx.TensorProto.FLOAT


def _flatten_by_view_model() -> onnx.ModelProto:
    """x -> BN -> Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), Constant[-1])) -> Identity -> y."""
    inits = [numpy_helper.from_array(np.full(3, v, np.float32), n) for n, v in
             (("scale", 2.0), ("bias", 0.5), ("mean", 0.1), ("var", 4.0))]
    inits.append(numpy_helper.from_array(np.array(0, np.int64), "zero"))
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "axes"))
    nodes = [
        helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["bn"], name="bn"),
        helper.make_node("Shape", ["bn"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "axes"], ["batch1"]),
        helper.make_node("Constant", [], ["minus_one"], value=numpy_helper.from_array(np.array([-1], np.int64))),
        helper.make_node("Concat", ["batch1", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["bn", "target"], ["flat"], name="flatten_by_view"),
        helper.make_node("Identity", ["flat"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", F, ["N", 48])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_view_flatten_becomes_flatten_and_results_are_unchanged():
    """The Shape/Gather/Unsqueeze/Concat chain of x.view(x.size(0), -1) is rewritten to Flatten; outputs identical (atol 0)."""
    model = _flatten_by_view_model()
    x = np.random.default_rng(0).standard_normal((5, 3, 4, 4), dtype=np.float32)
    before = _run(model, x)
    result = run_passes(model, cleanup_passes())
    assert result.modified
    assert [n.op_type for n in model.graph.node] == ["BatchNormalization", "Flatten"]
    assert model.graph.output[0].name == "y"
    np.testing.assert_array_equal(_run(model, x), before)
    onnx.checker.check_model(model)


def test_constant_subgraphs_fold_to_initializers():
    """A chain of nodes computing only on constants (Constant -> Mul -> Add into a Conv weight) becomes one initializer."""
    w = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    nodes = [
        helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.array(2.0, np.float32))),
        helper.make_node("Mul", ["w", "two"], ["w2"]),
        helper.make_node("Add", ["w2", "two"], ["w4"]),
        helper.make_node("Conv", ["x", "w4"], ["y"], name="conv"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, ["N", 1, 2, 2])],
                              [helper.make_tensor_value_info("y", F, ["N", 2, 2, 2])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    run_passes(model, cleanup_passes())
    assert [n.op_type for n in model.graph.node] == ["Conv"]
    (weight,) = model.graph.initializer
    np.testing.assert_array_equal(numpy_helper.to_array(weight), np.full((2, 1, 1, 1), 4.0, np.float32))


def test_clean_graph_is_not_modified():
    """A graph with only real layers: the passes report modified=False (the fixed point is reached at once)."""
    model = _flatten_by_view_model()
    run_passes(model, cleanup_passes())
    assert not run_passes(model, cleanup_passes()).modified
