"""Errors of the quantization toolchain that callers act on.

::

    MedgeError (sdk.errors)
    ├── ModelCheckError         the ONNX model cannot be compiled for this profile (names node and op)
    ├── CalibrationError        the calibration folder cannot give a usable calibration set
    └── QuantizationGateError   the compiled model does not agree with FP32 well enough: no package
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sdk.errors import MedgeError
from sdk.manifest import FidelityReport

__all__ = ["CalibrationError", "ModelCheckError", "QuantizationGateError"]


class QuantizationGateError(MedgeError):
    """A quantized model fails the accuracy gate with every setting tried, float fall-back included.

    Nothing is written when this is raised: a model that does not agree with
    its FP32 original must not ship.

    Attributes:
        report: the fidelity report of the best model found.
        failures: the gate criteria it misses, as sentences.
        worst_layers: node name -> why it costs accuracy, worst first.
        attempts: a summary of every setting tried, in order.
    """

    def __init__(
        self,
        message: str,
        *,
        report: FidelityReport,
        failures: Sequence[str],
        worst_layers: Mapping[str, str],
        attempts: Sequence[Mapping[str, Any]] = (),
        path: str | Path | None = None,
    ) -> None:
        self.report = report
        self.failures = list(failures)
        self.worst_layers = dict(worst_layers)
        self.attempts = [dict(a) for a in attempts]
        super().__init__(message, path=path)


class ModelCheckError(MedgeError):
    """The ONNX model cannot be compiled for the chosen device profile.

    Raised by the checks that run before any calibration or quantization: the
    file is not ONNX, its opset or an operator is not supported by the
    profile's engine, or its inputs and outputs do not match the model config.
    The caller fixes the model (re-export it, replace the op) or the config.

    Attributes:
        node: the graph node concerned, if one is.
        op: the operator type concerned (``domain:Op`` outside the default domain), if one is.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        node: str | None = None,
        op: str | None = None,
        field: str | None = None,
    ) -> None:
        self.node = node
        self.op = op
        super().__init__(message, path=path, field=field)


class CalibrationError(MedgeError):
    """The calibration folder does not give enough usable slices for the model.

    The folder is missing, holds no DICOM, holds none of the model's modality,
    or too few of its instances can be preprocessed. The caller points
    ``--calib`` at other or more studies.

    Attributes:
        skipped: how many files or slices were left out, by reason.
    """

    def __init__(
        self, message: str, *, path: str | Path | None = None, skipped: Mapping[str, int] | None = None
    ) -> None:
        self.skipped = dict(skipped or {})
        super().__init__(message, path=path)
