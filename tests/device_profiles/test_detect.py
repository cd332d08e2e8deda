"""Host detection and profile matching (device_profiles/detect.py)."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from device_profiles import (
    DeviceProfile,
    HostFacts,
    detect_host,
    get_profile,
    int8_expected_to_pay_off,
    list_profiles,
    match_profile,
)
from sdk.errors import ProfileError

JETSON_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
ARM_FLAGS = frozenset({"fp", "asimd", "asimddp", "atomics", "i8mm"})


@pytest.fixture(scope="module")
def profiles() -> list[DeviceProfile]:
    return list_profiles()


def jetson(model: str, memory_mb: int, providers: tuple[str, ...] = JETSON_PROVIDERS) -> HostFacts:
    return HostFacts(
        machine="aarch64",
        cpu_arch="aarch64",
        cpu_flags=ARM_FLAGS,
        cpu_count=6,
        memory_total_mb=memory_mb,
        nvidia_gpu=True,
        tegra=True,
        tegra_release="R36.3.0",
        device_model=model,
        onnxruntime_version="1.20.0",
        onnxruntime_providers=providers,
    )


def intel(model: str, flags: set[str], devices: tuple[str, ...] | None, **extra: object) -> HostFacts:
    return HostFacts(
        machine="x86_64",
        cpu_arch="x86_64",
        cpu_vendor="GenuineIntel",
        cpu_model=model,
        cpu_flags=frozenset({"sse4_2", "avx", "avx2", *flags}),
        cpu_count=16,
        memory_total_mb=31_000,
        onnxruntime_version="1.32.0",
        onnxruntime_providers=("CPUExecutionProvider",),
        openvino_version="2026.4.1" if devices is not None else None,
        openvino_devices=devices or (),
        **extra,  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------- the real host


def test_detect_on_this_host_names_a_shipped_profile(profiles: list[DeviceProfile]) -> None:
    facts = detect_host()
    assert facts.machine == platform.machine()
    assert facts.cpu_count >= 1
    assert facts.memory_total_mb is None or facts.memory_total_mb > 0
    assert facts.onnxruntime_version is not None and "CPUExecutionProvider" in facts.onnxruntime_providers
    detection = match_profile(facts, profiles)
    profile = get_profile(detection.profile_id)
    assert profile.cpu_arch == facts.cpu_arch
    assert detection.reasons and all(reason.strip() for reason in detection.reasons)
    assert any(f"→ {profile.id}" in reason for reason in detection.reasons)


def test_host_facts_round_trip_through_json() -> None:
    facts = detect_host(probe_engines=False)
    assert facts.onnxruntime_version is None
    data = facts.model_dump(mode="json")
    assert data["cpu_flags"] == sorted(data["cpu_flags"])
    assert HostFacts.model_validate(data) == facts


# --------------------------------------------------------------------------- captured machines (files on disk)


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_detect_reads_a_jetson_tree(tmp_path: Path, profiles: list[DeviceProfile]) -> None:
    cpu = "processor\t: {n}\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes crc32 atomics asimddp\n\n"
    root = write_tree(
        tmp_path,
        {
            "proc/cpuinfo": "".join(cpu.format(n=n) for n in range(6)),
            "proc/meminfo": "MemTotal:        7802500 kB\nMemFree:         1000000 kB\n",
            "proc/device-tree/model": "NVIDIA Jetson Orin Nano Developer Kit\x00",
            "proc/device-tree/compatible": "nvidia,p3768-0000+p3767-0005\x00nvidia,tegra234\x00",
            "etc/nv_tegra_release": "# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64\n",
        },
    )
    facts = detect_host(root=root, machine="aarch64", probe_engines=False)
    assert facts.cpu_arch == "aarch64"
    assert facts.cpu_count == 6
    assert {"asimd", "asimddp"} <= facts.cpu_flags
    assert facts.memory_total_mb == 7619
    assert facts.tegra and facts.nvidia_gpu
    assert facts.tegra_release == "R36.3.0"
    assert facts.device_model == "NVIDIA Jetson Orin Nano Developer Kit"
    detection = match_profile(facts, profiles)
    assert detection.profile_id == "jetson-orin-nano-8gb"
    assert any("L4T R36.3.0" in reason for reason in detection.reasons)


def test_detect_reads_an_intel_tree_with_npu_and_gpu(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            "proc/cpuinfo": (
                "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Core(TM) Ultra 7 155H\n"
                "flags\t\t: fpu sse4_2 avx avx2 avx_vnni\n\n"
                "processor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Core(TM) Ultra 7 155H\n"
                "flags\t\t: fpu sse4_2 avx avx2 avx_vnni\n"
            ),
            "dev/dri/renderD128": "",
            "dev/accel/accel0": "",
            "sys/class/drm/renderD128/device/vendor": "0x8086\n",
            "sys/class/accel/accel0/device/vendor": "0x8086\n",
        },
    )
    facts = detect_host(root=root, machine="x86_64", probe_engines=False)
    assert facts.cpu_vendor == "GenuineIntel" and facts.cpu_model == "Intel(R) Core(TM) Ultra 7 155H"
    assert facts.cpu_count == 2
    assert "avx_vnni" in facts.cpu_flags
    assert facts.memory_total_mb is None
    assert facts.intel_gpu and facts.intel_npu and not facts.nvidia_gpu and not facts.tegra
    assert facts.render_nodes == ("renderD128",) and facts.accel_nodes == ("accel0",)


def test_detect_ignores_a_non_intel_render_node(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {"dev/dri/renderD128": "", "sys/class/drm/renderD128/device/vendor": "0x1002\n"})
    facts = detect_host(root=root, machine="x86_64", probe_engines=False)
    assert facts.render_nodes == ("renderD128",) and not facts.intel_gpu


# --------------------------------------------------------------------------- matching hand-written facts


@pytest.mark.parametrize(
    ("model", "memory_mb", "expected"),
    [
        ("NVIDIA Jetson Orin Nano Developer Kit", 7_620, "jetson-orin-nano-8gb"),
        ("NVIDIA Jetson AGX Orin Developer Kit", 62_800, "jetson-agx-orin-64gb"),
        ("NVIDIA Jetson Xavier NX Developer Kit", 7_600, "jetson-xavier-nx"),
    ],
)
def test_jetsons_match_by_board_model(profiles: list[DeviceProfile], model: str, memory_mb: int, expected: str) -> None:
    detection = match_profile(jetson(model, memory_mb), profiles)
    assert detection.profile_id == expected
    assert any(model in reason and f"→ {expected}" in reason for reason in detection.reasons)
    assert any("INT8 pays off" in reason for reason in detection.reasons)


def test_unknown_jetson_gets_the_largest_profile_that_fits(profiles: list[DeviceProfile]) -> None:
    small = match_profile(jetson("NVIDIA Jetson Orin NX Engineering Reference Developer Kit", 15_600), profiles)
    assert small.profile_id == "jetson-orin-nano-8gb"
    assert any("no profile of its own" in reason for reason in small.reasons)
    big = match_profile(jetson("NVIDIA Jetson AGX Thor Developer Kit", 125_000), profiles)
    assert big.profile_id == "jetson-agx-orin-64gb"


def test_jetson_without_tensorrt_says_it_falls_back(profiles: list[DeviceProfile]) -> None:
    facts = jetson("NVIDIA Jetson AGX Orin", 62_800, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    detection = match_profile(facts, profiles)
    assert detection.profile_id == "jetson-agx-orin-64gb"
    assert any("lacks TensorrtExecutionProvider" in r and "falls back to CUDA" in r for r in detection.reasons)


def test_core_ultra_with_npu(profiles: list[DeviceProfile]) -> None:
    facts = intel("Intel(R) Core(TM) Ultra 7 155H", {"avx_vnni"}, ("CPU", "GPU.0", "NPU"), intel_npu=True)
    detection = match_profile(facts, profiles)
    assert detection.profile_id == "intel-core-ultra"
    assert any("NPU" in reason and "→ intel-core-ultra" in reason for reason in detection.reasons)
    assert any("offers every one" in reason for reason in detection.reasons)
    assert int8_expected_to_pay_off(get_profile("intel-core-ultra"), facts)[0]


def test_npu_node_without_openvino_npu_plugin_is_reported(profiles: list[DeviceProfile]) -> None:
    facts = intel("Intel(R) Core(TM) Ultra 5 125U", set(), ("CPU",), intel_npu=True, accel_nodes=("accel0",))
    detection = match_profile(facts, profiles)
    assert detection.profile_id == "intel-core-ultra"
    assert any("does not list it" in reason for reason in detection.reasons)
    assert any("lacks NPU, GPU" in reason and "falls back to CPU" in reason for reason in detection.reasons)


def test_xeon_with_openvino(profiles: list[DeviceProfile]) -> None:
    facts = intel("Intel(R) Xeon(R) Platinum 8480+", {"avx512f", "avx512_vnni", "amx_tile", "amx_int8"}, ("CPU",))
    detection = match_profile(facts, profiles)
    assert detection.profile_id == "intel-xeon"
    assert any("OpenVINO 2026.4.1 installed with devices CPU" in reason for reason in detection.reasons)
    ok, why = int8_expected_to_pay_off(get_profile("intel-xeon"), facts)
    assert ok and "AMX" in why and "AVX-512 VNNI" in why


def test_intel_without_openvino_is_generic(profiles: list[DeviceProfile]) -> None:
    detection = match_profile(intel("Intel(R) Xeon(R) Silver 4514Y", {"avx512_vnni"}, None), profiles)
    assert detection.profile_id == "generic-x86_64-cpu"
    assert any("without OpenVINO" in reason for reason in detection.reasons)


def test_amd_with_openvino_is_generic(profiles: list[DeviceProfile]) -> None:
    facts = HostFacts(
        machine="x86_64", cpu_arch="x86_64", cpu_vendor="AuthenticAMD", cpu_model="AMD EPYC 9354",
        openvino_version="2026.4.1", openvino_devices=("CPU",),
    )  # fmt: skip
    detection = match_profile(facts, profiles)
    assert detection.profile_id == "generic-x86_64-cpu"
    assert any("target Intel CPUs" in reason for reason in detection.reasons)


def test_x86_without_openvino(profiles: list[DeviceProfile]) -> None:
    facts = HostFacts(machine="AMD64", cpu_arch="x86_64", cpu_flags=frozenset({"avx2"}))
    detection = match_profile(facts, profiles)
    assert detection.profile_id == "generic-x86_64-cpu"
    assert any("INT8 is not expected to pay off" in reason for reason in detection.reasons)


def test_plain_arm64(profiles: list[DeviceProfile]) -> None:
    facts = HostFacts(
        machine="aarch64", cpu_arch="aarch64", cpu_flags=ARM_FLAGS, device_model="Raspberry Pi 5 Model B Rev 1.0",
        onnxruntime_version="1.32.0", onnxruntime_providers=("CPUExecutionProvider",),
    )  # fmt: skip
    detection = match_profile(facts, profiles)
    assert detection.profile_id == "generic-arm64-cpu"
    assert any("dot product" in reason and "INT8 pays off" in reason for reason in detection.reasons)


def test_only_the_profiles_given_are_chosen(profiles: list[DeviceProfile]) -> None:
    generic_only = [p for p in profiles if p.id.startswith("generic-")]
    detection = match_profile(jetson("NVIDIA Jetson AGX Orin Developer Kit", 62_800), generic_only)
    assert detection.profile_id == "generic-arm64-cpu"


def test_unsupported_architecture_is_refused(profiles: list[DeviceProfile]) -> None:
    with pytest.raises(ProfileError, match="riscv64"):
        match_profile(HostFacts(machine="riscv64"), profiles)


# --------------------------------------------------------------------------- int8 verdicts


def test_int8_needs_the_accelerator_or_the_cpu_flags() -> None:
    plain_x86 = HostFacts(machine="x86_64", cpu_arch="x86_64", cpu_flags=frozenset({"avx2"}))
    ok, why = int8_expected_to_pay_off(get_profile("intel-xeon"), plain_x86)
    assert not ok and "amx_int8" in why
    ok, why = int8_expected_to_pay_off(get_profile("jetson-orin-nano-8gb"), plain_x86)
    assert not ok and "no nvidia-ampere-gpu found" in why
    ok, why = int8_expected_to_pay_off(get_profile("jetson-orin-nano-8gb"), jetson("NVIDIA Jetson Orin Nano", 7_620))
    assert ok and "tensor-cores" in why


def test_int8_not_offered_by_the_profile() -> None:
    data = get_profile("generic-x86_64-cpu").model_dump()
    data.update(precisions=["fp32"], default_precision="fp32", quantization=None, int8_hints=None)
    fp32_only = DeviceProfile.model_validate(data)
    ok, why = int8_expected_to_pay_off(fp32_only, HostFacts(cpu_arch="x86_64", cpu_flags=frozenset({"amx_int8"})))
    assert not ok and "not among the precisions" in why
