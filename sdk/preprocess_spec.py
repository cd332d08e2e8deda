"""The preprocessing spec: how a DICOM image becomes a model input tensor.

The same spec travels in the model config (``model.toml``), in the package
manifest and into :func:`sdk.preprocessing.preprocess`, which both the
quantization toolchain (calibration) and the runtime call.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from sdk.plugins import PluginRef

__all__ = ["Normalization", "PreprocessSpec", "Window"]


class Window(BaseModel):
    """An explicit intensity window, in the units after the modality LUT (HU for CT)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    center: float
    width: float = Field(gt=0)


class Normalization(BaseModel):
    """How the (windowed) intensities map to the model's numeric range.

    ``unit``: the window already maps onto [0, 1]; without a window, each
    frame's own min..max is mapped onto [0, 1]. ``zscore``: each frame is
    centred and scaled by its own mean and standard deviation. ``none``:
    values pass through. Then, in every mode, ``(x - mean) / std`` with this
    model's ``mean`` and ``std`` (identity by default).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["unit", "zscore", "none"] = "unit"
    mean: float = 0.0
    std: float = Field(default=1.0, gt=0)


class PreprocessSpec(BaseModel):
    """Preprocessing of one frame into a ``(C, H, W)`` or ``(H, W, C)`` array.

    Attributes:
        modalities: the DICOM Modality values this model accepts.
        rescale: apply the modality LUT (Rescale Slope/Intercept or a Modality LUT).
        window: an explicit window, ``"voi_lut"`` to use the dataset's own VOI
            LUT / Window Center & Width, or ``None`` for no windowing.
        invert_monochrome1: turn MONOCHROME1 images into MONOCHROME2 polarity.
        size: the model's input (rows, columns); images are resized bilinearly.
        normalization: how intensities map to the model's range.
        channels: 1, or 3 to replicate a grey image into three channels.
        layout: ``NCHW`` (channels first) or ``NHWC``.
        plugin: a device maker's preprocess plugin (:mod:`sdk.plugins`) applied
            to the tensor after the built-in steps, or ``None``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    modalities: list[str] = Field(min_length=1)
    rescale: bool = True
    window: Window | Literal["voi_lut"] | None = None
    invert_monochrome1: bool = True
    size: tuple[int, int]
    normalization: Normalization = Normalization()
    channels: Literal[1, 3] = 1
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    plugin: PluginRef | None = None

    @model_serializer(mode="wrap")
    def _omit_absent_plugin(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Without a plugin the manifest stays byte-for-byte what appliances without plugin support read.
        data: dict[str, Any] = handler(self)
        if self.plugin is None:
            data.pop("plugin", None)
        return data

    @model_validator(mode="after")
    def _check_size(self) -> PreprocessSpec:
        rows, cols = self.size
        if not (1 <= rows <= 8192 and 1 <= cols <= 8192):
            raise ValueError(f"size must be between 1 and 8192 pixels per side, got {self.size}")
        return self

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        """The model input shape this spec produces for ``batch`` images."""
        rows, cols = self.size
        if self.layout == "NCHW":
            return (batch, self.channels, rows, cols)
        return (batch, rows, cols, self.channels)
