"""ONNX Runtime engine: the profile's execution providers in order, loud about fall-backs."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

from runtime.engines.base import Placement
from sdk.errors import EngineError

__all__ = ["OnnxRuntimeEngine"]

log = logging.getLogger(__name__)


class OnnxRuntimeEngine:
    """Runs an ONNX model held in memory.

    Args:
        model: the ONNX bytes.
        providers: execution providers in preference order (from the profile).
        threads: intra-op threads (0: ONNX Runtime's default).

    Raises:
        EngineError: the model cannot be loaded or no wanted provider exists.
    """

    def __init__(self, model: bytes, providers: list[str], *, threads: int = 0, name: str = "model") -> None:
        available = ort.get_available_providers()
        usable = [provider for provider in providers if provider in available]
        if not usable:
            raise EngineError(f"{name}: none of the providers {providers} is available here (have {available})")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(model, sess_options=options, providers=usable)
        except Exception as exc:  # ORT raises its own pybind exception types
            raise EngineError(f"{name}: ONNX Runtime cannot load the model: {exc}") from exc
        in_use = self._session.get_providers()
        degraded = in_use[0] != providers[0]
        reason = f"{providers[0]} is not available; running on {in_use[0]}" if degraded else None
        if degraded:
            log.warning("%s: %s", name, reason)
        self.placement = Placement("onnxruntime", in_use[0], in_use, list(providers), degraded=degraded, reason=reason)
        self._outputs = [output.name for output in self._session.get_outputs()]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self._session.run(self._outputs, dict(inputs))
        except Exception as exc:
            raise EngineError(f"ONNX Runtime failed to run the model: {exc}") from exc
        return dict(zip(self._outputs, values, strict=True))

    def close(self) -> None:
        del self._session
