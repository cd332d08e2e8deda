"""ONNX Runtime engine: the profile's execution providers in order, loud about fall-backs."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtime.engines.base import Placement
from sdk.errors import EngineError

__all__ = ["OnnxRuntimeEngine"]

log = logging.getLogger(__name__)

# Nodes that do the arithmetic; others (shape, reshape, casts) may legitimately run on the CPU.
_COMPUTE_OPS = frozenset(
    {"Conv", "ConvTranspose", "Gemm", "MatMul", "QLinearConv", "QLinearMatMul", "MatMulInteger", "FusedConv"}
)


class OnnxRuntimeEngine:
    """Runs an ONNX model held in memory.

    Args:
        model: the ONNX bytes.
        providers: execution providers in preference order (from the profile).
        threads: intra-op threads (0: ONNX Runtime's default).
        warm_up: run one profiled inference at load: it picks kernels before the first real
            study, and the profile tells where ONNX Runtime placed each node.

    Raises:
        EngineError: the model cannot be loaded or no wanted provider exists.
    """

    def __init__(
        self, model: bytes, providers: list[str], *, threads: int = 0, name: str = "model", warm_up: bool = True
    ) -> None:
        available = ort.get_available_providers()
        usable = [provider for provider in providers if provider in available]
        if not usable:
            raise EngineError(f"{name}: none of the providers {providers} is available here (have {available})")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if warm_up:
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"medge-placement-{os.getpid()}")
        try:
            self._session = ort.InferenceSession(model, sess_options=options, providers=usable)
        except Exception as exc:  # ORT raises its own pybind exception types
            raise EngineError(f"{name}: ONNX Runtime cannot load the model: {exc}") from exc
        self._outputs = [output.name for output in self._session.get_outputs()]
        in_use = self._session.get_providers()
        nodes = self._profiled_warm_up() if warm_up else {}
        reasons = []
        if in_use[0] != providers[0]:
            reasons.append(f"{providers[0]} is not available; running on {in_use[0]}")
        on_cpu = nodes.get("CPUExecutionProvider", {})
        compute_on_cpu = sum(count for op, count in on_cpu.items() if op in _COMPUTE_OPS)
        if providers[0] != "CPUExecutionProvider" and in_use[0] == providers[0] and compute_on_cpu:
            reasons.append(f"{compute_on_cpu} compute node(s) fell back from {providers[0]} to the CPU")
        reason = "; ".join(reasons) or None
        if reason:
            log.warning("%s: %s", name, reason)
        self.placement = Placement(
            "onnxruntime",
            in_use[0],
            in_use,
            list(providers),
            nodes_by_provider={provider: sum(ops.values()) for provider, ops in nodes.items()},
            degraded=reason is not None,
            reason=reason,
        )

    def _profiled_warm_up(self) -> dict[str, dict[str, int]]:
        """Run once on zeros; return node counts per provider and op from ONNX Runtime's profile."""
        feeds = {}
        for arg in self._session.get_inputs():
            shape = [dim if isinstance(dim, int) and dim > 0 else 1 for dim in arg.shape]
            dtype = np.float16 if arg.type == "tensor(float16)" else np.float32
            feeds[arg.name] = np.zeros(shape, dtype=dtype)
        try:
            self._session.run(self._outputs, feeds)
        except Exception as exc:
            raise EngineError(f"ONNX Runtime failed its warm-up run: {exc}") from exc
        profile = Path(self._session.end_profiling())
        try:
            events = json.loads(profile.read_text())
        except (OSError, ValueError):
            return {}
        finally:
            profile.unlink(missing_ok=True)
        placed: dict[str, dict[str, int]] = {}
        for event in events:
            args = event.get("args", {}) if isinstance(event, dict) else {}
            if (
                event.get("cat") == "Node"
                and str(event.get("name", "")).endswith("_kernel_time")
                and "provider" in args
            ):
                per_op = placed.setdefault(args["provider"], {})
                per_op[args.get("op_name", "?")] = per_op.get(args.get("op_name", "?"), 0) + 1
        return placed

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self._session.run(self._outputs, dict(inputs))
        except Exception as exc:
            raise EngineError(f"ONNX Runtime failed to run the model: {exc}") from exc
        return dict(zip(self._outputs, values, strict=True))

    def close(self) -> None:
        del self._session
