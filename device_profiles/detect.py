"""Host detection: which device profile fits the machine medge runs on, and why.

:func:`detect_host` gathers plain facts (CPU, memory, accelerator device
nodes, installed engines) into a :class:`HostFacts`; :func:`match_profile`
is a pure function from facts and profiles to a :class:`Detection`, so it can
be checked on facts built by hand for boards the test machine is not.

Matching, first rule that applies:

1. an NVIDIA Jetson (Tegra) → the Jetson profile whose ``device_models``
   names the board; an unknown Jetson → the largest Jetson profile whose
   memory budget fits the host;
2. an Intel x86-64 CPU with OpenVINO installed and an NPU (or a Core Ultra
   CPU) → ``intel-core-ultra``;
3. any other Intel x86-64 CPU with OpenVINO installed → ``intel-xeon``;
4. otherwise → ``generic-<arch>-cpu``.
"""

from __future__ import annotations

import logging
import os
import platform
import re
from importlib import metadata
from pathlib import Path

from pydantic import BaseModel, ConfigDict, field_serializer

from device_profiles.schema import CpuArch, DeviceProfile
from sdk.errors import ProfileError

__all__ = ["Detection", "HostFacts", "detect_host", "int8_expected_to_pay_off", "match_profile"]

log = logging.getLogger(__name__)

_ARCH_ALIASES: dict[str, CpuArch] = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
}
_INTEL_PCI_VENDOR = "0x8086"
_NVIDIA_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_FLAG_NAMES = {
    "amx_int8": "AMX",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "asimddp": "Arm dot product (asimddp)",
    "i8mm": "Arm int8 matrix multiply (i8mm)",
}


class HostFacts(BaseModel):
    """What a machine offers, as far as choosing a device profile is concerned.

    Every field has a neutral default so that facts for another machine can be
    written down by hand.

    Attributes:
        machine: ``platform.machine()`` as reported.
        cpu_arch: the normalised architecture, or ``None`` if medge has no profile for it.
        cpu_vendor: ``GenuineIntel``, ``AuthenticAMD``, ... (empty on Arm).
        cpu_model: the CPU's model name.
        cpu_flags: CPU feature flags from ``/proc/cpuinfo`` (``flags`` or ``Features``).
        cpu_count: logical CPUs.
        memory_total_mb: total memory, if known.
        nvidia_gpu: an NVIDIA GPU is present (``/dev/nvidia*``, the driver, or a Tegra SoC).
        tegra: the machine is an NVIDIA Jetson (Tegra SoC).
        tegra_release: the L4T release, e.g. ``R36.3.0``.
        device_model: the board model from the device tree, e.g. ``NVIDIA Jetson AGX Orin Developer Kit``.
        intel_gpu: an Intel GPU render node is present.
        intel_npu: an Intel NPU accel node is present.
        render_nodes: ``/dev/dri/renderD*`` nodes.
        accel_nodes: ``/dev/accel/accel*`` nodes.
        onnxruntime_version: the installed ONNX Runtime, if any.
        onnxruntime_providers: its available execution providers.
        openvino_version: the installed OpenVINO, if any.
        openvino_devices: the devices OpenVINO can use.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    machine: str = ""
    cpu_arch: CpuArch | None = None
    cpu_vendor: str = ""
    cpu_model: str = ""
    cpu_flags: frozenset[str] = frozenset()
    cpu_count: int = 1
    memory_total_mb: int | None = None
    nvidia_gpu: bool = False
    tegra: bool = False
    tegra_release: str | None = None
    device_model: str | None = None
    intel_gpu: bool = False
    intel_npu: bool = False
    render_nodes: tuple[str, ...] = ()
    accel_nodes: tuple[str, ...] = ()
    onnxruntime_version: str | None = None
    onnxruntime_providers: tuple[str, ...] = ()
    openvino_version: str | None = None
    openvino_devices: tuple[str, ...] = ()

    @field_serializer("cpu_flags")
    def _sorted_flags(self, flags: frozenset[str]) -> list[str]:
        return sorted(flags)

    @property
    def is_intel_cpu(self) -> bool:
        """True for an Intel x86-64 CPU."""
        return self.cpu_arch == "x86_64" and (self.cpu_vendor == "GenuineIntel" or "Intel" in self.cpu_model)

    @property
    def openvino_npu(self) -> bool:
        """True when OpenVINO lists an NPU device."""
        return any(device.split(".", 1)[0] == "NPU" for device in self.openvino_devices)


class Detection(BaseModel):
    """The profile chosen for a host and the reasons, in words a field tech can check."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile_id: str
    reasons: list[str]


