"""A standard ResNet-50 built directly as an ONNX graph, with seeded He-initialised weights.

The benchmark needs a well-known large CNN next to the small reference model,
but torchvision cannot be installed beside the pinned torch, and torch itself
is only in the optional ``train`` extra. So the architecture is written out
here with ``onnx.helper``: torchvision's ``resnet50`` (v1.5: the stride sits
in each bottleneck's 3x3 convolution), i.e. a 7x7/2 stem, 3x3/2 max-pool,
bottleneck stages of [3, 4, 6, 3] blocks (widths 64, 128, 256, 512, expansion
4), global average pooling and a 1000-way fully connected layer. Batch
normalisation is folded into each convolution (weights scaled, a bias added),
which is what an exporter's constant folding produces for an inference model.

Weights are drawn with numpy from a seed: convolutions with He (Kaiming
normal, fan-out) initialisation as torchvision does, batch-norm statistics and
affine parameters from narrow random ranges around the identity. The network
is meaningless as a classifier; it exists to be timed and sized.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

__all__ = ["RESNET50_STAGES", "ResNetFigures", "build_resnet50", "measure", "save_resnet50"]

log = logging.getLogger(__name__)

RESNET50_STAGES: tuple[int, ...] = (3, 4, 6, 3)
"""Bottleneck blocks per stage, as in torchvision's ``resnet50``."""

OPSET = 17
_EXPANSION = 4
_BN_EPS = 1e-5


@dataclass(frozen=True)
class ResNetFigures:
    """What a built network costs.

    Attributes:
        macs: multiply-accumulates of one image (convolutions and the FC layer).
        parameters: weights and biases (after batch-norm folding).
        nodes: ONNX nodes.
        onnx_bytes: size of the serialized model.
    """

    macs: int
    parameters: int
    nodes: int
    onnx_bytes: int


class _Builder:
    """Accumulates nodes and initializers; draws weights from one generator in graph order."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def conv_bn(
        self,
        name: str,
        source: str,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        *,
        relu: bool,
    ) -> str:
        """A convolution with batch norm folded in, optionally followed by ReLU; returns the output name."""
        fan_out = out_channels * kernel * kernel
        weight = self.rng.normal(0.0, np.sqrt(2.0 / fan_out), (out_channels, in_channels, kernel, kernel))
        gamma = self.rng.uniform(0.5, 1.0, out_channels)
        beta = self.rng.normal(0.0, 0.05, out_channels)
        mean = self.rng.normal(0.0, 0.05, out_channels)
        var = self.rng.uniform(0.5, 1.5, out_channels)
        scale = gamma / np.sqrt(var + _BN_EPS)
        folded = (weight * scale[:, None, None, None]).astype(np.float32)
        bias = (beta - mean * scale).astype(np.float32)
        self.initializers += [
            numpy_helper.from_array(folded, f"{name}.weight"),
            numpy_helper.from_array(bias, f"{name}.bias"),
        ]
        pad = kernel // 2
        out = f"{name}.out"
        self.nodes.append(
            helper.make_node(
                "Conv",
                [source, f"{name}.weight", f"{name}.bias"],
                [out],
                name=name,
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[pad, pad, pad, pad],
            )
        )
        if not relu:
            return out
        self.nodes.append(helper.make_node("Relu", [out], [f"{name}.relu"], name=f"{name}.relu"))
        return f"{name}.relu"

    def bottleneck(self, name: str, source: str, in_channels: int, width: int, stride: int) -> str:
        """torchvision's ``Bottleneck``: 1x1 reduce, 3x3 (strided), 1x1 expand, shortcut, add, ReLU."""
        out_channels = width * _EXPANSION
        x = self.conv_bn(f"{name}.conv1", source, in_channels, width, 1, 1, relu=True)
        x = self.conv_bn(f"{name}.conv2", x, width, width, 3, stride, relu=True)
        x = self.conv_bn(f"{name}.conv3", x, width, out_channels, 1, 1, relu=False)
        shortcut = source
        if stride != 1 or in_channels != out_channels:
            shortcut = self.conv_bn(f"{name}.downsample", source, in_channels, out_channels, 1, stride, relu=False)
        self.nodes.append(helper.make_node("Add", [x, shortcut], [f"{name}.add"], name=f"{name}.add"))
        self.nodes.append(helper.make_node("Relu", [f"{name}.add"], [f"{name}.out"], name=f"{name}.relu"))
        return f"{name}.out"

    def linear(self, name: str, source: str, in_features: int, out_features: int) -> str:
        """A fully connected layer (``Gemm`` with transposed weight, as PyTorch exports ``nn.Linear``)."""
        bound = 1.0 / np.sqrt(in_features)
        weight = self.rng.uniform(-bound, bound, (out_features, in_features)).astype(np.float32)
        bias = self.rng.uniform(-bound, bound, out_features).astype(np.float32)
        self.initializers += [
            numpy_helper.from_array(weight, f"{name}.weight"),
            numpy_helper.from_array(bias, f"{name}.bias"),
        ]
        out = f"{name}.out"
        self.nodes.append(
            helper.make_node("Gemm", [source, f"{name}.weight", f"{name}.bias"], [out], name=name, transB=1)
        )
        return out


