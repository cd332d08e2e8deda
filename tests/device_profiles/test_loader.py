"""Shipped device profiles and the refusal of malformed ones (device_profiles/loader.py, schema.py)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from device_profiles import DeviceProfile, get_profile, list_profiles, load_profile, profiles_dir
from sdk.errors import ConfigError, ProfileError

SHIPPED = {
    "jetson-orin-nano-8gb",
    "jetson-agx-orin-64gb",
    "jetson-xavier-nx",
    "intel-core-ultra",
    "intel-xeon",
    "generic-x86_64-cpu",
    "generic-arm64-cpu",
}

# A valid profile to break one way at a time.
VALID = """\
id = "test-board"
name = "Test board"
vendor = "ACME"
board = "ACME test board"
cpu_arch = "aarch64"
cpu = "4-core Cortex-A78"
cpu_cores = 4
memory_mb = 8192
engine = "onnxruntime"
execution_providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
accelerator = "nvidia-ampere-gpu"
accelerator_kind = "nvidia-gpu"
precisions = ["fp32", "fp16", "int8"]
default_precision = "fp16"
memory_budget_mb = 2048
default_threads = 4

[quantization]
format = "QDQ"
activation_symmetric = true
weight_per_channel = true
zero_point_zero = true

[int8_hints]
accelerator_units = ["tensor-cores"]