# --------------------------------------------------------------------------- detection


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _parse_cpuinfo(text: str) -> tuple[str, str, frozenset[str], int]:
    """Vendor, model name, flags and processor count from ``/proc/cpuinfo`` text."""
    vendor = model = ""
    flags: set[str] = set()
    processors = 0
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "processor":
            processors += 1
        elif key == "vendor_id" and not vendor:
            vendor = value
        elif key in ("model name", "Model", "Hardware") and not model:
            model = value
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return vendor, model, frozenset(flags), processors


def _memory_total_mb(text: str | None) -> int | None:
    if text is None:
        return None
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(match.group(1)) // 1024 if match else None


def _tegra_release(text: str | None) -> str | None:
    """``R36.3.0`` from ``# R36 (release), REVISION: 3.0, ...``."""
    if text is None:
        return None
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if match:
        return f"R{match.group(1)}.{match.group(2)}"
    lines = text.strip().splitlines()
    return lines[0] if lines else None


def _pci_vendor(sys_class: Path, node: str) -> str | None:
    text = _read_text(sys_class / node / "device" / "vendor")
    return text.strip().lower() if text else None


def _probe_onnxruntime() -> tuple[str | None, tuple[str, ...]]:
    try:
        import onnxruntime
    except ImportError:
        return None, ()
    return onnxruntime.__version__, tuple(onnxruntime.get_available_providers())


def _probe_openvino() -> tuple[str | None, tuple[str, ...]]:
    try:
        import openvino
    except ImportError:
        return None, ()
    try:
        version = metadata.version("openvino")
    except metadata.PackageNotFoundError:
        version = openvino.get_version().split("-", 1)[0]
    try:
        devices = tuple(openvino.Core().available_devices)
    except RuntimeError as exc:  # a broken plugin must not stop detection
        log.warning("OpenVINO is installed but cannot list its devices: %s", exc)
        devices = ()
    return version, devices


def detect_host(*, root: str | Path = "/", machine: str | None = None, probe_engines: bool = True) -> HostFacts:
    """Gather the facts of this host.

    Args:
        root: where ``/proc``, ``/dev``, ``/sys`` and ``/etc`` are found; another
            folder lets a captured machine description be read back.
        machine: the architecture string; default ``platform.machine()``.
        probe_engines: import ONNX Runtime and OpenVINO (if installed) and ask
            them what they can run on.
    """
    root = Path(root)
    real_host = root == Path("/")
    machine = machine if machine is not None else platform.machine()
    vendor, model, flags, processors = _parse_cpuinfo(_read_text(root / "proc/cpuinfo") or "")
    cpu_count = (os.cpu_count() if real_host else None) or processors or 1

    device_model_text = _read_text(root / "proc/device-tree/model")
    device_model = device_model_text.strip("\x00 \n") if device_model_text else None
    compatible = _read_text(root / "proc/device-tree/compatible") or ""
    release_text = _read_text(root / "etc/nv_tegra_release")
    tegra = release_text is not None or "nvidia,tegra" in compatible or "Jetson" in (device_model or "")

    dev = root / "dev"
    nvidia_nodes = sorted(dev.glob("nvidia[0-9]*"))
    nvidia_gpu = tegra or bool(nvidia_nodes) or (root / "proc/driver/nvidia").exists()
    render_nodes = tuple(sorted(path.name for path in (dev / "dri").glob("renderD*")))
    accel_nodes = tuple(sorted(path.name for path in (dev / "accel").glob("accel*")))
    intel_gpu = any(_pci_vendor(root / "sys/class/drm", node) == _INTEL_PCI_VENDOR for node in render_nodes)
    intel_npu = any(_pci_vendor(root / "sys/class/accel", node) == _INTEL_PCI_VENDOR for node in accel_nodes)

    ort_version, ort_providers = _probe_onnxruntime() if probe_engines else (None, ())
    ov_version, ov_devices = _probe_openvino() if probe_engines else (None, ())

    facts = HostFacts(
        machine=machine,
        cpu_arch=_ARCH_ALIASES.get(machine.lower()),
        cpu_vendor=vendor,
        cpu_model=model,
        cpu_flags=flags,
        cpu_count=cpu_count,
        memory_total_mb=_memory_total_mb(_read_text(root / "proc/meminfo")),
        nvidia_gpu=nvidia_gpu,
        tegra=tegra,
        tegra_release=_tegra_release(release_text),
        device_model=device_model,
        intel_gpu=intel_gpu,
        intel_npu=intel_npu,
        render_nodes=render_nodes,
        accel_nodes=accel_nodes,
        onnxruntime_version=ort_version,
        onnxruntime_providers=ort_providers,
        openvino_version=ov_version,
        openvino_devices=ov_devices,
    )
    log.debug("host facts: %s", facts)
    return facts


