"""The device profile schema: what one target board offers and what its engine needs.

A profile (``device_profiles/<id>.toml``) tells the quantization toolchain
which engine, precision and quantization scheme to compile for, and tells the
runtime which execution providers (ONNX Runtime) or devices (OpenVINO) to try,
in order, with how many threads, how much memory and which batch sizes.

Cross-field rules are checked at load and reported on the field that breaks
them (a profile is never silently corrected): provider names must belong to
the engine, the default precision must be supported, INT8 needs a
quantization scheme the engine accepts (TensorRT: symmetric INT8 QDQ with
zero points 0), the batch default must not exceed its maximum.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

__all__ = [
    "ONNXRUNTIME_PROVIDERS",
    "OPENVINO_DEVICES",
    "AcceleratorKind",
    "BatchLimits",
    "CalibrationMethod",
    "CpuArch",
    "DeviceProfile",
    "EngineName",
    "Int8Hints",
    "Precision",
    "QuantizationScheme",
]

CpuArch = Literal["x86_64", "aarch64"]
EngineName = Literal["onnxruntime", "openvino"]
Precision = Literal["fp32", "fp16", "int8"]
CalibrationMethod = Literal["minmax", "entropy", "percentile"]
AcceleratorKind = Literal["none", "nvidia-gpu", "intel-gpu", "intel-npu"]
"""The accelerator that runs the model first; ``none`` for CPU-only profiles."""

ONNXRUNTIME_PROVIDERS: frozenset[str] = frozenset(
    {
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "MIGraphXExecutionProvider",
        "ROCMExecutionProvider",
        "OpenVINOExecutionProvider",
        "DnnlExecutionProvider",
        "QNNExecutionProvider",
        "NnapiExecutionProvider",
        "CoreMLExecutionProvider",
        "DmlExecutionProvider",
        "XnnpackExecutionProvider",
        "ACLExecutionProvider",
        "ArmNNExecutionProvider",
        "CPUExecutionProvider",
    }
)
"""ONNX Runtime execution providers a profile may name (those that run a model on a device)."""

OPENVINO_DEVICES: frozenset[str] = frozenset({"CPU", "GPU", "NPU"})
"""OpenVINO device families; a numbered device (``GPU.1``) is accepted too."""

_CPU_PREFERENCES = frozenset({"CPUExecutionProvider", "CPU"})
_TENSORRT = "TensorrtExecutionProvider"
_NVIDIA_PROVIDERS = frozenset({_TENSORRT, "CUDAExecutionProvider"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QuantizationScheme(_Strict):
    """How INT8 must be quantized for this profile's engine.

    Attributes:
        format: ``QDQ`` (QuantizeLinear/DequantizeLinear pairs; the only form
            TensorRT reads), ``QOperator`` (ONNX Runtime CPU only) or
            ``FakeQuantize`` (OpenVINO IR as NNCF writes it).
        activation_dtype: ``int8`` or ``uint8`` activations (TensorRT: int8).
        weight_dtype: ``int8`` or ``uint8`` weights.
        activation_symmetric: activations quantized around zero.
        weight_symmetric: weights quantized around zero.
        weight_per_channel: one scale per output channel of each weight.
        zero_point_zero: every zero point is 0 (TensorRT refuses any other);
            for ``uint8`` activations that means ranges starting at 0.
        calibration_method: how activation ranges are estimated.
        percentile: the percentile kept by ``percentile`` calibration.

    For OpenVINO, symmetric activations map to NNCF's ``performance`` preset and
    asymmetric ones to ``mixed``.
    """

    format: Literal["QDQ", "QOperator", "FakeQuantize"]
    activation_dtype: Literal["int8", "uint8"] = "int8"
    weight_dtype: Literal["int8", "uint8"] = "int8"
    activation_symmetric: bool
    weight_symmetric: bool = True
    weight_per_channel: bool
    zero_point_zero: bool
    calibration_method: CalibrationMethod = "minmax"
    percentile: float = Field(default=99.999, gt=90.0, le=100.0)

    @field_validator("zero_point_zero")
    @classmethod
    def _zero_points_need_symmetry(cls, value: bool, info: ValidationInfo) -> bool:
        if not value:
            return value
        if info.data.get("activation_symmetric") is False or info.data.get("weight_symmetric") is False:
            raise ValueError("zero_point_zero = true needs activation_symmetric and weight_symmetric = true")
        return value


class Int8Hints(_Strict):
    """When INT8 is worth it on this profile's hardware.

    Attributes:
        cpu_flags: CPU feature flags (``/proc/cpuinfo`` names) any one of which
            makes INT8 faster than FP32 on the CPU, e.g. ``avx512_vnni``,
            ``amx_int8`` (x86) or ``asimddp`` (arm64 dot product).
        accelerator_units: the accelerator units that run INT8 natively, e.g.
            ``tensor-cores``, ``dla``, ``npu``; INT8 pays off when the
            profile's accelerator is present on the host.
        note: a sentence a field tech can read.
    """

    cpu_flags: list[str] = []
    accelerator_units: list[str] = Field(default_factory=list, validate_default=True)
    note: str = ""

    @field_validator("accelerator_units")
    @classmethod
    def _something_to_go_on(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if not value and not info.data.get("cpu_flags"):
            raise ValueError("name the cpu_flags or the accelerator_units that make INT8 pay off")
        return value


class BatchLimits(_Strict):
    """Batch sizes the runtime may use on this board."""

    default: int = Field(ge=1, le=1024)
    max: int = Field(ge=1, le=1024)

    @field_validator("max")
    @classmethod
    def _default_within_max(cls, value: int, info: ValidationInfo) -> int:
        default = info.data.get("default")
        if default is not None and default > value:
            raise ValueError(f"batch default ({default}) must not exceed max ({value})")
        return value


class DeviceProfile(_Strict):
    """One target board: hardware, engine, preferences, precisions and limits.

    Fields are declared in dependency order so that each cross-field check
    runs on, and is reported against, the later field.

    Attributes:
        id: the profile id; equals the TOML file's stem.
        name: a human-readable name.
        vendor: who makes the board or the processor.
        board: the board, module or class of machine.
        description: what the profile is for and what software it assumes.
        cpu_arch: ``x86_64`` or ``aarch64``.
        cpu: the CPU, in words.
        cpu_cores: CPU cores of the board (``None`` for generic profiles).
        memory_mb: memory of the board (``None`` for generic profiles).
        device_models: substrings of the board's device-tree model
            (``/proc/device-tree/model``) that identify it, for detection.
        engine: ``onnxruntime`` or ``openvino``.
        execution_providers: ONNX Runtime providers in preference order.
        devices: OpenVINO devices in preference order.
        accelerator: the accelerator, in words (``none`` for CPU only).
        accelerator_kind: which kind of accelerator runs the model first.
        precisions: precisions the board runs well.
        default_precision: what ``medge compile`` builds unless told otherwise.
        quantization: the INT8 scheme the engine needs (required with ``int8``).
        int8_hints: when INT8 pays off (required with ``int8``).
        memory_budget_mb: memory the model and its engine may take.
        default_threads: engine threads (0: the engine's own default).
        batch: batch sizes.
    """

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*[a-z0-9]$", max_length=64)
    name: str = Field(min_length=1)
    vendor: str = Field(min_length=1)
    board: str = Field(min_length=1)
    description: str = ""
    cpu_arch: CpuArch
    cpu: str = Field(min_length=1)
    cpu_cores: int | None = Field(default=None, ge=1, le=1024)
    memory_mb: int | None = Field(default=None, ge=256)
    device_models: list[str] = []
    engine: EngineName
    execution_providers: list[str] = Field(default_factory=list, validate_default=True)
    devices: list[str] = Field(default_factory=list, validate_default=True)
    accelerator: str = Field(pattern=r"^[a-z0-9][a-z0-9+.-]*$")
    accelerator_kind: AcceleratorKind
    precisions: list[Precision] = Field(min_length=1)
    default_precision: Precision
    quantization: QuantizationScheme | None = Field(default=None, validate_default=True)
    int8_hints: Int8Hints | None = Field(default=None, validate_default=True)
    memory_budget_mb: int = Field(ge=64)
    default_threads: int = Field(ge=0, le=1024)
    batch: BatchLimits

    @property
    def preferences(self) -> list[str]:
        """The engine's providers (ONNX Runtime) or devices (OpenVINO), in preference order."""
        return list(self.execution_providers if self.engine == "onnxruntime" else self.devices)

    @property
    def supports_int8(self) -> bool:
        """True when the profile lists INT8 among its precisions."""
        return "int8" in self.precisions

    @field_validator("execution_providers")
    @classmethod
    def _providers_fit_engine(cls, value: list[str], info: ValidationInfo) -> list[str]:
        engine = info.data.get("engine")
        if engine == "openvino":
            if value:
                raise ValueError("execution_providers are ONNX Runtime's; an openvino profile lists devices")
            return value
        if engine != "onnxruntime":
            return value
        if not value:
            raise ValueError("an onnxruntime profile lists its execution_providers in preference order")
        unknown = [name for name in value if name not in ONNXRUNTIME_PROVIDERS]
        if unknown:
            raise ValueError(
                f"{', '.join(map(repr, unknown))} is not an ONNX Runtime execution provider "
                f"(valid: {', '.join(sorted(ONNXRUNTIME_PROVIDERS))})"
            )
        _check_order(value, "CPUExecutionProvider")
        return value

    @field_validator("devices")
    @classmethod
    def _devices_fit_engine(cls, value: list[str], info: ValidationInfo) -> list[str]:
        engine = info.data.get("engine")
        if engine == "onnxruntime":
            if value:
                raise ValueError("devices are OpenVINO's; an onnxruntime profile lists execution_providers")
            return value
        if engine != "openvino":
            return value
        if not value:
            raise ValueError("an openvino profile lists its devices in preference order")
        unknown = [name for name in value if name.split(".", 1)[0] not in OPENVINO_DEVICES]
        if unknown:
            valid = ", ".join(sorted(OPENVINO_DEVICES))
            raise ValueError(f"{', '.join(map(repr, unknown))} is not an OpenVINO device (valid: {valid})")
        _check_order(value, "CPU")
        return value

    @field_validator("accelerator_kind")
    @classmethod
    def _kind_fits_preferences(cls, value: str, info: ValidationInfo) -> str:
        preferences = info.data.get("execution_providers") or info.data.get("devices")
        if not preferences:
            return value  # already reported on the providers/devices field
        accelerated = [name for name in preferences if name not in _CPU_PREFERENCES]
        if value == "none" and accelerated:
            raise ValueError(f"accelerator_kind 'none' but the preferences name accelerators {accelerated}")
        if value != "none" and not accelerated:
            raise ValueError(f"accelerator_kind {value!r} but the preferences name only the CPU")
        if value == "nvidia-gpu" and not _NVIDIA_PROVIDERS & set(preferences):
            raise ValueError("accelerator_kind 'nvidia-gpu' needs TensorrtExecutionProvider or CUDAExecutionProvider")
        if info.data.get("accelerator") == "none" and value != "none":
            raise ValueError(f"accelerator is 'none' but accelerator_kind is {value!r}")
        return value

    @field_validator("precisions")
    @classmethod
    def _unique_precisions(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"precisions must not repeat, got {value}")
        return value

    @field_validator("default_precision")
    @classmethod
    def _default_is_supported(cls, value: str, info: ValidationInfo) -> str:
        precisions = info.data.get("precisions")
        if precisions is not None and value not in precisions:
            raise ValueError(f"default_precision {value!r} is not among precisions {precisions}")
        return value

    @field_validator("quantization")
    @classmethod
    def _scheme_fits_engine(cls, value: QuantizationScheme | None, info: ValidationInfo) -> QuantizationScheme | None:
        precisions = info.data.get("precisions")
        if precisions is None:
            return value
        if "int8" not in precisions:
            if value is not None:
                raise ValueError("a quantization scheme is given but int8 is not among precisions")
            return value
        if value is None:
            raise ValueError("int8 is among precisions: give the [quantization] scheme the engine needs")
        engine = info.data.get("engine")
        if engine == "openvino" and value.format != "FakeQuantize":
            raise ValueError(f"openvino reads INT8 as FakeQuantize (NNCF), not {value.format}")
        if engine == "onnxruntime" and value.format == "FakeQuantize":
            raise ValueError("onnxruntime reads INT8 as QDQ or QOperator, not FakeQuantize")
        if _TENSORRT in (info.data.get("execution_providers") or []):
            problems = []
            if value.format != "QDQ":
                problems.append("format = 'QDQ'")
            if value.activation_dtype != "int8" or value.weight_dtype != "int8":
                problems.append("int8 activation_dtype and weight_dtype")
            if not (value.activation_symmetric and value.weight_symmetric and value.zero_point_zero):
                problems.append("symmetric activations and weights with zero_point_zero = true")
            if problems:
                raise ValueError(f"TensorRT INT8 needs {'; '.join(problems)}")
        return value

    @field_validator("int8_hints")
    @classmethod
    def _hints_with_int8(cls, value: Int8Hints | None, info: ValidationInfo) -> Int8Hints | None:
        precisions = info.data.get("precisions")
        if precisions is None:
            return value
        if "int8" in precisions and value is None:
            raise ValueError("int8 is among precisions: give [int8_hints] saying when INT8 pays off")
        if "int8" not in precisions and value is not None:
            raise ValueError("int8_hints given but int8 is not among precisions")
        return value

    @field_validator("memory_budget_mb")
    @classmethod
    def _budget_fits_memory(cls, value: int, info: ValidationInfo) -> int:
        memory = info.data.get("memory_mb")
        if memory is not None and value > memory:
            raise ValueError(f"memory_budget_mb ({value}) exceeds the board's memory_mb ({memory})")
        return value

    @field_validator("default_threads")
    @classmethod
    def _threads_fit_cores(cls, value: int, info: ValidationInfo) -> int:
        cores = info.data.get("cpu_cores")
        if cores is not None and value > cores:
            raise ValueError(f"default_threads ({value}) exceeds the board's cpu_cores ({cores})")
        return value


def _check_order(preferences: list[str], cpu: str) -> None:
    """Refuse repeats, and a CPU entry anywhere but last (the engines fall back to it last anyway)."""
    repeated = sorted({name for name in preferences if preferences.count(name) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} listed more than once")
    if cpu in preferences and preferences[-1] != cpu:
        raise ValueError(f"{cpu} must come last: it is the fall-back")
