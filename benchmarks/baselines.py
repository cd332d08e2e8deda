"""What a device maker gets from the plain tools, with their defaults, on the same calibration slices as medge.

These are the references medge's packages are measured against: ONNX
Runtime's ``quantize_static`` (QDQ, per-channel weights, MinMax calibration,
default int8 types, no pre-processing) and NNCF's ``nncf.quantize`` on the IR
of ``openvino.convert_model`` (every argument left at its default).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from runtime.engines.base import Placement

__all__ = ["DefaultOpenVino", "plain_nncf", "plain_quantize_static"]

log = logging.getLogger(__name__)


def plain_quantize_static(onnx_path: Path, calib: np.ndarray, input_name: str, out: Path) -> Path:
    """``quantize_static(model, out, reader, quant_format=QDQ, per_channel=True)``, one slice per batch.

    Everything else is ONNX Runtime's default: MinMax calibration, int8
    activations and weights, symmetric weights, asymmetric activations, the
    default operator list and no ``quant_pre_process``.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class _Slices(CalibrationDataReader):
        def __init__(self) -> None:
            self._next = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._next >= len(calib):
                return None
            self._next += 1
            return {input_name: calib[self._next - 1 : self._next]}

    quantize_static(str(onnx_path), str(out), _Slices(), quant_format=QuantFormat.QDQ, per_channel=True)
    return out


def plain_nncf(onnx_path: Path, calib: np.ndarray, input_name: str) -> dict[str, bytes]:
    """``nncf.quantize(ov.convert_model(onnx), nncf.Dataset(slices))`` saved with ``ov.save_model`` defaults.

    Returns the IR as ``model.xml`` and ``model.bin`` bytes. NNCF's INFO log
    is muted for the call (it changes nothing in the result).
    """
    import nncf
    import openvino as ov

    nncf_logger = logging.getLogger("nncf")
    saved = nncf_logger.level
    nncf_logger.setLevel(logging.WARNING)
    try:
        dataset = nncf.Dataset([{input_name: calib[i : i + 1]} for i in range(len(calib))])
        model = nncf.quantize(ov.convert_model(str(onnx_path)), dataset)
    finally:
        nncf_logger.setLevel(saved)
    with tempfile.TemporaryDirectory(prefix="medge-bench-nncf-") as tmp:
        xml = Path(tmp) / "model.xml"
        ov.save_model(model, str(xml))
        return {"model.xml": xml.read_bytes(), "model.bin": xml.with_suffix(".bin").read_bytes()}


class DefaultOpenVino:
    """An IR compiled for the CPU with OpenVINO's defaults, as a plain user would run it.

    Unlike :class:`~runtime.engines.openvino_engine.OpenVinoEngine`, no
    inference precision is pinned: on CPUs with bfloat16 support (AVX512_BF16
    or AMX) OpenVINO then runs the layers left in float in bfloat16. Only the
    thread count is set, to match the other engines in a comparison.

    Attributes:
        precision: the inference precision OpenVINO chose (e.g. ``bf16``).
    """

    def __init__(self, files: Mapping[str, bytes], *, threads: int = 0) -> None:
        import openvino as ov

        core = ov.Core()
        weights = ov.Tensor(np.frombuffer(files["model.bin"], dtype=np.uint8).copy())
        model = core.read_model(files["model.xml"].decode(), weights)
        config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
        self._compiled = core.compile_model(model, "CPU", config)
        self._request = self._compiled.create_infer_request()
        self._outputs = [output.get_any_name() for output in self._compiled.outputs]
        hint = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        self.placement = Placement("openvino", "CPU", ["CPU"], ["CPU"])

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch."""
        result = self._request.infer(dict(inputs))
        return {name: np.asarray(result[index]) for index, name in enumerate(self._outputs)}

    def close(self) -> None:
        """Release the compiled model."""
        del self._request
        del self._compiled