# --------------------------------------------------------------------------- matching


def _cpu_words(facts: HostFacts) -> str:
    notable = [name for flag, name in _FLAG_NAMES.items() if flag in facts.cpu_flags]
    words = f"{facts.cpu_arch or facts.machine} CPU"
    if facts.cpu_model:
        words += f" ({facts.cpu_model})"
    return f"{words} with {' and '.join(notable)}" if notable else words


def _jetson_candidates(facts: HostFacts, profiles: dict[str, DeviceProfile]) -> list[tuple[str, str]]:
    model = facts.device_model or "unknown model"
    release = f", L4T {facts.tegra_release}" if facts.tegra_release else ""
    candidates: list[tuple[str, str]] = []
    for profile in profiles.values():
        for pattern in profile.device_models:
            if facts.device_model and pattern.lower() in facts.device_model.lower():
                candidates.append((profile.id, f"NVIDIA Jetson '{model}'{release} matches '{pattern}'"))
    if candidates:
        return candidates
    jetsons = [p for p in profiles.values() if p.device_models and p.accelerator_kind == "nvidia-gpu"]
    memory = facts.memory_total_mb
    fitting = [p for p in jetsons if memory is None or p.memory_budget_mb <= memory]
    for profile in sorted(fitting, key=lambda p: p.memory_budget_mb, reverse=True):
        candidates.append(
            (profile.id, f"NVIDIA Jetson '{model}'{release} has no profile of its own: closest by memory budget")
        )
    return candidates


def _intel_candidates(facts: HostFacts) -> list[tuple[str, str]]:
    ov = f"OpenVINO {facts.openvino_version} installed with devices {', '.join(facts.openvino_devices) or 'none'}"
    candidates: list[tuple[str, str]] = []
    if facts.openvino_npu:
        candidates.append(("intel-core-ultra", f"{ov}: an NPU"))
    elif facts.intel_npu:
        candidates.append(
            (
                "intel-core-ultra",
                f"{ov}; an Intel NPU node ({', '.join(facts.accel_nodes)}) exists but OpenVINO does not list it "
                "(NPU driver or plugin missing): the runtime will fall back to GPU/CPU",
            )
        )
    elif "core(tm) ultra" in facts.cpu_model.lower() or "core ultra" in facts.cpu_model.lower():
        candidates.append(("intel-core-ultra", f"{ov}; a Core Ultra CPU but no NPU visible"))
    candidates.append(("intel-xeon", f"{ov}: Intel CPU, OpenVINO on the CPU"))
    return candidates


