"""FP32 packages: the model as trained, converted for the profile's engine and signed.

The baseline every quantized package is measured against, and what ships
where quantization does not pay off.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_profiles import DeviceProfile
from quantization.packaging import convert_to_openvino_ir, package_model
from sdk.manifest import Manifest
from sdk.model_config import ModelConfig

__all__ = ["package_fp32"]


def package_fp32(
    onnx_path: Path,
    config: ModelConfig,
    profile: DeviceProfile,
    private_key: Ed25519PrivateKey,
    out: Path,
    golden_inputs: np.ndarray,
) -> Manifest:
    """Package ``onnx_path`` unquantized for ``profile`` and sign it.

    ONNX Runtime profiles ship the ONNX file as is; OpenVINO profiles ship the
    converted IR with FP32 weights.
    """
    started = time.monotonic()
    if profile.engine == "openvino":
        files = convert_to_openvino_ir(onnx_path)
        method = "fp32: OpenVINO IR conversion"
    else:
        files = {"model.onnx": onnx_path.read_bytes()}
        method = "fp32: ONNX as trained"
    return package_model(
        onnx_path=onnx_path,
        engine_name=profile.engine,
        engine_files=files,
        config=config,
        profile_id=profile.id,
        preferences=profile.preferences,
        precision="fp32",
        private_key=private_key,
        out=out,
        golden_inputs=golden_inputs,
        method=method,
        started=started,
    )
