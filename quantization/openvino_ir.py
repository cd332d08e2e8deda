"""OpenVINO IR: converting ONNX and serializing to the same bytes for the same graph.

OpenVINO and NNCF name the nodes they create from a process-wide counter
(``Constant_31379``) and record the source file's path in the IR, so the same
model serialized twice, or after other OpenVINO work in the same process,
gives different bytes. :func:`serialize_ir` renames those nodes by their
position in the graph and drops the path, so packages are reproducible.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from sdk.errors import EngineError

if TYPE_CHECKING:
    import openvino as ov

__all__ = ["convert_onnx", "convert_to_openvino_ir", "onnx_names", "serialize_ir"]

_AUTO_NAME = re.compile(r"^([A-Za-z][A-Za-z0-9]*)_\d+$")


def convert_onnx(onnx_path: Path) -> ov.Model:
    """Convert an ONNX file to an OpenVINO model, translating conversion failures."""
    import openvino as ov

    try:
        return ov.convert_model(str(onnx_path))
    except Exception as exc:  # OpenVINO raises its own exception types for unsupported graphs
        raise EngineError(f"OpenVINO cannot convert the model: {exc}", path=onnx_path) from exc


def onnx_names(onnx_path: Path) -> set[str]:
    """Node, initializer, input and output names of the ONNX graph: names that must survive renaming."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    names = {node.name for node in graph.node}
    names.update(output for node in graph.node for output in node.output)
    names.update(init.name for init in graph.initializer)
    names.update(value.name for value in [*graph.input, *graph.output])
    names.discard("")
    return names


def _canonical_names(model: ov.Model, keep: set[str]) -> None:
    """Rename counter-named nodes by graph position, so that names do not depend on what ran before."""
    ops = model.get_ordered_ops()
    renamed = [op for op in ops if _AUTO_NAME.match(op.get_friendly_name()) and op.get_friendly_name() not in keep]
    taken = {op.get_friendly_name() for op in ops} - {op.get_friendly_name() for op in renamed}
    position = 0
    for op in renamed:
        prefix = op.get_friendly_name().rpartition("_")[0]
        while (name := f"{prefix}_{position}") in taken:
            position += 1
        taken.add(name)
        op.set_friendly_name(name)
        position += 1


def serialize_ir(
    model: ov.Model, *, compress_to_fp16: bool = False, keep_names: Iterable[str] = ()
) -> dict[str, bytes]:
    """Serialize an OpenVINO model to ``model.xml``/``model.bin`` bytes, the same bytes for the same graph.

    Nodes OpenVINO or NNCF named from the process-wide counter (``Constant_31379``) are renamed by
    their position in the graph; names in ``keep_names`` (the ONNX model's own) are never touched.
    The conversion parameters (the source file's path) are dropped from ``rt_info``. The model is
    changed in place.
    """
    import openvino as ov

    _canonical_names(model, set(keep_names))
    info = model.get_rt_info()
    if "conversion_parameters" in info:
        del info["conversion_parameters"]
    with tempfile.TemporaryDirectory(prefix="medge-ir-") as tmp:
        xml = Path(tmp) / "model.xml"
        ov.save_model(model, str(xml), compress_to_fp16=compress_to_fp16)
        return {"model.xml": xml.read_bytes(), "model.bin": xml.with_suffix(".bin").read_bytes()}


def convert_to_openvino_ir(onnx_path: Path, *, compress_to_fp16: bool = False) -> dict[str, bytes]:
    """An ONNX file as OpenVINO IR bytes (``model.xml``, ``model.bin``), reproducibly."""
    return serialize_ir(convert_onnx(onnx_path), compress_to_fp16=compress_to_fp16, keep_names=onnx_names(onnx_path))