def match_profile(facts: HostFacts, profiles: list[DeviceProfile]) -> Detection:
    """Choose the profile in ``profiles`` that fits ``facts`` best (see the module docstring for the rules).

    Raises:
        ProfileError: no profile fits (an architecture medge has no profile for,
            or none of the fitting profiles is in ``profiles``).
    """
    by_id = {profile.id: profile for profile in profiles}
    reasons = [_cpu_words(facts)]
    candidates: list[tuple[str, str]] = []
    if facts.tegra:
        candidates += _jetson_candidates(facts, by_id)
    elif facts.is_intel_cpu and facts.openvino_version:
        candidates += _intel_candidates(facts)
    elif facts.cpu_arch == "x86_64" and facts.openvino_version:
        reasons.append(f"OpenVINO {facts.openvino_version} installed, but the OpenVINO profiles target Intel CPUs")
    elif facts.is_intel_cpu:
        reasons.append("Intel CPU without OpenVINO installed: ONNX Runtime on the CPU")
    if facts.cpu_arch is not None:
        candidates.append(
            (f"generic-{'x86_64' if facts.cpu_arch == 'x86_64' else 'arm64'}-cpu", "ONNX Runtime on the CPU")
        )

    for profile_id, why in candidates:
        profile = by_id.get(profile_id)
        if profile is None:
            log.debug("profile %s would fit but is not among the profiles given", profile_id)
            continue
        if facts.cpu_arch is not None and profile.cpu_arch != facts.cpu_arch:
            continue
        reasons.append(f"{why} → {profile.id}")
        reasons += _engine_reasons(profile, facts)
        _, int8_reason = int8_expected_to_pay_off(profile, facts)
        reasons.append(int8_reason)
        return Detection(profile_id=profile.id, reasons=reasons)
    raise ProfileError(
        f"no device profile fits this host ({facts.machine or 'unknown'} architecture, CPU '{facts.cpu_model}'); "
        f"profiles considered: {', '.join(sorted(by_id)) or 'none'}"
    )


def _engine_reasons(profile: DeviceProfile, facts: HostFacts) -> list[str]:
    """Say whether the engine the profile needs is installed and offers its first preference."""
    if profile.engine == "onnxruntime":
        if facts.onnxruntime_version is None:
            return ["ONNX Runtime is not installed (or was not probed): the profile needs it"]
        available = facts.onnxruntime_providers
        name = f"ONNX Runtime {facts.onnxruntime_version}"
    else:
        if facts.openvino_version is None:
            return ["OpenVINO is not installed: the profile needs it"]
        available = facts.openvino_devices
        name = f"OpenVINO {facts.openvino_version}"
    present = [p for p in profile.preferences if any(a.split(".", 1)[0] == p for a in available)]
    missing = [p for p in profile.preferences if p not in present]
    if not missing:
        return [f"{name} offers every one of the profile's preferences: {', '.join(profile.preferences)}"]
    words = f"{name} lacks {', '.join(missing)} of the profile's {', '.join(profile.preferences)}"
    if profile.preferences[0] in missing:
        words += f": inference falls back to {present[0]}" if present else ": nothing to run on"
    return [words]


def _accelerator_present(profile: DeviceProfile, facts: HostFacts) -> bool:
    if profile.accelerator_kind == "nvidia-gpu":
        return facts.nvidia_gpu and (
            facts.onnxruntime_version is None or any(p in facts.onnxruntime_providers for p in _NVIDIA_PROVIDERS)
        )
    if profile.accelerator_kind == "intel-npu":
        return facts.openvino_npu or facts.intel_npu
    if profile.accelerator_kind == "intel-gpu":
        return facts.intel_gpu or any(d.split(".", 1)[0] == "GPU" for d in facts.openvino_devices)
    return False


def int8_expected_to_pay_off(profile: DeviceProfile, facts: HostFacts) -> tuple[bool, str]:
    """Whether INT8 should beat FP32 for ``profile`` on the host ``facts`` describe, and why.

    INT8 pays off when the profile's accelerator is present (its INT8 units do
    the work), or when the CPU has one of the profile's INT8 flags (VNNI, AMX,
    Arm dot product). Without either, INT8 is emulated with wider arithmetic
    and rarely earns back the accuracy it costs.
    """
    hints = profile.int8_hints
    if not profile.supports_int8 or hints is None:
        return False, f"INT8 is not among the precisions of {profile.id}"
    if profile.accelerator_kind != "none" and hints.accelerator_units and _accelerator_present(profile, facts):
        units = ", ".join(hints.accelerator_units)
        return True, f"{profile.accelerator} present ({units}): INT8 pays off"
    flags = [flag for flag in hints.cpu_flags if flag in facts.cpu_flags]
    if flags:
        names = " and ".join(_FLAG_NAMES.get(flag, flag) for flag in flags)
        return True, f"{facts.cpu_arch or facts.machine} CPU with {names}: INT8 pays off"
    lacking = []
    if profile.accelerator_kind != "none" and hints.accelerator_units:
        lacking.append(f"no {profile.accelerator} found")
    if hints.cpu_flags:
        lacking.append(f"the CPU has none of {', '.join(hints.cpu_flags)}")
    return False, f"{'; '.join(lacking) or 'nothing to run INT8 fast'}: INT8 is not expected to pay off"
