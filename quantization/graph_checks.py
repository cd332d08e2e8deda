"""Checks an ONNX model must pass before ``medge compile`` spends time calibrating it.

Each check fails with a :class:`~quantization.errors.ModelCheckError` that
names the file, and the node and operator where one is to blame, so that a
device maker learns in a second, not after a ten-minute calibration, that
their model cannot run on the board they chose:

1. the file exists and is an ONNX model that ``onnx.checker`` accepts;
2. its default-domain opset is within what the profile's engine supports;
3. no node comes from a domain the engine does not implement;
4. the input the model config names exists, is float and has the layout the
   preprocessing spec produces; channel and spatial dimensions left symbolic
   are fixed from the spec (the batch dimension may stay symbolic); the
   outputs the config names exist and have plausible shapes;
5. every operator can be run by the engine: ONNX Runtime must find a CPU
   kernel for each node (a session is created), OpenVINO must convert each node
   and, where the profile's device is on this host, support it there.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import ModelProto, NodeProto, TensorProto, ValueInfoProto

from device_profiles import DeviceProfile
from quantization.errors import ModelCheckError
from sdk.manifest import TensorSpec
from sdk.model_config import ModelConfig

__all__ = ["ENGINE_MIN_OPSET", "CheckedModel", "check_model", "engine_opset_range"]

log = logging.getLogger(__name__)

ENGINE_MIN_OPSET = 7
"""Oldest default-domain opset accepted: ONNX Runtime guarantees nothing below 7, and QDQ needs far newer anyway."""

_ORT_FALLBACK_MAX_OPSET = 21
"""Used only when this ONNX Runtime build does not expose its schema registry (minimal builds)."""

_OPENVINO_MAX_OPSET: dict[tuple[int, int], int] = {(2026, 4): 27}
"""Newest ONNX opset of OpenVINO's ONNX frontend, by OpenVINO release (year, minor).

OpenVINO does not report it at run time: its frontend silently falls back to
the newest opset it knows, so a newer op would be converted with older
semantics. The value is the ``ONNX_OPSET_VERSION`` of the ONNX library the
release is built against; a release not listed uses the nearest listed one
below it (or the oldest listed one).
"""

_OPENVINO_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "org.openvinotoolkit"})
"""Domains OpenVINO's ONNX frontend has translators for (it converts a subset of each but the default)."""

_ORT_FALLBACK_DOMAINS = ("ai.onnx.ml", "com.microsoft")
_DEFAULT_DOMAINS = ("", "ai.onnx")
_ORT_MISSING_KERNEL = re.compile(
    r"Could not find an implementation for (?P<op>[\w.]+)\((?P<version>-?\d+)\) node with name '(?P<node>[^']*)'"
)
_ORT_UNREGISTERED = re.compile(r"(?P<domain>[\w.]*):(?P<op>\w+)\((?P<version>-?\d+)\) is not a registered function/op")
_OV_NO_RULE = re.compile(r"No conversion rule found for operations:\s*(?P<ops>[^\n]+)")
_CHECKER_CONTEXT = re.compile(r"Name:\s*(?P<node>\S*)\s+OpType:\s*(?P<op>\S+)")
_NO_OP_REGISTERED = re.compile(r"No Op registered for (?P<op>\S+) with domain_version of (?P<version>\d+)")
_OV_FAILED_TYPES = ("ONNXFrameworkNode", "NotSupportedONNXNode")
_OV_BOOKKEEPING = frozenset({"Parameter", "Result", "Constant"})
_MAX_LISTED = 8


@dataclass(frozen=True)
class CheckedModel:
    """A model that passed every check, possibly with its input dimensions fixed.

    Attributes:
        source: the ONNX file that was checked.
        model_bytes: the serialized model to compile: the source model, or a copy
            whose symbolic channel/spatial input dimensions were fixed from the config.
        changed: whether ``model_bytes`` differs from the source model.
        engine: the engine it was checked for (``onnxruntime`` or ``openvino``).
        opset: the default-domain opset.
        ir_version: the ONNX IR version.
        op_histogram: operator -> node count, most frequent first (``domain:Op``
            outside the default domain; nodes inside subgraphs count too).
        input: the image input, as the compiled model will declare it.
        outputs: every graph output.
        notes: what was noticed or changed, in sentences for the compile record.
    """

    source: Path
    model_bytes: bytes = field(repr=False)
    changed: bool
    engine: str
    opset: int
    ir_version: int
    op_histogram: dict[str, int]
    input: TensorSpec
    outputs: list[TensorSpec]
    notes: list[str]

    def load(self) -> ModelProto:
        """The checked model as an ONNX protobuf (a fresh copy on every call)."""
        return onnx.load_model_from_string(self.model_bytes)

    def save(self, path: str | Path) -> Path:
        """Write the checked model to ``path`` (tools such as ORT's quantizer and OpenVINO want a file)."""
        path = Path(path)
        path.write_bytes(self.model_bytes)
        return path


