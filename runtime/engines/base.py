"""The engine interface: ``load``, ``run(inputs)``, ``close``; nothing vendor-specific leaks above it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

__all__ = ["Engine", "Placement"]


@dataclass(frozen=True)
class Placement:
    """Where an engine runs a model, for health reports and fall-back checks.

    Attributes:
        engine: ``onnxruntime`` or ``openvino``.
        device: the device or first execution provider actually in use.
        providers: providers (ORT) or devices (OpenVINO) in the order tried.
        wanted: what the profile asked for, in preference order.
        nodes_by_provider: node counts per provider, where the engine tells.
        degraded: true when the first choice of the profile is not in use.
        reason: why it is degraded.
    """

    engine: str
    device: str
    providers: list[str]
    wanted: list[str]
    nodes_by_provider: dict[str, int] = field(default_factory=dict)
    degraded: bool = False
    reason: str | None = None


class Engine(Protocol):
    """A loaded model that turns named input arrays into named output arrays."""

    placement: Placement

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; raises :class:`~sdk.errors.EngineError` on failure."""
        ...

    def close(self) -> None:
        """Release the engine's resources."""
        ...
