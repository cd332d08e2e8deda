"""The model config (``model.toml``) a device maker writes next to their ONNX model.

It names the model, its task, labels and clinical thresholds, the input and
output tensors, the preprocessing spec and the accuracy gate the compiled
model must pass. The quantization toolchain copies it into the package
manifest, so the runtime reads exactly what the compiler was told.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sdk.config_files import load_toml_model
from sdk.preprocess_spec import PreprocessSpec

__all__ = ["AccuracyGate", "ModelConfig", "ModelInput", "ModelOutputs", "load_model_config"]

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
    gate: AccuracyGate = AccuracyGate()

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

    Raises:
        ConfigError: the file is missing, not TOML, or a field is invalid.
    """
    return load_toml_model(path, ModelConfig, "model config")