def check_model(onnx_path: str | Path, config: ModelConfig, profile: DeviceProfile) -> CheckedModel:
    """Check that ``onnx_path`` can be compiled for ``profile`` as ``config`` describes it.

    Args:
        onnx_path: the FP32 ONNX model.
        config: its model config (input and output names, preprocessing spec).
        profile: the target device profile (its engine decides what is supported).

    Returns:
        The checked model, with symbolic channel/spatial input dimensions fixed
        from the config where the model left them open.

    Raises:
        ModelCheckError: the file is missing or not ONNX, fails ``onnx.checker``,
            has an opset or an operator the engine does not support, or its inputs
            and outputs do not match the config.
    """
    path = Path(onnx_path)
    model = _load(path)
    _run_checker(model, path)
    opset = _default_opset(model, path)
    notes: list[str] = []
    _check_opset(model, opset, profile.engine, path, notes)
    _check_domains(model, profile.engine, path)
    changed = _check_input(model, config, profile, path, notes)
    _check_outputs(model, config, path)
    model_bytes = _serialize(model, path)
    if profile.engine == "openvino":
        _check_openvino(model_bytes, model, profile, path, notes)
    else:
        _check_onnxruntime(model_bytes, model, profile, path, notes)
    image = next(value for value in model.graph.input if value.name == config.input.name)
    checked = CheckedModel(
        source=path,
        model_bytes=model_bytes,
        changed=changed,
        engine=profile.engine,
        opset=opset,
        ir_version=int(model.ir_version),
        op_histogram=_op_histogram(model),
        input=_tensor_spec(image),
        outputs=[_tensor_spec(value) for value in model.graph.output],
        notes=notes,
    )
    log.info(
        "%s passed the %s checks: opset %d, %d nodes, input %s %s",
        path,
        profile.engine,
        opset,
        sum(checked.op_histogram.values()),
        checked.input.name,
        checked.input.shape,
    )
    return checked


def engine_opset_range(engine: str) -> tuple[int, int]:
    """The default-domain ONNX opsets ``engine`` supports, as (oldest, newest)."""
    if engine == "openvino":
        return ENGINE_MIN_OPSET, _openvino_max_opset()
    return ENGINE_MIN_OPSET, _onnxruntime_max_opset()


# --- loading and the ONNX checker ---------------------------------------------------------------------------------


def _load(path: Path) -> ModelProto:
    if not path.exists():
        raise ModelCheckError("ONNX model not found", path=path)
    if not path.is_file():
        raise ModelCheckError("not an ONNX model: it is a directory, not a file", path=path)
    try:
        model = onnx.load(str(path))
    except DecodeError as exc:
        raise ModelCheckError(
            f"not an ONNX model: {path.name} does not parse as an ONNX protobuf ({exc})", path=path
        ) from exc
    except (OSError, ValueError) as exc:
        # Missing or unreadable external-data files land here.
        raise ModelCheckError(f"cannot read the ONNX model or its external data: {exc}", path=path) from exc
    if not model.graph.node and not model.opset_import:
        # Protobuf parses some non-ONNX bytes (an empty file, some text) into an empty message.
        raise ModelCheckError(f"not an ONNX model: {path.name} holds no graph and no opset", path=path)
    return model


def _run_checker(model: ModelProto, path: Path) -> None:
    try:
        if model.ByteSize() < onnx.checker.MAXIMUM_PROTOBUF:
            onnx.checker.check_model(model)
        else:
            onnx.checker.check_model(str(path))  # the checker reads >2 GB models from their file
    except onnx.checker.ValidationError as exc:
        message = str(exc).strip()
        context = _CHECKER_CONTEXT.search(message)
        node = context.group("node") if context else None
        op = context.group("op") if context else None
        unknown = _NO_OP_REGISTERED.search(message)
        if unknown:
            raise ModelCheckError(
                f"node '{node or '?'}' uses '{unknown.group('op')}', which is not an ONNX operator at opset "
                f"{unknown.group('version')}",
                path=path,
                node=node,
                op=unknown.group("op"),
            ) from exc
        reason = " ".join(message.split("==> Context:")[0].split()) or type(exc).__name__
        where = f" (node '{node}', {op})" if context else ""
        raise ModelCheckError(
            f"the ONNX checker rejects the model{where}: {reason}", path=path, node=node, op=op
        ) from exc


