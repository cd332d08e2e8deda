"""The manifest of a model package (``manifest.json``): what the package is and how to run it.

The manifest is the signed part of a package. It carries the model config
unchanged (labels, thresholds, preprocessing, gate), the tensors, the engine
and precision, the target profile, the compile record, the fidelity report,
the golden samples and the SHA-256 of every other file in the package.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from sdk.config_files import config_error_from_validation
from sdk.errors import PackageFormatError
from sdk.input_statistics import InputStatistics
from sdk.model_config import ModelConfig
from sdk.plugins import PluginRecord

__all__ = [
    "FORMAT_VERSION",
    "CalibrationRecord",
    "CompileRecord",
    "EngineSpec",
    "FidelityReport",
    "GoldenSample",
    "Manifest",
    "TensorSpec",
]

FORMAT_VERSION = 1
"""The package format this code writes and the only one it reads."""

_SHA256_HEX = r"^[0-9a-f]{64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    """A model input or output tensor; a dimension is an int or a symbolic name (e.g. ``N``)."""

    name: str = Field(min_length=1)
    shape: list[int | str]
    dtype: str = "float32"


class EngineSpec(_Strict):
    """Which engine runs the package and which of its files it loads.

    Attributes:
        required_accelerator_nodes: for ONNX Runtime on an accelerator profile,
            the nodes that must not fall back to the CPU; the runtime refuses a
            silent fall-back.
    """

    name: Literal["onnxruntime", "openvino"]
    files: list[str] = Field(min_length=1)
    precision: Literal["fp32", "fp16", "int8", "mixed"]
    profile: str = Field(min_length=1)
    required_accelerator_nodes: list[str] = []


class CalibrationRecord(_Strict):
    """The calibration set a quantized package was made from."""

    size: int = Field(ge=0)
    sha256: str = Field(pattern=_SHA256_HEX)
    method: str


class CompileRecord(_Strict):
    """How, when and with what the package was made.

    Attributes:
        plugins: the distribution and version that provided each plugin the
            model config names; the runtime refuses the package without them.
    """

    toolchain: str
    versions: dict[str, str]
    created: datetime
    duration_s: float = Field(ge=0)
    method: str
    calibration: CalibrationRecord | None = None
    float_nodes: dict[str, str] = {}
    notes: list[str] = []
    plugins: list[PluginRecord] = []

    @model_serializer(mode="wrap")
    def _omit_no_plugins(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Without plugins the manifest stays byte-for-byte what appliances without plugin support read.
        data: dict[str, Any] = handler(self)
        if not self.plugins:
            data.pop("plugins", None)
        return data


class FidelityReport(_Strict):
    """The compiled model against the FP32 model on held-back samples."""

    samples: int = Field(ge=0)
    agreement: float = Field(ge=0, le=1)
    flip_rate: float = Field(ge=0, le=1)
    max_abs_delta: float = Field(ge=0)
    auc_reference: float | None = None
    auc_compiled: float | None = None
    details: dict[str, Any] = {}


class GoldenSample(_Strict):
    """An input and the outputs it must give on the device, within ``tolerance``.

    ``input`` and ``outputs`` name ``.npy`` files inside the package, gzip'd
    when their name ends in ``.gz``. Inputs are stored as float16 (they are
    most of a package's bytes besides the model) and fed to the engine as
    float32; the expected outputs were computed from exactly that input.
    """

    input: str
    outputs: dict[str, str]
    tolerance: float = Field(gt=0)


class Manifest(_Strict):
    """The signed description of a model package."""

    format_version: int
    model: ModelConfig
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    engine: EngineSpec
    compile: CompileRecord
    fidelity: FidelityReport | None = None
    golden: list[GoldenSample] = []
    input_statistics: InputStatistics | None = None
    extra: dict[str, Any] = {}
    files: dict[str, str] = {}

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != FORMAT_VERSION:
            raise ValueError(f"unknown package format version {value} (this medge reads version {FORMAT_VERSION})")
        return value

    @model_validator(mode="after")
    def _plugins_recorded(self) -> Manifest:
        recorded = {(record.kind, record.name) for record in self.compile.plugins}
        named = {(kind, ref.name) for kind, ref in self.model.plugins().items()}
        if recorded != named:
            raise ValueError(
                f"the compile record's plugins {sorted(recorded)} are not the model's plugins {sorted(named)}"
            )
        return self

    @field_validator("files")
    @classmethod
    def _hashes(cls, value: dict[str, str]) -> dict[str, str]:
        for name, digest in value.items():
            if not re.match(_SHA256_HEX, digest):
                raise ValueError(f"file {name!r} has no valid sha256")
        return value

    def to_bytes(self) -> bytes:
        """The canonical JSON encoding that is signed: sorted keys, UTF-8, newline-terminated."""
        return (json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "manifest.json") -> Manifest:
        """Parse and validate manifest bytes.

        Raises:
            PackageFormatError: not JSON, an unknown format version, or a bad field.
        """
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PackageFormatError(f"manifest is not valid JSON: {exc}", path=source) from exc
        if not isinstance(raw, dict):
            raise PackageFormatError("manifest is not a JSON object", path=source)
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise config_error_from_validation(exc, source, error=PackageFormatError) from exc
