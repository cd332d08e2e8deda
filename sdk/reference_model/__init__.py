"""The reference chest-CT nodule model shipped with medge.

A small CNN trained on phantom data only (see ``docs/reference-model.md``);
the demo, the quantization toolchain and the benchmarks use it when no other
model is given. Not for clinical use. Retrain with
``python -m sdk.reference_model.train --out sdk/reference_model``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["config_path", "onnx_path", "training_record_path"]

_HERE = Path(__file__).resolve().parent


def onnx_path() -> Path:
    """The FP32 ONNX file of the reference model."""
    return _HERE / "chest-ct-nodule.onnx"


def config_path() -> Path:
    """Its ``model.toml`` (load with :func:`sdk.model_config.load_model_config`)."""
    return _HERE / "model.toml"


def training_record_path() -> Path:
    """``training_record.json``: data, seeds, timings, held-out AUC and the ONNX file's sha256."""
    return _HERE / "training_record.json"