def _default_opset(model: ModelProto, path: Path) -> int:
    versions = [int(entry.version) for entry in model.opset_import if entry.domain in _DEFAULT_DOMAINS]
    if not versions:
        raise ModelCheckError("the model imports no default-domain (ai.onnx) opset", path=path)
    return max(versions)


# --- opset and domains ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _onnxruntime_registry() -> dict[str, int]:
    """Domain -> newest opset in ONNX Runtime's own schema registry (empty when the build hides it)."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_c

        schemas = ort_c.get_all_operator_schema()
    except (ImportError, AttributeError, RuntimeError):
        return {}
    newest: dict[str, int] = {}
    for schema in schemas:
        newest[schema.domain] = max(newest.get(schema.domain, 0), int(schema.since_version))
    return newest


def _onnxruntime_max_opset() -> int:
    return _onnxruntime_registry().get("", _ORT_FALLBACK_MAX_OPSET)


def _openvino_max_opset() -> int:
    import openvino

    match = re.match(r"(\d+)\.(\d+)", openvino.__version__)
    release = (int(match.group(1)), int(match.group(2))) if match else max(_OPENVINO_MAX_OPSET)
    known = sorted(_OPENVINO_MAX_OPSET)
    at_or_below = [key for key in known if key <= release]
    return _OPENVINO_MAX_OPSET[at_or_below[-1] if at_or_below else known[0]]


def _check_opset(model: ModelProto, opset: int, engine: str, path: Path, notes: list[str]) -> None:
    oldest, newest = engine_opset_range(engine)
    supported = f"{engine} supports opsets {oldest} to {newest}"
    if opset < oldest:
        raise ModelCheckError(
            f"the model uses ONNX opset {opset}, older than {supported}: re-export it with a newer opset", path=path
        )
    if opset <= newest:
        return
    if engine != "openvino":
        raise ModelCheckError(
            f"the model uses ONNX opset {opset}, newer than {supported}: re-export it with opset {newest} or older",
            path=path,
        )
    # OpenVINO converts a newer model with the newest translators it has: that is only right for
    # operators whose definition has not changed since.
    changed = []
    for node in _all_nodes(model):
        if node.domain not in _DEFAULT_DOMAINS:
            continue
        try:
            since = onnx.defs.get_schema(node.op_type, opset, "").since_version
        except onnx.defs.SchemaError:
            continue  # reported by the checker or the conversion
        if since > newest:
            changed.append((node, since))
    if changed:
        node, since = changed[0]
        listed = ", ".join(f"'{n.name}' ({n.op_type}-{s})" for n, s in changed[:_MAX_LISTED])
        raise ModelCheckError(
            f"the model uses ONNX opset {opset}, newer than {supported}, and nodes {listed} use operator versions "
            f"newer than opset {newest}: re-export it with opset {newest} or older",
            path=path,
            node=node.name,
            op=node.op_type,
        )
    notes.append(
        f"the model's opset {opset} is newer than OpenVINO's ONNX frontend (opset {newest}), but none of its "
        f"operators changed after opset {newest}"
    )


def _check_domains(model: ModelProto, engine: str, path: Path) -> None:
    local_functions = {(function.domain, function.name) for function in model.functions}
    if engine == "openvino":
        known = set(_OPENVINO_DOMAINS)
    else:
        known = set(_onnxruntime_registry() or _ORT_FALLBACK_DOMAINS) | set(_DEFAULT_DOMAINS)
    foreign = [
        node
        for node in _all_nodes(model)
        if node.domain not in known and (node.domain, node.op_type) not in local_functions
    ]
    if not foreign:
        return
    first = foreign[0]
    listed = ", ".join(f"'{node.name}' ({node.domain}:{node.op_type})" for node in foreign[:_MAX_LISTED])
    more = f" and {len(foreign) - _MAX_LISTED} more" if len(foreign) > _MAX_LISTED else ""
    raise ModelCheckError(
        f"node {listed}{more} uses an operator from the custom domain '{first.domain}', which {engine} does not "
        "implement: replace it with standard ONNX operators",
        path=path,
        node=first.name,
        op=f"{first.domain}:{first.op_type}",
    )


# --- inputs and outputs ---------------------------------------------------------------------------------------------


def _check_input(model: ModelProto, config: ModelConfig, profile: DeviceProfile, path: Path, notes: list[str]) -> bool:
    """Check the image input against the spec; fix its open dimensions in place. Returns whether it changed."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    names = [value.name for value in inputs]
    wanted = config.input.name
    if wanted not in names:
        raise ModelCheckError(
            f"the model has no input '{wanted}' (the config's input.name); its inputs are {names}",
            path=path,
            field="input.name",
        )
    others = [name for name in names if name != wanted]
    if others:
        raise ModelCheckError(
            f"the model has inputs {others} besides '{wanted}'; medge feeds the image input only", path=path
        )
    image = inputs[names.index(wanted)]
    if not image.type.HasField("tensor_type"):
        raise ModelCheckError(f"input '{wanted}' is not a tensor", path=path)
    tensor = image.type.tensor_type
    if tensor.elem_type != TensorProto.FLOAT:
        dtype = TensorProto.DataType.Name(tensor.elem_type)
        raise ModelCheckError(
            f"input '{wanted}' has element type {dtype}; medge feeds float32 (the config's input.dtype)",
            path=path,
            field="input.dtype",
        )

    spec = config.preprocessing
    expected = spec.input_shape(profile.batch.default)
    axes = (
        ("batch", "channels", "rows", "columns") if spec.layout == "NCHW" else ("batch", "rows", "columns", "channels")
    )
    produced = "x".join(str(size) for size in expected[1:])
    layout = f"{spec.layout[1:]} = {produced} ({spec.layout}, channels {spec.channels}, size {list(spec.size)})"
    if not tensor.HasField("shape"):
        tensor.shape.dim.add().dim_param = "N"
        for size in expected[1:]:
            tensor.shape.dim.add().dim_value = size
        notes.append(
            f"input '{wanted}' declared no shape; set it to [N, {', '.join(map(str, expected[1:]))}] from the config"
        )
        return True
    dims = tensor.shape.dim
    if len(dims) != 4:
        shape = [_dim_value(dim) for dim in dims]
        raise ModelCheckError(
            f"input '{wanted}' has rank {len(dims)} (shape {shape}) but the config's preprocessing produces rank-4 "
            f"tensors with {layout}",
            path=path,
            field="preprocessing",
        )
    changed = False
    for axis, (dim, size, name) in enumerate(zip(dims, expected, axes, strict=True)):
        if axis == 0:
            changed |= _check_batch(dim, wanted, profile, notes)
            continue
        if dim.HasField("dim_value") and dim.dim_value > 0:
            if dim.dim_value != size:
                model_shape = "x".join(str(_dim_value(d)) for d in list(dims)[1:])
                raise ModelCheckError(
                    f"input '{wanted}' is fixed at {model_shape} but the config's preprocessing produces {layout}: "
                    f"dimension {axis} ({name}) is {dim.dim_value} in the model and {size} in the config",
                    path=path,
                    field="preprocessing",
                )
            continue
        was = f"'{dim.dim_param}'" if dim.dim_param else "unknown"
        dim.Clear()
        dim.dim_value = size
        notes.append(f"input '{wanted}' dimension {axis} ({name}) was {was}; fixed to {size} from the model config")
        changed = True
    return changed


