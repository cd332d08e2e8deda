"""Where a quantized model quantizes, so that two models' latencies can be explained and not only measured.

Two INT8 models with the same quantizers in the same places run the same
kernels; a latency difference between them is then noise, whatever the
ratio says. These signatures make that check part of the benchmark's output.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx

__all__ = ["onnx_signature", "openvino_signature"]


def openvino_signature(xml: bytes, weights: bytes) -> Counter[str]:
    """Op counts of an IR plus one entry per FakeQuantize: what it reads and what reads it (and its levels)."""
    import openvino as ov

    model = ov.Core().read_model(xml.decode(), ov.Tensor(np.frombuffer(weights, dtype=np.uint8).copy()))
    signature: Counter[str] = Counter()
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        signature[kind] += 1
        if kind == "FakeQuantize":
            source = op.input(0).get_source_output().get_node().get_type_name()
            readers = ",".join(sorted(port.get_node().get_type_name() for port in op.output(0).get_target_inputs()))
            signature[f"FakeQuantize[{op.get_attributes()['levels']}] {source} -> {readers}"] += 1
    return signature


def onnx_signature(model: bytes) -> Counter[str]:
    """Op counts of a QDQ model plus the element type of each QuantizeLinear's output (uint8/int8)."""
    graph = onnx.load_from_string(model).graph
    initializers = {init.name: init for init in graph.initializer}
    signature: Counter[str] = Counter()
    for node in graph.node:
        signature[node.op_type] += 1
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in initializers:
            kind = onnx.TensorProto.DataType.Name(initializers[node.input[2]].data_type).lower()
            signature[f"QuantizeLinear -> {kind}"] += 1
    return signature
