"""OpenVINO engine: the profile's devices in order (NPU, GPU, CPU ...), IR read from memory."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from runtime.engines.base import Placement
from sdk.errors import EngineError

__all__ = ["OpenVinoEngine"]

log = logging.getLogger(__name__)


class OpenVinoEngine:
    """Runs an OpenVINO IR (``model.xml`` + ``model.bin``) held in memory.

    Args:
        xml: the IR's XML bytes.
        weights: the IR's ``.bin`` bytes.
        devices: OpenVINO devices in preference order (from the profile).
        precision: the package's precision. OpenVINO's CPU plugin runs FP32 models
            in bfloat16 on AMX CPUs unless told not to, which moves outputs away
            from what the package was validated with; FP32/INT8 packages pin ``f32``.
        threads: inference threads (0: OpenVINO's default).
        cache_dir: where OpenVINO may cache compiled blobs (faster restarts on GPU/NPU).

    Raises:
        EngineError: OpenVINO is missing, the IR is unreadable, or no wanted device exists.
    """

    def __init__(
        self,
        xml: bytes,
        weights: bytes,
        devices: list[str],
        *,
        precision: str = "fp32",
        threads: int = 0,
        cache_dir: Path | None = None,
        name: str = "model",
    ) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise EngineError(f"{name}: the package needs OpenVINO; install medge[openvino]") from exc
        core = ov.Core()
        available = core.available_devices
        usable = [device for device in devices if any(have.split(".")[0] == device for have in available)]
        if not usable:
            raise EngineError(f"{name}: none of the OpenVINO devices {devices} is available here (have {available})")
        device = usable[0]
        config: dict[str, object] = {}
        if precision != "fp16":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if threads and device == "CPU":
            config["INFERENCE_NUM_THREADS"] = threads
        if cache_dir is not None:
            core.set_property({"CACHE_DIR": str(cache_dir)})
        try:
            model = core.read_model(xml.decode(), ov.Tensor(np.frombuffer(weights, dtype=np.uint8).copy()))
            self._compiled = core.compile_model(model, device, config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise EngineError(f"{name}: OpenVINO cannot load the model on {device}: {exc}") from exc
        degraded = device != devices[0]
        reason = f"{devices[0]} is not available; running on {device}" if degraded else None
        if degraded:
            log.warning("%s: %s", name, reason)
        self.placement = Placement("openvino", device, usable, list(devices), degraded=degraded, reason=reason)
        self._request = self._compiled.create_infer_request()
        self._outputs = [output.get_any_name() for output in self._compiled.outputs]
        self._warm_up()

    def _warm_up(self) -> None:
        """One inference on zeros at load, so the first study does not pay for kernel selection."""
        feeds = {}
        for port in self._compiled.inputs:
            shape = [dim.get_length() if dim.is_static else 1 for dim in port.get_partial_shape()]
            feeds[port.get_any_name()] = np.zeros(shape, dtype=np.float32)
        self.run(feeds)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            result = self._request.infer(dict(inputs))
        except Exception as exc:
            raise EngineError(f"OpenVINO failed to run the model: {exc}") from exc
        return {name: np.asarray(result[index]) for index, name in enumerate(self._outputs)}

    def close(self) -> None:
        del self._request
        del self._compiled
