"""The checked export's counters: MACs and parameters of hand-built ONNX graphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from snptool.deploy.checked_export import count_graph_macs, count_params


def test_count_macs_of_gemm_and_matmul_nodes() -> None:
    # (batch, 3, 4) @ (4, 5) → 3·4·5 = 60 per sample; Gemm (batch, 5)·(7, 5)ᵀ → 5·7 = 35.
    b = helper.make_tensor("b", TensorProto.FLOAT, [4, 5], np.ones(20, np.float32))
    c = helper.make_tensor("c", TensorProto.FLOAT, [7, 5], np.ones(35, np.float32))
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "b"], ["y"]),
            helper.make_node("ReduceMean", ["y"], ["z"], axes=[1], keepdims=0),
            helper.make_node("Gemm", ["z", "c"], ["out"], transB=1),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 7])],
        [b, c],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    assert count_graph_macs(model) == 60 + 35
    assert count_params(model) == 20 + 35


def test_count_macs_of_conv1d_conv3d_and_conv_transpose_nodes() -> None:
    # Conv1d, 2 groups: (batch, 4, 6) → (batch, 6, 6); 36 outputs × (4/2 · 3) = 216.
    # Conv3d: (batch, 2, 3, 4, 4) → (batch, 5, 2, 4, 4); 160 outputs × (2 · 2·3·3) = 5,760.
    # ConvTranspose, stride 2: (batch, 3, 4, 4) → (batch, 2, 9, 9); 48 inputs × (2 · 3·3) = 864.
    weights = [("w1", [6, 2, 3]), ("w3", [5, 2, 2, 3, 3]), ("w5", [3, 2, 3, 3])]
    initializers = [
        helper.make_tensor(name, TensorProto.FLOAT, shape, np.ones(np.prod(shape), np.float32))
        for name, shape in weights
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x1", "w1"], ["y1"], group=2, pads=[1, 1]),
            helper.make_node("Conv", ["x3", "w3"], ["y3"], pads=[0, 1, 1, 0, 1, 1]),
            helper.make_node("ConvTranspose", ["x5", "w5"], ["y5"], strides=[2, 2]),
        ],
        "g",
        [
            helper.make_tensor_value_info("x1", TensorProto.FLOAT, ["batch", 4, 6]),
            helper.make_tensor_value_info("x3", TensorProto.FLOAT, ["batch", 2, 3, 4, 4]),
            helper.make_tensor_value_info("x5", TensorProto.FLOAT, ["batch", 3, 4, 4]),
        ],
        [
            helper.make_tensor_value_info("y1", TensorProto.FLOAT, ["batch", 6, 6]),
            helper.make_tensor_value_info("y3", TensorProto.FLOAT, ["batch", 5, 2, 4, 4]),
            helper.make_tensor_value_info("y5", TensorProto.FLOAT, ["batch", 2, 9, 9]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {
        name: np.ones(shape, np.float32)
        for name, shape in (("x1", (1, 4, 6)), ("x3", (1, 2, 3, 4, 4)), ("x5", (1, 3, 4, 4)))
    }
    y1, y3, y5 = session.run(None, feeds)
    assert (y1.shape, y3.shape, y5.shape) == ((1, 6, 6), (1, 5, 2, 4, 4), (1, 2, 9, 9))
    # all-ones inputs and weights: the transposed conv's outputs sum its products, 48 · 18
    assert y5.sum() == 864
    assert count_graph_macs(model) == 216 + 5_760 + 864
