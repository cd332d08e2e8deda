"""The model config (``model.toml``) a device maker writes next to their ONNX model.

It names the model, its task, labels and clinical thresholds, the input and
output tensors, the preprocessing spec, any pre- and post-processing plugins
(:mod:`sdk.plugins`) and the accuracy gate the compiled model must pass. The
quantization toolchain copies it into the package manifest, so the runtime
reads exactly what the compiler was told.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from sdk.config_files import load_toml_model
from sdk.errors import ConfigError
from sdk.plugins import PluginKind, PluginRecord, PluginRef, get_registry
from sdk.preprocess_spec import PreprocessSpec

__all__ = [
    "AccuracyGate",
    "ModelConfig",
    "ModelInput",
    "ModelOutputs",
    "Postprocessing",
    "load_model_config",
    "resolve_plugins",
]

_SEMVER = re.compile(r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$")


class ModelInput(BaseModel):
    """The model's image input tensor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    dtype: Literal["float32"] = "float32"


class ModelOutputs(BaseModel):
    """Which output tensors carry what.

    Attributes:
        scores: the output holding one score per label, shape ``(N, len(labels))``.
        score_kind: ``probability`` if the model already applies sigmoid/softmax,
            ``logit`` if post-processing must.
        location: optional output with a normalised ``(row, column)`` in [0, 1]
            per image, saying roughly where the finding is.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    scores: str = Field(min_length=1)
    score_kind: Literal["probability", "logit"] = "probability"
    location: str | None = None


class AccuracyGate(BaseModel):
    """What a compiled model must achieve against the FP32 model to ship."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_agreement: float = Field(default=0.99, ge=0, le=1)
    max_flip_rate: float = Field(default=0.01, ge=0, le=1)
    max_auc_drop: float = Field(default=0.01, ge=0, le=1)


class Postprocessing(BaseModel):
    """Post-processing beyond the built-in thresholding: a device maker's plugin (:mod:`sdk.plugins`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    plugin: PluginRef | None = None


class ModelConfig(BaseModel):
    """Everything medge needs to know about a model besides its weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=64)
    version: str
    task: Literal["classification", "detection", "segmentation"]
    description: str = ""
    manufacturer: str = "unknown"
    labels: list[str] = Field(min_length=1)
    thresholds: dict[str, float]
    input: ModelInput
    outputs: ModelOutputs
    preprocessing: PreprocessSpec
    postprocessing: Postprocessing = Postprocessing()
    gate: AccuracyGate = AccuracyGate()

    @model_serializer(mode="wrap")
    def _omit_empty_postprocessing(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Without a plugin the manifest stays byte-for-byte what appliances without plugin support read.
        data: dict[str, Any] = handler(self)
        if self.postprocessing.plugin is None:
            data.pop("postprocessing", None)
        return data

    def plugins(self) -> dict[PluginKind, PluginRef]:
        """The plugins this model names, by kind."""
        found: dict[PluginKind, PluginRef] = {}
        if self.preprocessing.plugin is not None:
            found["preprocess"] = self.preprocessing.plugin
        if self.postprocessing.plugin is not None:
            found["postprocess"] = self.postprocessing.plugin
        return found

    @field_validator("version")
    @classmethod
    def _semver(cls, value: str) -> str:
        if not _SEMVER.match(value):
            raise ValueError(f"version must look like 1.2.3, got {value!r}")
        return value

    @model_validator(mode="after")
    def _thresholds_cover_labels(self) -> ModelConfig:
        missing = [label for label in self.labels if label not in self.thresholds]
        extra = [key for key in self.thresholds if key not in self.labels]
        if missing:
            raise ValueError(f"thresholds missing for labels {missing}")
        if extra:
            raise ValueError(f"thresholds given for unknown labels {extra}")
        for label, value in self.thresholds.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"threshold for {label!r} must be within [0, 1], got {value}")
        return self


def load_model_config(path: str | Path) -> ModelConfig:
    """Read and validate a ``model.toml``.

    A plugin it names must be installed here, from exactly one distribution
    (its code is not imported yet: that happens when it is first used).

    Raises:
        ConfigError: the file is missing, not TOML, or a field is invalid, or
            a plugin it names is not installed or is registered more than once.
    """
    config = load_toml_model(path, ModelConfig, "model config")
    try:
        for kind, ref in config.plugins().items():
            get_registry().record(kind, ref.name)
    except ConfigError as exc:
        raise ConfigError(exc.message, path=path, field=exc.field) from exc
    return config


def resolve_plugins(config: ModelConfig) -> list[PluginRecord]:
    """Make the hooks of every plugin ``config`` names and say which distribution provided each.

    The compiler calls this before calibration, so a missing plugin or one
    that refuses its settings stops the compile before any work, and records
    the result in the package.

    Raises:
        ConfigError: a plugin is not installed, is registered more than once,
            cannot be imported, or its factory refuses its settings.
    """
    registry = get_registry()
    records = []
    for kind, ref in config.plugins().items():
        if kind == "preprocess":
            registry.preprocess_hook(ref)
        else:
            registry.postprocess_hook(ref)
        records.append(registry.record(kind, ref.name))
    return records
