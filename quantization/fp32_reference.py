"""The FP32 model a package was compiled from, on the package's own engine: the reference of ``medge bench``.

Lives in the toolchain because turning ONNX into OpenVINO IR is the
toolchain's job (:func:`quantization.openvino_ir.convert_to_openvino_ir`).
"""

from __future__ import annotations

from pathlib import Path

from runtime.engines import Engine
from runtime.engines.onnxruntime_engine import OnnxRuntimeEngine
from runtime.engines.openvino_engine import OpenVinoEngine
from sdk.package import ModelPackage, open_package

__all__ = ["fp32_reference_engine", "load_fp32_engine"]


def fp32_reference_engine(package: ModelPackage, onnx_path: Path, preferences: list[str], threads: int) -> Engine:
    """The FP32 ONNX model on the package's own engine (ONNX Runtime or OpenVINO), for a fair ratio."""
    if package.manifest.engine.name == "openvino":
        from quantization.openvino_ir import convert_to_openvino_ir

        files = convert_to_openvino_ir(onnx_path)
        return OpenVinoEngine(files["model.xml"], files["model.bin"], preferences, threads=threads, name="fp32")
    return OnnxRuntimeEngine(onnx_path.read_bytes(), preferences, threads=threads, name="fp32")


def load_fp32_engine(package_path: Path, onnx_path: Path, preferences: list[str], threads: int) -> tuple[Engine, str]:
    """The FP32 reference engine of a package (module level, so a spawned child can call it)."""
    package = open_package(package_path)
    return fp32_reference_engine(package, onnx_path, preferences, threads), package.manifest.inputs[0].name
