"""Small CNNs written directly as ONNX graphs, so the quantization tests need no PyTorch.

:class:`CnnGraph` adds layers one at a time (convolutions with seeded He
(Kaiming) uniform weights, batch norm folded into them or kept as a node, ReLU,
residual Add, global pooling, a linear read-out) under the node names torch's
exporter would give, and runs any part of the graph built so far on data with
ONNX Runtime. That is what the fixtures need to take batch-norm statistics from the
data and to fit a read-out to the pooled features, as training would.
:func:`fit_logistic` is that read-out's fit, in numpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

__all__ = ["OPSET", "CnnGraph", "channel_statistics", "fit_logistic"]

OPSET = 17
BN_EPSILON = 1e-5


class CnnGraph:
    """An ONNX graph with one image input, built layer by layer.

    Parameters live in :attr:`params` (initializer name -> array) until :meth:`model` writes
    them out, so a fixture can still change a layer's weights after adding it (fold a batch
    norm, plant an outlier channel). Every method returns the name of the tensor it produced.

    Args:
        input_name: the image input's name.
        shape: one sample's shape ``(C, H, W)``.
        batch: a fixed batch size, or None for a symbolic ``N``.
        seed: seeds the weight initialisation.
    """

    def __init__(self, input_name: str, shape: tuple[int, int, int], *, batch: int | None = None, seed: int = 0):
        self.input_name = input_name
        self.batch = batch
        self.rng = np.random.default_rng(seed)
        self.params: dict[str, np.ndarray] = {}
        self._nodes: list[onnx.NodeProto] = []
        self._shapes: dict[str, tuple[int, ...]] = {input_name: tuple(shape)}
        self._producer: dict[str, onnx.NodeProto] = {}

    # ------------------------------------------------------------------------- layers

    def conv(self, x: str, channels: int, *, name: str, stride: int = 1, bias: bool = True) -> str:
        """A 3x3 convolution, padding 1, initialised as torch initialises ``nn.Conv2d``.

        That is He (Kaiming) uniform with ``a = sqrt(5)``: weights and biases uniform in
        ``±1 / sqrt(fan_in)``. The scale matters to INT8: against the biases' constant offsets,
        the image's share of each activation's range is what quantization has to resolve (He normal
        weights, 2.4 times larger, made the averaging classifier of the ONNX Runtime tests easy to
        quantize for most seeds).
        """
        cin, height, width = self._shapes[x]
        fan_in = cin * 9
        bound = 1 / np.sqrt(fan_in)
        inputs = [x, self._param(f"{name}.weight", self.rng.uniform(-bound, bound, (channels, cin, 3, 3)))]
        if bias:
            inputs.append(self._param(f"{name}.bias", self.rng.uniform(-bound, bound, channels)))
        size = ((height - 1) // stride + 1, (width - 1) // stride + 1)
        return self._add(
            "Conv", inputs, name, (channels, *size), kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride, stride]
        )

    def batch_norm(
        self,
        x: str,
        mean: np.ndarray,
        var: np.ndarray,
        *,
        name: str,
        fold: bool = True,
    ) -> str:
        """Inference batch norm (scale 1, shift 0) of a convolution's output: folded into it, or as a node.

        Folding rewrites the convolution's weights and bias, as exporters and ``quant_pre_process`` do;
        ``fold=False`` keeps a BatchNormalization node (named ``name``), as some exporters leave it.
        """
        channels = self._shapes[x][0]
        scale, shift = np.ones(channels), np.zeros(channels)
        if not fold:
            stats = [(".weight", scale), (".bias", shift), (".running_mean", mean), (".running_var", var)]
            inputs = [x, *(self._param(name + suffix, value) for suffix, value in stats)]
            return self._add("BatchNormalization", inputs, name, self._shapes[x], epsilon=BN_EPSILON)
        conv = self._producer[x]
        if conv.op_type != "Conv":
            raise ValueError(f"can fold a batch norm only into a convolution, not {conv.op_type} {conv.name}")
        factor = scale / np.sqrt(var + BN_EPSILON)
        weight = conv.input[1]
        bias = conv.input[2] if len(conv.input) > 2 else None
        old_bias = self.params[bias] if bias else np.zeros(channels)
        self.params[weight] = (self.params[weight] * factor[:, None, None, None]).astype(np.float32)
        if bias is None:
            conv.input.append(self._param(f"{conv.name}.bias", np.zeros(channels)))
            bias = conv.input[2]
        self.params[bias] = ((old_bias - mean) * factor + shift).astype(np.float32)
        return x

    def relu(self, x: str, *, name: str) -> str:
        return self._add("Relu", [x], name, self._shapes[x])

    def add(self, a: str, b: str, *, name: str) -> str:
        return self._add("Add", [a, b], name, self._shapes[a])

    def global_max_pool(self, x: str, *, name: str) -> str:
        """Max over the whole image, as torch exports ``adaptive_max_pool2d(x, 1)``: a MaxPool as large as the input."""
        channels, height, width = self._shapes[x]
        return self._add("MaxPool", [x], name, (channels, 1, 1), kernel_shape=[height, width], strides=[height, width])

    def global_average_pool(self, x: str, *, name: str) -> str:
        return self._add("GlobalAveragePool", [x], name, (self._shapes[x][0], 1, 1))

    def flatten(self, x: str, *, name: str) -> str:
        return self._add("Flatten", [x], name, (int(np.prod(self._shapes[x])),), axis=1)

    def concat(self, xs: Sequence[str], *, name: str) -> str:
        return self._add("Concat", list(xs), name, (sum(self._shapes[x][0] for x in xs),), axis=1)

    def gemm(self, x: str, weight: np.ndarray, bias: np.ndarray, *, name: str) -> str:
        """A linear layer ``x @ weight.T + bias``, ``weight`` shaped ``(out, in)`` as torch's ``nn.Linear``."""
        inputs = [x, self._param(f"{name}.weight", weight), self._param(f"{name}.bias", bias)]
        return self._add("Gemm", inputs, name, (weight.shape[0],), transB=1)

    def first_columns(self, x: str, count: int, *, name: str) -> str:
        """``x[:, :count]``, as a Slice."""
        ends = [
            self._param(f"{name}.{part}", np.array(value), np.int64)
            for part, value in (("starts", [0]), ("ends", [count]), ("axes", [1]))
        ]
        return self._add("Slice", [x, *ends], name, (count,))

    def sigmoid(self, x: str, *, name: str, output: str | None = None) -> str:
        """A Sigmoid; ``output`` names its tensor (a graph output's name) instead of the exporter's default."""
        return self._add("Sigmoid", [x], name, self._shapes[x], output=output)

    # ------------------------------------------------------------------------- whole graphs

    def model(self, outputs: Sequence[str], inputs: Sequence[str] = ()) -> onnx.ModelProto:
        """The graph so far as an opset-17 model with ``outputs``, checked by ``onnx.checker``.

        ``inputs`` (default: the image) may name intermediate tensors instead: the model then holds only
        the nodes between them and ``outputs``.
        """
        inputs = list(inputs) or [self.input_name]
        needed, nodes = set(outputs), []
        for node in reversed(self._nodes):
            if node.output[0] in needed and node.output[0] not in inputs:
                nodes.append(node)
                needed.update(node.input)
        nodes.reverse()
        batch: int | str = self.batch or "N"
        graph = helper.make_graph(
            nodes,
            "cnn",
            [helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, *self._shapes[name]]) for name in inputs],
            [helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, *self._shapes[name]]) for name in outputs],
            [numpy_helper.from_array(value, name) for name, value in self.params.items() if name in needed],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
        onnx.checker.check_model(model)
        return model

    def run(self, outputs: Sequence[str], feeds: Mapping[str, np.ndarray], batch_size: int = 64) -> list[np.ndarray]:
        """The named tensors for the data in ``feeds`` (the image, or intermediate tensors), by ONNX Runtime."""
        options = ort.SessionOptions()
        options.log_severity_level = 3
        model = self.model(outputs, list(feeds))
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        count = len(next(iter(feeds.values())))
        step = self.batch or batch_size
        parts = []
        for start in range(0, count, step):
            chunk = {name: value[start : start + step] for name, value in feeds.items()}
            taken = len(next(iter(chunk.values())))
            if self.batch:  # a fixed batch: pad with the last sample, cut back after
                chunk = {name: np.concatenate([v, np.repeat(v[-1:], step - taken, 0)]) for name, v in chunk.items()}
            parts.append([value[:taken] for value in session.run(list(outputs), chunk)])
        return [np.concatenate([part[i] for part in parts]) for i in range(len(outputs))]

    # ------------------------------------------------------------------------- internals

    def _param(self, name: str, value: np.ndarray, dtype: type = np.float32) -> str:
        if name in self.params:
            raise ValueError(f"parameter {name!r} already exists")
        self.params[name] = np.asarray(value, dtype=dtype)
        return name

    def _add(
        self, op: str, inputs: list[str], name: str, shape: tuple[int, ...], *, output: str | None = None, **attrs
    ) -> str:
        if name in {node.name for node in self._nodes}:
            raise ValueError(f"node {name!r} already exists")
        out = output or f"{name}_output_0"
        node = helper.make_node(op, inputs, [out], name=name, **attrs)
        self._nodes.append(node)
        self._shapes[out] = tuple(int(d) for d in shape)
        self._producer[out] = node
        return out


def channel_statistics(activations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and variance of ``(N, C, H, W)`` activations: batch-norm statistics from data."""
    return activations.mean(axis=(0, 2, 3)), activations.var(axis=(0, 2, 3))


def fit_logistic(features: np.ndarray, labels: np.ndarray, *, steps: int = 25) -> tuple[np.ndarray, float]:
    """Weights and bias of an L2-regularised logistic regression of ``labels`` on ``features`` (Newton steps).

    The features are standardised for the fit and the result mapped back, with the penalty of
    scikit-learn's default (``C=1``), so the read-out is what ``LogisticRegression()`` would give.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    mean, std = x.mean(0), x.std(0) + 1e-6
    design = np.hstack([(x - mean) / std, np.ones((len(x), 1))])
    penalty = np.eye(design.shape[1])
    penalty[-1, -1] = 0.0  # the intercept is not penalised
    theta = np.zeros(design.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(design @ theta)))
        gradient = design.T @ (p - y) + penalty @ theta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + penalty
        theta -= np.linalg.solve(hessian, gradient)
    weights = theta[:-1] / std
    return weights, float(theta[-1] - weights @ mean)