def _check_batch(dim: onnx.TensorShapeProto.Dimension, name: str, profile: DeviceProfile, notes: list[str]) -> bool:
    if dim.HasField("dim_value") and dim.dim_value > 0:
        if dim.dim_value != profile.batch.default:
            notes.append(
                f"input '{name}' has a fixed batch of {dim.dim_value} (profile {profile.id} batches "
                f"{profile.batch.default}); the runtime must run batches of exactly {dim.dim_value}"
            )
        return False
    if dim.dim_param:
        return False
    dim.Clear()
    dim.dim_param = "N"
    notes.append(f"input '{name}' batch dimension was unnamed; named it 'N' (left dynamic)")
    return True


def _check_outputs(model: ModelProto, config: ModelConfig, path: Path) -> None:
    outputs = {value.name: value for value in model.graph.output}
    wanted = {"outputs.scores": config.outputs.scores, "outputs.location": config.outputs.location}
    for key, name in wanted.items():
        if name is not None and name not in outputs:
            raise ModelCheckError(
                f"the model has no output '{name}' (the config's {key}); its outputs are {list(outputs)}",
                path=path,
                field=key,
            )
    _check_last_dim(outputs[config.outputs.scores], len(config.labels), f"one score per label {config.labels}", path)
    if config.outputs.location is not None:
        _check_last_dim(outputs[config.outputs.location], 2, "a (row, column) pair", path)