def build_resnet50(
    seed: int = 0,
    *,
    base_width: int = 64,
    image_size: int = 224,
    num_classes: int = 1000,
    stages: tuple[int, ...] = RESNET50_STAGES,
) -> onnx.ModelProto:
    """Build ResNet-50 as an ONNX model: input ``input`` ``(N, 3, S, S)``, output ``logits`` ``(N, classes)``.

    Args:
        seed: seeds every weight; the same seed gives the same bytes.
        base_width: channels of the stem and the first stage (64 for ResNet-50; smaller for smoke runs).
        image_size: the input's height and width (224 for ResNet-50).
        num_classes: outputs of the final layer.
        stages: bottleneck blocks per stage.
    """
    if base_width < 1 or image_size < 32 or num_classes < 1:
        raise ValueError("base_width, image_size and num_classes must be positive (image_size at least 32)")
    b = _Builder(seed)
    x = b.conv_bn("conv1", "input", 3, base_width, 7, 2, relu=True)
    b.nodes.append(
        helper.make_node(
            "MaxPool", [x], ["maxpool.out"], name="maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        )
    )
    x, channels = "maxpool.out", base_width
    for stage, blocks in enumerate(stages):
        width = base_width * 2**stage
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            x = b.bottleneck(f"layer{stage + 1}.{block}", x, channels, width, stride)
            channels = width * _EXPANSION
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], ["avgpool.out"], name="avgpool"))
    b.nodes.append(helper.make_node("Flatten", ["avgpool.out"], ["flatten.out"], name="flatten", axis=1))
    logits = b.linear("fc", "flatten.out", channels, num_classes)
    b.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))
    graph = helper.make_graph(
        b.nodes,
        "resnet50",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, image_size, image_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes])],
        b.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="medge-benchmarks", ir_version=8
    )
    model.doc_string = f"ResNet-50 (torchvision v1.5 architecture), BN folded, He-initialised weights, seed {seed}"
    onnx.checker.check_model(model)
    return model


def save_resnet50(
    path: str | Path, seed: int = 0, *, base_width: int = 64, image_size: int = 224, num_classes: int = 1000
) -> Path:
    """Build ResNet-50 (see :func:`build_resnet50`) and write it to ``path``."""
    path = Path(path)
    model = build_resnet50(seed, base_width=base_width, image_size=image_size, num_classes=num_classes)
    path.write_bytes(model.SerializeToString())
    return path


def measure(model: onnx.ModelProto) -> ResNetFigures:
    """MACs per image (Conv and Gemm, from inferred shapes at batch 1), parameters, nodes and bytes."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    first = fixed.graph.input[0].type.tensor_type.shape.dim[0]
    first.Clear()
    first.dim_value = 1
    inferred = shape_inference.infer_shapes(fixed)
    shapes = {
        vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
        for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
    }
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    macs = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            out_elements = int(np.prod(shapes[node.output[0]]))
            _, per_group, kh, kw = weights[node.input[1]]
            macs += out_elements * per_group * kh * kw
        elif node.op_type == "Gemm":
            macs += int(np.prod(weights[node.input[1]]))
    parameters = sum(int(np.prod(dims)) for dims in weights.values())
    return ResNetFigures(macs, parameters, len(model.graph.node), model.ByteSize())