[batch]
default = 2
max = 8
"""

OPENVINO_LINES = (
    'engine = "openvino"\ndevices = ["NPU", "GPU", "CPU"]\naccelerator = "intel-npu"\naccelerator_kind = "intel-npu"\n'
)


def write(tmp_path: Path, text: str, name: str = "test-board.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def replace(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def drop(text: str, key: str) -> str:
    """Remove the line setting ``key``."""
    start = text.index(f"\n{key} = ") + 1
    return text[:start] + text[text.index("\n", start) + 1 :]


def as_openvino(text: str) -> str:
    for key in ("engine", "execution_providers", "accelerator", "accelerator_kind"):
        text = drop(text, key)
    text = replace(text, '[quantization]\nformat = "QDQ"', '[quantization]\nformat = "FakeQuantize"')
    return replace(text, "precisions = ", OPENVINO_LINES + "precisions = ")


def test_every_shipped_profile_loads_and_is_named_after_its_file() -> None:
    paths = sorted(profiles_dir().glob("*.toml"))
    assert {path.stem for path in paths} == SHIPPED
    for path in paths:
        profile = load_profile(path)
        assert profile.id == path.stem
        assert profile.default_precision in profile.precisions
        assert profile.batch.default <= profile.batch.max
        assert profile.preferences, profile.id


def test_list_profiles_is_sorted_and_complete() -> None:
    profiles = list_profiles()
    assert [p.id for p in profiles] == sorted(SHIPPED)
    assert all(isinstance(p, DeviceProfile) for p in profiles)


def test_jetson_profiles_need_what_tensorrt_needs() -> None:
    for profile_id in ("jetson-orin-nano-8gb", "jetson-agx-orin-64gb", "jetson-xavier-nx"):
        profile = get_profile(profile_id)
        assert profile.engine == "onnxruntime"
        assert profile.preferences == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        assert {"fp16", "int8"} <= set(profile.precisions)
        q = profile.quantization
        assert q is not None
        assert (q.format, q.activation_dtype, q.weight_dtype) == ("QDQ", "int8", "int8")
        assert q.activation_symmetric and q.weight_symmetric and q.zero_point_zero and q.weight_per_channel
        assert profile.memory_mb is not None and profile.memory_budget_mb < profile.memory_mb


def test_intel_and_generic_preferences() -> None:
    assert get_profile("intel-core-ultra").preferences == ["NPU", "GPU", "CPU"]
    assert get_profile("intel-xeon").preferences == ["CPU"]
    assert get_profile("generic-x86_64-cpu").preferences == ["CPUExecutionProvider"]
    assert get_profile("generic-arm64-cpu").cpu_arch == "aarch64"
    assert get_profile("intel-xeon").quantization.format == "FakeQuantize"  # type: ignore[union-attr]


def test_profiles_are_immutable() -> None:
    profile = get_profile("intel-xeon")
    with pytest.raises(ValueError, match="frozen"):
        profile.default_threads = 1  # type: ignore[misc]


def test_valid_fixture_loads(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, VALID))
    assert profile.quantization is not None
    assert profile.quantization.calibration_method == "minmax"
    openvino = load_profile(write(tmp_path, as_openvino(VALID)))
    assert openvino.preferences == ["NPU", "GPU", "CPU"]
    assert openvino.execution_providers == []


def test_unknown_id_lists_known_ids() -> None:
    with pytest.raises(ProfileError) as caught:
        get_profile("raspberry-pi-9")
    message = str(caught.value)
    assert "raspberry-pi-9" in message
    for profile_id in SHIPPED:
        assert profile_id in message


def test_get_profile_refuses_paths() -> None:
    with pytest.raises(ProfileError, match="unknown device profile"):
        get_profile("../device_profiles/intel-xeon")


def test_get_profile_from_another_folder(tmp_path: Path) -> None:
    write(tmp_path, VALID)
    assert get_profile("test-board", tmp_path).board == "ACME test board"
    assert [p.id for p in list_profiles(tmp_path)] == ["test-board"]


def test_list_profiles_does_not_skip_a_broken_file(tmp_path: Path) -> None:
    write(tmp_path, VALID)
    write(tmp_path, "id = ", name="broken.toml")
    with pytest.raises(ProfileError, match=r"broken\.toml"):
        list_profiles(tmp_path)


MALFORMED = [
    pytest.param(lambda t: replace(t, 'vendor = "ACME"\n', ""), "vendor", "required", id="missing-field"),
    pytest.param(
        lambda t: replace(t, "memory_budget_mb = 2048", 'memory_budget_mb = "lots"'),
        "memory_budget_mb",
        "integer",
        id="wrong-type",
    ),
    pytest.param(
        lambda t: replace(t, 'engine = "onnxruntime"', 'engine = "tflite"'),
        "engine",
        "onnxruntime",
        id="unknown-engine",
    ),
    pytest.param(
        lambda t: replace(t, '"CUDAExecutionProvider", ', '"NPU", '),
        "execution_providers",
        "not an ONNX Runtime execution provider",
        id="provider-not-of-engine",
    ),
    pytest.param(
        lambda t: replace(t, '"CPUExecutionProvider"]', '"CPUExecutionProvider", "CUDAExecutionProvider"]'),
        "execution_providers",
        "more than once",
        id="provider-repeated",
    ),
    pytest.param(
        lambda t: replace(
            t,
            '"TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"',
            '"CPUExecutionProvider", "CUDAExecutionProvider"',
        ),
        "execution_providers",
        "must come last",
        id="cpu-not-last",
    ),
    pytest.param(
        lambda t: replace(t, "precisions = ", 'devices = ["GPU", "CPU"]\nprecisions = '),
        "devices",
        "onnxruntime profile lists execution_providers",
        id="devices-on-onnxruntime",
    ),
    pytest.param(
        lambda t: replace(
            as_openvino(t), "precisions = ", 'execution_providers = ["CPUExecutionProvider"]\nprecisions = '
        ),
        "execution_providers",
        "openvino profile lists devices",
        id="providers-on-openvino",
    ),
    pytest.param(
        lambda t: replace(as_openvino(t), '"NPU", "GPU"', '"TPU", "GPU"'),
        "devices",
        "not an OpenVINO device",
        id="unknown-openvino-device",
    ),
    pytest.param(
        lambda t: drop(t, "execution_providers"),
        "execution_providers",
        "execution_providers in preference",
        id="providers-missing",
    ),
    pytest.param(
        lambda t: replace(t, 'default_precision = "fp16"', 'default_precision = "int4"'),
        "default_precision",
        "fp32",
        id="default-precision-unknown",
    ),
    pytest.param(
        lambda t: replace(t, 'precisions = ["fp32", "fp16", "int8"]', 'precisions = ["fp32", "int8"]'),
        "default_precision",
        "not among precisions",
        id="default-precision-not-supported",
    ),
    pytest.param(
        lambda t: replace(t, "default = 2", "default = 16"), "batch.max", "must not exceed", id="batch-default-over-max"
    ),
    pytest.param(
        lambda t: replace(t, 'accelerator_kind = "nvidia-gpu"', 'accelerator_kind = "none"'),
        "accelerator_kind",
        "name accelerators",
        id="kind-none-with-gpu-providers",
    ),
    pytest.param(
        lambda t: replace(t, "zero_point_zero = true", "zero_point_zero = false"),
        "quantization",
        "TensorRT INT8 needs",
        id="tensorrt-needs-zero-points-0",
    ),
    pytest.param(
        lambda t: replace(t, 'format = "QDQ"', 'format = "QOperator"'),
        "quantization",
        "format = 'QDQ'",
        id="tensorrt-needs-qdq",
    ),
    pytest.param(
        lambda t: replace(t, "activation_symmetric = true", "activation_symmetric = false"),
        "quantization.zero_point_zero",
        "symmetric",
        id="zero-points-need-symmetry",
    ),
    pytest.param(
        lambda t: t[: t.index("[quantization]")] + t[t.index("[int8_hints]") :],
        "quantization",
        "int8 is among precisions",
        id="int8-without-scheme",
    ),
    pytest.param(
        lambda t: replace(t, "memory_budget_mb = 2048", "memory_budget_mb = 9000"),
        "memory_budget_mb",
        "exceeds",
        id="budget-over-memory",
    ),
    pytest.param(
        lambda t: replace(t, "default_threads = 4", "default_threads = 8"),
        "default_threads",
        "exceeds",
        id="threads-over-cores",
    ),
    pytest.param(
        lambda t: replace(t, 'cpu_arch = "aarch64"', 'cpu_arch = "riscv64"'), "cpu_arch", "x86_64", id="unknown-arch"
    ),
    pytest.param(lambda t: t + 'colour = "green"\n', "batch.colour", "Extra inputs", id="unknown-key-in-table"),
    pytest.param(
        lambda t: replace(t, "default_threads = 4\n", 'default_threads = 4\ncolour = "green"\n'),
        "colour",
        "Extra inputs",
        id="unknown-top-level-key",
    ),
    pytest.param(
        lambda t: replace(t, 'id = "test-board"', 'id = "other-board"'),
        "id",
        "does not match the file",
        id="id-not-filename",
    ),
]


@pytest.mark.parametrize(("change", "field", "reason"), MALFORMED)
def test_malformed_profile_names_file_field_and_reason(tmp_path: Path, change, field: str, reason: str) -> None:
    path = write(tmp_path, change(VALID))
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    error = caught.value
    assert error.path == path
    assert error.field == field, str(error)
    assert reason in error.message, str(error)
    assert str(path) in str(error) and f"field '{field}'" in str(error)


def test_bad_toml_syntax_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, replace(VALID, 'name = "Test board"', 'name = "Test board'))
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert caught.value.path == path
    assert "not valid TOML" in str(caught.value) and "line" in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path / "nothing.toml")


def test_profile_error_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_profile(write(tmp_path, "id = 3\n"))


def test_valid_fixture_is_really_valid_toml() -> None:
    # Guards the malformed cases: each breaks VALID in exactly one way.
    data = tomllib.loads(VALID)
    DeviceProfile.model_validate(data)