def _check_last_dim(value: ValueInfoProto, size: int, meaning: str, path: Path) -> None:
    shape = _tensor_spec(value).shape
    if shape and isinstance(shape[-1], int) and shape[-1] > 0 and shape[-1] != size:
        raise ModelCheckError(
            f"output '{value.name}' has shape {shape}; the config expects {meaning}, i.e. a last dimension of {size}",
            path=path,
        )


# --- engines --------------------------------------------------------------------------------------------------------


def _check_onnxruntime(
    model_bytes: bytes, model: ModelProto, profile: DeviceProfile, path: Path, notes: list[str]
) -> None:
    """Create a CPU session: ONNX Runtime resolves a kernel for every node while it does."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # No graph optimisation: node names must stay the model's own for the error to name them.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own pybind exception types; every one means "cannot load"
        raise _translate_onnxruntime(str(exc), model, path) from exc
    accelerated = [name for name in profile.execution_providers if name != "CPUExecutionProvider"]
    if accelerated:
        notes.append(
            f"operators were checked against ONNX Runtime's CPU kernels on this host; {', '.join(accelerated)} "
            "coverage is checked on the device"
        )


def _translate_onnxruntime(message: str, model: ModelProto, path: Path) -> ModelCheckError:
    missing = _ORT_MISSING_KERNEL.search(message)
    if missing:
        op, version, node = missing.group("op"), missing.group("version"), missing.group("node")
        same = [n.name or "?" for n in _all_nodes(model) if n.op_type == op]
        others = f" ({len(same)} nodes use {op})" if len(same) > 1 else ""
        return ModelCheckError(
            f"ONNX Runtime has no CPU implementation of {op} (version {version}) for node '{node}'{others}: "
            "replace the operator or export with another opset",
            path=path,
            node=node,
            op=op,
        )
    unregistered = _ORT_UNREGISTERED.search(message)
    if unregistered:
        op, domain = unregistered.group("op"), unregistered.group("domain")
        nodes = [n.name for n in _all_nodes(model) if n.op_type == op and n.domain == domain]
        qualified = f"{domain}:{op}" if domain else op
        return ModelCheckError(
            f"ONNX Runtime does not know the operator {qualified} used by node(s) {nodes}",
            path=path,
            node=nodes[0] if nodes else None,
            op=qualified,
        )
    context = re.search(r"Node \((?P<node>[^)]*)\) Op \((?P<op>[^)]*)\)", message)
    summary = message.split(" : ", 2)[-1].strip().splitlines()[0] if message else "unknown error"
    return ModelCheckError(
        f"ONNX Runtime cannot load the model: {summary}",
        path=path,
        node=context.group("node") if context else None,
        op=context.group("op") if context else None,
    )


def _check_openvino(
    model_bytes: bytes, model: ModelProto, profile: DeviceProfile, path: Path, notes: list[str]
) -> None:
    """Convert with OpenVINO's ONNX frontend, then ask the profile's devices present here what they support."""
    import openvino as ov
    from openvino.frontend import FrontEndManager

    producers = _producers(model)
    with tempfile.TemporaryDirectory(prefix="medge-check-") as tmp:
        onnx_file = Path(tmp) / "model.onnx"
        onnx_file.write_bytes(model_bytes)
        frontend = FrontEndManager().load_by_framework("onnx")
        try:
            converted = frontend.convert_partially(frontend.load(str(onnx_file)))
        except Exception as exc:  # OpenVINO raises plain RuntimeError/OpConversionFailure subclasses
            raise _translate_openvino(str(exc), model, path) from exc

    failed = []
    for op in converted.get_ordered_ops():
        if op.get_type_name() not in _OV_FAILED_TYPES:
            continue
        tensor_names = [name for output in op.outputs() for name in output.get_names()]
        node = next((producers[name] for name in tensor_names if name in producers), None)
        failed.append((node, op.get_friendly_name(), op.get_type_name()))
    if failed:
        described = []
        for node, friendly, kind in failed[:_MAX_LISTED]:
            op_name = _qualified(node) if node is not None else "?"
            reason = "no conversion rule" if kind == "ONNXFrameworkNode" else "conversion failed"
            described.append(f"'{node.name if node is not None else friendly}' ({op_name}: {reason})")
        first = failed[0][0]
        raise ModelCheckError(
            f"OpenVINO cannot convert node(s) {', '.join(described)}: replace the operator(s) with ones OpenVINO's "
            "ONNX frontend supports",
            path=path,
            node=first.name if first is not None else failed[0][1],
            op=_qualified(first) if first is not None else None,
        )

    core = ov.Core()
    available = {device.split(".", 1)[0] for device in core.available_devices}
    for device in profile.devices:
        if device.split(".", 1)[0] not in available:
            notes.append(
                f"OpenVINO device {device} is not on this host; its operator coverage is checked on the device"
            )
            continue
        try:
            supported = core.query_model(converted, device)
        except Exception as exc:  # a device plugin refusing the model outright
            raise ModelCheckError(f"OpenVINO's {device} plugin refuses the model: {exc}", path=path) from exc
        unsupported = [
            op
            for op in converted.get_ordered_ops()
            if op.get_type_name() not in _OV_BOOKKEEPING and op.get_friendly_name() not in supported
        ]
        if unsupported:
            listed = ", ".join(f"'{op.get_friendly_name()}' ({op.get_type_name()})" for op in unsupported[:_MAX_LISTED])
            raise ModelCheckError(
                f"OpenVINO's {device} plugin does not support {listed}",
                path=path,
                node=unsupported[0].get_friendly_name(),
                op=unsupported[0].get_type_name(),
            )


def _translate_openvino(message: str, model: ModelProto, path: Path) -> ModelCheckError:
    rule = _OV_NO_RULE.search(message)
    if not rule:
        summary = next((line.strip() for line in reversed(message.splitlines()) if line.strip()), "unknown error")
        return ModelCheckError(f"OpenVINO cannot convert the model: {summary}", path=path)
    # Entries look like "Det-11" (default domain, with version) or "my.domain.Foo".
    described, first_node, first_op = [], None, None
    for entry in (item.strip() for item in rule.group("ops").split(",")):
        op_type = re.sub(r"-\d+$", "", entry).rsplit(".", 1)[-1]
        nodes = [n.name for n in _all_nodes(model) if n.op_type == op_type]
        described.append(f"{entry} (node(s) {nodes[:_MAX_LISTED]})")
        if first_node is None and nodes:
            first_node, first_op = nodes[0], entry
    return ModelCheckError(
        f"OpenVINO has no conversion rule for {'; '.join(described)}", path=path, node=first_node, op=first_op
    )


# --- graph helpers --------------------------------------------------------------------------------------------------


def _all_nodes(model: ModelProto) -> Iterator[NodeProto]:
    """Every node, including those inside If/Loop/Scan bodies."""
    stack = [model.graph]
    while stack:
        graph = stack.pop()
        for node in graph.node:
            yield node
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    stack.append(attribute.g)
                elif attribute.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(attribute.graphs)


def _producers(model: ModelProto) -> dict[str, NodeProto]:
    return {output: node for node in _all_nodes(model) for output in node.output if output}


def _qualified(node: NodeProto) -> str:
    return node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}:{node.op_type}"


def _op_histogram(model: ModelProto) -> dict[str, int]:
    counts = Counter(_qualified(node) for node in _all_nodes(model))
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _dim_value(dim: onnx.TensorShapeProto.Dimension) -> int | str:
    if dim.HasField("dim_value"):
        return int(dim.dim_value)
    return dim.dim_param or "?"


def _tensor_spec(value: ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else "unknown"
    return TensorSpec(name=value.name, shape=[_dim_value(dim) for dim in tensor.shape.dim], dtype=dtype)


def _serialize(model: ModelProto, path: Path) -> bytes:
    try:
        return model.SerializeToString()
    except ValueError as exc:  # protobuf refuses messages over 2 GB
        raise ModelCheckError(f"the model is too large to compile in one piece (over 2 GB): {exc}", path=path) from exc
