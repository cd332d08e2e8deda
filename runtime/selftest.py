"""The appliance self-test: a checklist a field tech can act on, each failure with its fix in one sentence.

``medge selftest`` (also run at the end of provisioning) checks, each
independently and within a time limit, so a dead broker or a hung engine
cannot hang the checklist:

========== ==========================================================================================
profile    the device profile: configured, detected, and whether they agree
engine     the profile's engine is installed and offers the providers or devices it wants
packages   the trusted keys; each installed package verified and its golden samples passing here
dicom      a C-ECHO to the appliance's own SCP (is the service up and answering?)
broker     MQTT 5 connect with the config's credentials and TLS, and a QoS 1 test event on the
           device's own event topic acknowledged with success (0x87: not authorised)
clock      the kernel says the clock is synchronised (adjtimex; ``timedatectl`` as a fallback)
disk       free space under ``data_dir``
spool      the spool folder takes a file (create, fsync, remove) and belongs to the service's user
========== ==========================================================================================

The broker check connects with the device's own identity and client id, as
the running service does (the broker binds the client id to the username), so
it resumes the service's session instead of replacing it: clean start off,
the same session expiry, and no acknowledgement of anything delivered to it
(the broker re-delivers that to the service). The service's own connection is
taken over for that moment and reconnects by itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import pwd
import secrets
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field

from device_profiles import DeviceProfile, HostFacts, detect_host, get_profile, list_profiles, match_profile
from runtime.ingest.sockets import nodelay_evt_handlers
from runtime.packages import PackageSet, RefusedPackage
from sdk.appliance_config import ApplianceConfig
from sdk.durable_files import fsync_dir
from sdk.errors import ConfigError, MedgeError
from sdk.messages import Event
from sdk.tcp_nodelay import nodelay_on_socket_open, set_tcp_nodelay
from sdk.topics import TopicKind, topic
from sdk.trust import TrustStore

__all__ = [
    "CHECKS",
    "Check",
    "CheckStatus",
    "ClockState",
    "MqttReason",
    "SelfTest",
    "SelfTestReport",
    "judge_clock",
    "read_clock",
    "run_selftest",
]

log = logging.getLogger(__name__)

CHECKS = ("profile", "engine", "packages", "dicom", "broker", "clock", "disk", "spool")
"""The self-test's checks, in the order they run (names for ``skip``)."""

_DEFAULT_CALLING_AE = "MEDGE-SELFTEST"


class CheckStatus(StrEnum):
    """The verdict of one check."""

    PASS = "pass"
    WARN = "warn"
    """works, but something deserves a look (the exit code stays 0)."""
    FAIL = "fail"


class Check(BaseModel):
    """The result of one check.

    Attributes:
        key: a stable id (``profile``, ``package:<file>``, ``broker``, ...).
        name: what was checked, for people.
        status: pass, warn or fail.
        detail: what was found.
        fix: for a warning or failure, what to do, in one sentence.
        seconds: how long the check took.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    name: str
    status: CheckStatus
    detail: str
    fix: str | None = None
    seconds: float = 0.0


class SelfTestReport(BaseModel):
    """The whole checklist of one run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str
    device: str
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    checks: list[Check]

    @property
    def ok(self) -> bool:
        """No check failed (warnings allowed)."""
        return not self.failed

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if check.status is CheckStatus.FAIL]

    @property
    def exit_code(self) -> int:
        """0 when every check passed or warned, 1 when any failed."""
        return 0 if self.ok else 1

    def get(self, key: str) -> Check:
        """The check with ``key``.

        Raises:
            KeyError: no such check in this report.
        """
        for check in self.checks:
            if check.key == key:
                return check
        raise KeyError(key)


class MqttReason(IntEnum):
    """The MQTT 5 reason codes the broker check tells apart (CONNACK and PUBACK)."""

    SUCCESS = 0x00
    NO_MATCHING_SUBSCRIBERS = 0x10
    UNSPECIFIED_ERROR = 0x80
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USERNAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    BANNED = 0x8A
    BAD_AUTHENTICATION_METHOD = 0x8C
    TOPIC_NAME_INVALID = 0x90
    QUOTA_EXCEEDED = 0x97


_PUBLISH_ACCEPTED = {MqttReason.SUCCESS, MqttReason.NO_MATCHING_SUBSCRIBERS}


# --- the clock ------------------------------------------------------------------------------------------------

_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """Linux ``struct timex`` (``<sys/timex.h>``), read with ``modes = 0`` (no privileges needed)."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


@dataclass(frozen=True)
class ClockState:
    """What the system says about its clock.

    Attributes:
        source: where it was read (``adjtimex``, ``timedatectl``, or ``unknown``).
        synchronized: whether an NTP (or PTP) client keeps it in sync; None when unknown.
        max_error_s: the kernel's bound on the clock's error, if known.
        detail: how it was read, or why it could not be.
    """

    source: Literal["adjtimex", "timedatectl", "unknown"]
    synchronized: bool | None
    max_error_s: float | None = None
    detail: str = ""


def _adjtimex() -> ClockState | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.adjtimex
    except (OSError, AttributeError):
        return None
    timex = _Timex()
    state = call(ctypes.byref(timex))
    if state < 0:
        code = ctypes.get_errno()
        log.debug("adjtimex failed: %s", os.strerror(code))
        return None
    unsynced = bool(timex.status & _STA_UNSYNC) or state == _TIME_ERROR
    return ClockState(
        "adjtimex",
        not unsynced,
        timex.maxerror / 1e6,
        f"kernel clock state {state}, status 0x{timex.status:04x}, max error {timex.maxerror / 1e6:g} s",
    )


def _timedatectl() -> ClockState | None:
    tool = shutil.which("timedatectl")
    if tool is None:
        return None
    try:
        result = subprocess.run(
            [tool, "show", "-p", "NTPSynchronized", "--value"], capture_output=True, text=True, timeout=3, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = result.stdout.strip()
    if result.returncode != 0 or value not in ("yes", "no"):
        return None
    return ClockState("timedatectl", value == "yes", None, f"timedatectl: NTPSynchronized={value}")


def read_clock() -> ClockState:
    """Whether this machine's clock is synchronised: the kernel's view (adjtimex), else timedated's."""
    for reader in (_adjtimex, _timedatectl):
        state = reader()
        if state is not None:
            return state
    return ClockState("unknown", None, None, "neither adjtimex nor timedatectl could be read")


def judge_clock(state: ClockState, *, max_error_s: float = 1.0) -> Check:
    """The clock check's verdict on a :class:`ClockState` (a pure function, so any state can be judged)."""
    name = "clock"
    if state.synchronized is None:
        return Check(
            key="clock",
            name=name,
            status=CheckStatus.WARN,
            detail=f"cannot tell whether the clock is synchronised: {state.detail}",
            fix="Check time synchronisation by hand (timedatectl, or chronyc tracking).",
        )
    if not state.synchronized:
        return Check(
            key="clock",
            name=name,
            status=CheckStatus.FAIL,
            detail=f"the system clock is not synchronised ({state.detail})",
            fix="Enable time sync against the hospital's NTP server (chrony or `timedatectl set-ntp true`): "
            "finding times and TLS certificate checks depend on it.",
        )
    if state.max_error_s is not None and state.max_error_s > max_error_s:
        return Check(
            key="clock",
            name=name,
            status=CheckStatus.WARN,
            detail=f"synchronised, but the clock may be off by up to {state.max_error_s:g} s ({state.detail})",
            fix="Check the NTP server's reachability and quality (chronyc sources).",
        )
    return Check(key="clock", name=name, status=CheckStatus.PASS, detail=f"synchronised ({state.detail})")


# --- fixes for refused packages ---------------------------------------------------------------------------------


def _package_fix(refused: RefusedPackage, profile: DeviceProfile, keys_dir: Path | None) -> str:
    where = keys_dir or "the trusted keys folder"
    return {
        "archive": "The file is damaged or was altered after signing: install it again from a signed copy.",
        "files": "The file is damaged or was altered after signing: install it again from a signed copy.",
        "hashes": "The file is damaged or was altered after signing: install it again from a signed copy.",
        "signature": "The signature does not match the manifest (altered or forged): do not use it; "
        "install a fresh signed copy.",
        "key": f"It is signed by a key this appliance does not trust: add the signer's public key to {where} "
        "or install a package signed with a trusted key.",
        "format": "It is not a signed medge package this runtime can read: install one built and signed "
        "with a matching medge toolchain.",
        "profile": f"It was compiled for another board: install the package compiled for {profile.id}.",
        "engine": "The engine cannot load it on this board: fix the engine check first, or get the package "
        f"compiled for {profile.id}.",
        "golden": "This device does not reproduce the vendor's golden results: do not use the package; "
        "report it to the vendor with `medge selftest --json`.",
    }.get(refused.check, "Install a package signed by a trusted key and compiled for this board.")


_PROVIDER_FIXES = {
    "TensorrtExecutionProvider": "install the JetPack build of onnxruntime-gpu (CUDA + TensorRT) matching this "
    "L4T release",
    "CUDAExecutionProvider": "install the JetPack build of onnxruntime-gpu (CUDA + TensorRT) matching this L4T release",
    "NPU": "install the Intel NPU driver (intel-npu-driver) and reboot",
    "GPU": "install the Intel GPU compute runtime (intel-opencl-icd, level-zero) and add the service user to render",
}


# --- the checks -------------------------------------------------------------------------------------------------


class SelfTest:
    """The checklist for one appliance config; :meth:`run` runs it.

    Args:
        config: the appliance config (the one the service runs with).
        trusted: package-signing keys (default: ``packages.trusted_keys_dir``, else the local config's).
        calling_ae: the AE title the C-ECHO comes from (default: the first of
            ``dicom.allowed_calling_aes``, so the SCP accepts it, else ``MEDGE-SELFTEST``).
        min_free_mb: free space under ``data_dir`` below which the disk check fails (warns below twice that).
        timeout_s: the network checks' time limit (connect, association, CONNACK, PUBACK each).
        package_timeout_s: the time limit of verifying and golden-testing every package.
        service_user: the user the service runs as; a root self-test checks the spool belongs to it
            (when that user exists).
    """

    def __init__(
        self,
        config: ApplianceConfig,
        *,
        trusted: Mapping[str, Ed25519PublicKey] | None = None,
        calling_ae: str | None = None,
        min_free_mb: int = 1024,
        timeout_s: float = 5.0,
        package_timeout_s: float = 600.0,
        service_user: str | None = "medge",
    ) -> None:
        self.config = config
        self.trusted = trusted
        allowed = config.dicom.allowed_calling_aes
        self.calling_ae = calling_ae or (allowed[0] if allowed else _DEFAULT_CALLING_AE)
        self.min_free_mb = min_free_mb
        self.timeout_s = timeout_s
        self.package_timeout_s = package_timeout_s
        self.service_user = service_user
        self._facts: HostFacts | None = None
        self._facts_lock = threading.Lock()

    # -- running -----------------------------------------------------------------------------------------------

    def run(self, *, skip: Collection[str] = (), on_check: Callable[[Check], None] | None = None) -> SelfTestReport:
        """Run every check not in ``skip``, one after the other, each within its time limit.

        Args:
            skip: names from :data:`CHECKS` to leave out.
            on_check: called with each result as it comes (to print progress).

        Raises:
            ValueError: ``skip`` names a check that does not exist.
        """
        unknown = set(skip) - set(CHECKS)
        if unknown:
            raise ValueError(f"no such check: {', '.join(sorted(unknown))} (checks: {', '.join(CHECKS)})")
        plan: dict[str, tuple[str, Callable[[], list[Check]], float]] = {
            "profile": ("device profile", self.check_profile, 60.0),
            "engine": ("inference engine", self.check_engine, 60.0),
            "packages": ("packages", self.check_packages, self.package_timeout_s),
            "dicom": ("DICOM C-ECHO", self.check_dicom, 4 * self.timeout_s),
            "broker": ("MQTT broker", self.check_broker, 4 * self.timeout_s),
            "clock": ("clock", lambda: [judge_clock(read_clock())], 10.0),
            "disk": ("disk space", self.check_disk, 10.0),
            "spool": ("spool", self.check_spool, 30.0),
        }
        checks: list[Check] = []
        for key in CHECKS:
            if key in skip:
                continue
            name, function, limit = plan[key]
            for check in _bounded(key, name, function, limit):
                checks.append(check)
                if on_check is not None:
                    on_check(check)
        return SelfTestReport(site=self.config.appliance.site, device=self.config.appliance.device, checks=checks)

    # -- profile and engine --------------------------------------------------------------------------------------

    def _host(self) -> HostFacts:
        with self._facts_lock:
            if self._facts is None:
                self._facts = detect_host()
            return self._facts

    def _profile(self) -> DeviceProfile:
        configured = self.config.appliance.profile
        if configured:
            return get_profile(configured)
        return get_profile(match_profile(self._host(), list_profiles()).profile_id)

    def check_profile(self) -> list[Check]:
        """The configured profile exists and fits this host; or the detected one, when none is configured."""
        facts = self._host()
        configured = self.config.appliance.profile
        detection_problem = ""
        try:
            detected = match_profile(facts, list_profiles())
        except MedgeError as exc:
            detected = None
            detection_problem = str(exc)
        if configured:
            try:
                profile = get_profile(configured)
            except MedgeError as exc:
                return [
                    _fail(
                        "profile",
                        "device profile",
                        f"[appliance] profile = {configured!r}: {exc}",
                        "Set [appliance] profile to one of `medge profiles list`, or remove it to use detection.",
                    )
                ]
            if facts.cpu_arch is not None and profile.cpu_arch != facts.cpu_arch:
                return [
                    _fail(
                        "profile",
                        "device profile",
                        f"{profile.id} is for {profile.cpu_arch}, this host is {facts.cpu_arch}",
                        "Set [appliance] profile to this board's profile (`medge profiles detect` names it).",
                    )
                ]
            if detected is not None and detected.profile_id != profile.id:
                return [
                    Check(
                        key="profile",
                        name="device profile",
                        status=CheckStatus.WARN,
                        detail=f"configured {profile.id}; this host looks like {detected.profile_id} "
                        f"({detected.reasons[0]})",
                        fix=f"If this board is a {detected.profile_id}, set [appliance] profile to it and install "
                        "packages compiled for it; otherwise leave it.",
                    )
                ]
            return [_pass("profile", "device profile", f"{profile.id} (configured, and detected on this host)")]
        if detected is None:
            return [
                _fail(
                    "profile",
                    "device profile",
                    detection_problem,
                    "Set [appliance] profile to this board's profile (`medge profiles list`).",
                )
            ]
        return [_pass("profile", "device profile", f"{detected.profile_id} (detected: {detected.reasons[0]})")]

    def check_engine(self) -> list[Check]:
        """The profile's engine is installed and offers its first preference."""
        try:
            profile = self._profile()
        except MedgeError as exc:
            return [_fail("engine", "inference engine", f"no profile to check against: {exc}", "Fix the profile.")]
        facts = self._host()
        if profile.engine == "onnxruntime":
            version, available, engine_name = facts.onnxruntime_version, facts.onnxruntime_providers, "ONNX Runtime"
        else:
            version, available, engine_name = facts.openvino_version, facts.openvino_devices, "OpenVINO"
        if version is None:
            return [
                _fail(
                    "engine",
                    "inference engine",
                    f"{engine_name} is not installed; {profile.id} runs on it",
                    f"Install medge with {engine_name} for this board (see docs/appliance-image.md).",
                )
            ]
        present = [p for p in profile.preferences if any(a.split(".", 1)[0] == p for a in available)]
        missing = [p for p in profile.preferences if p not in present]
        offered = ", ".join(available) or "nothing"
        if not present:
            return [
                _fail(
                    "engine",
                    "inference engine",
                    f"{engine_name} {version} offers {offered}, none of {', '.join(profile.preferences)}",
                    f"To run {profile.id}, {_PROVIDER_FIXES.get(profile.preferences[0], 'install its engine build')}.",
                )
            ]
        if profile.preferences[0] in missing:
            first = profile.preferences[0]
            return [
                Check(
                    key="engine",
                    name="inference engine",
                    status=CheckStatus.WARN,
                    detail=f"{engine_name} {version} lacks {first}: inference falls back to {present[0]}",
                    fix=f"To use the accelerator, {_PROVIDER_FIXES.get(first, f'install the build offering {first}')}.",
                )
            ]
        return [
            _pass(
                "engine",
                "inference engine",
                f"{engine_name} {version} offers {', '.join(present)} for {profile.id}",
            )
        ]

    # -- packages ----------------------------------------------------------------------------------------------

    def check_packages(self) -> list[Check]:
        """Trusted keys exist; every installed package verifies and passes its golden samples on this device."""
        section = self.config.packages
        try:
            trusted = self.trusted if self.trusted is not None else TrustStore.load(section.trusted_keys_dir)
        except MedgeError as exc:
            return [_fail("keys", "trusted keys", str(exc), "Replace the unreadable key file with the signer's .pub.")]
        keys_dir = section.trusted_keys_dir or getattr(trusted, "folder", None)
        checks = []
        if not trusted:
            checks.append(
                _fail(
                    "keys",
                    "trusted keys",
                    f"no trusted package-signing key in {keys_dir or 'the trust store'}",
                    f"Install the vendor's public signing key (.pub) in {keys_dir or 'the trust store'} "
                    "(provisioning does).",
                )
            )
        else:
            checks.append(_pass("keys", "trusted keys", f"{len(trusted)} key(s): {', '.join(sorted(trusted))}"))
        try:
            profile = self._profile()
        except MedgeError as exc:
            return [*checks, _fail("packages", "packages", f"no profile to load them for: {exc}", "Fix the profile.")]
        if not section.dir.is_dir() or not any(section.dir.glob("*.medge")):
            return [
                *checks,
                _fail(
                    "packages",
                    "packages",
                    f"no package installed in {section.dir}",
                    "Install a signed model package (provisioning or an update from the dashboard does).",
                ),
            ]
        packages = PackageSet(
            section.dir,
            trusted,
            profile,
            fail_closed=self.config.appliance.fail_closed,
            cache_dir=self.config.appliance.data_dir / "engine-cache",
        )
        try:
            packages.load()
            for live in packages.live.values():
                golden, placement = live.golden, live.placement
                detail = (
                    f"{live.name} {live.manifest.model.version} verified; golden samples "
                    f"{golden.passed}/{golden.total} within {golden.tolerance:g} on {placement.device}"
                )
                key = f"package:{live.path.name}"
                if placement.degraded:
                    checks.append(
                        Check(
                            key=key,
                            name=f"package {live.path.name}",
                            status=CheckStatus.WARN,
                            detail=f"{detail}, degraded: {placement.reason}",
                            fix="It runs, slower, off the accelerator: fix the engine check to run it as compiled.",
                        )
                    )
                else:
                    checks.append(_pass(key, f"package {live.path.name}", detail))
            for refused in packages.refused:
                key, name = f"package:{refused.path.name}", f"package {refused.path.name}"
                if refused.check == "superseded":
                    checks.append(_pass(key, name, f"not in use: {refused.reason}"))
                else:
                    detail = f"refused ({refused.check}): {refused.reason}"
                    checks.append(_fail(key, name, detail, _package_fix(refused, profile, keys_dir)))
        finally:
            packages.close()
        return checks

    # -- DICOM -------------------------------------------------------------------------------------------------

    def check_dicom(self) -> list[Check]:
        """A C-ECHO to the appliance's own SCP, from ``calling_ae``."""
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        section = self.config.dicom
        host = "127.0.0.1" if section.host in ("0.0.0.0", "", "::") else section.host
        where = f"{section.ae_title}@{host}:{section.port}"
        name = "DICOM C-ECHO"
        try:
            with socket.create_connection((host, section.port), timeout=self.timeout_s) as probe:
                set_tcp_nodelay(probe)
        except ConnectionRefusedError:
            return [
                _fail(
                    "dicom",
                    name,
                    f"nothing listens on {host}:{section.port}: the medge service is not running",
                    "Start it (systemctl start medge-runtime); `journalctl -u medge-runtime` says why it stopped.",
                )
            ]
        except OSError as exc:
            return [
                _fail(
                    "dicom",
                    name,
                    f"cannot reach {host}:{section.port}: {exc}",
                    "Check [dicom] host and port, and the firewall.",
                )
            ]
        ae = AE(ae_title=self.calling_ae)
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = self.timeout_s
        started = time.perf_counter()
        assoc = ae.associate(host, section.port, ae_title=section.ae_title, evt_handlers=nodelay_evt_handlers())
        try:
            if assoc.is_established:
                status = assoc.send_c_echo()
                assoc.release()
                code = int(getattr(status, "Status", -1)) if status else -1
                if code == 0:
                    ms = (time.perf_counter() - started) * 1e3
                    return [_pass("dicom", name, f"C-ECHO {self.calling_ae} → {where}: success in {ms:.0f} ms")]
                return [
                    _fail(
                        "dicom",
                        name,
                        f"C-ECHO to {where} answered status 0x{code:04X}"
                        if code >= 0
                        else f"no C-ECHO response from {where} within {self.timeout_s:g} s",
                        "Restart the service (systemctl restart medge-runtime) and check its journal.",
                    )
                ]
            if assoc.is_rejected:
                return [_fail("dicom", name, *self._rejection(assoc, where))]
            return [
                _fail(
                    "dicom",
                    name,
                    f"{where} accepted the connection but no association was made (aborted or timed out)",
                    "Check that the port belongs to medge (ss -ltnp) and restart the service.",
                )
            ]
        finally:
            ae.shutdown()

    def _rejection(self, assoc: object, where: str) -> tuple[str, str]:
        primitive = getattr(getattr(assoc, "acceptor", None), "primitive", None)
        diagnostic = getattr(primitive, "diagnostic", None)
        if diagnostic == 3:
            return (
                f"{where} rejected calling AE title {self.calling_ae!r} (not in allowed_calling_aes)",
                "Run with --calling-ae set to one of [dicom] allowed_calling_aes.",
            )
        if diagnostic == 7:
            return (
                f"{where} does not answer to called AE title {self.config.dicom.ae_title!r}",
                "Another DICOM service owns this port, or the service runs another config: check [dicom] ae_title.",
            )
        return (f"{where} rejected the association (diagnostic {diagnostic})", "Check the service's journal.")

    # -- MQTT --------------------------------------------------------------------------------------------------

    def check_broker(self) -> list[Check]:
        """Connect as the device and publish a QoS 1 test event to its own event topic."""
        return [_BrokerProbe(self.config, self.timeout_s).run()]

    # -- disk and spool ----------------------------------------------------------------------------------------

    def check_disk(self) -> list[Check]:
        """Free space under ``data_dir`` (or its nearest existing parent)."""
        data_dir = self.config.appliance.data_dir
        target = _existing(data_dir)
        usage = shutil.disk_usage(target)
        free_mb = usage.free / 2**20
        quota_mb = self.config.dicom.spool_quota_mb
        detail = f"{free_mb:,.0f} MiB free of {usage.total / 2**20:,.0f} MiB under {target}"
        name = "disk space"
        if free_mb < self.min_free_mb:
            return [
                _fail(
                    "disk",
                    name,
                    f"{detail}; at least {self.min_free_mb} MiB needed",
                    "Free space on that file system (old logs, the spool's quarantine) or move data_dir to a larger "
                    "disk.",
                )
            ]
        if free_mb < 2 * self.min_free_mb or free_mb < quota_mb:
            why = "less than the spool quota" if free_mb < quota_mb else "getting low"
            return [
                Check(
                    key="disk",
                    name=name,
                    status=CheckStatus.WARN,
                    detail=f"{detail} ({why}: [dicom] spool_quota_mb = {quota_mb})",
                    fix="Free space, or lower [dicom] spool_quota_mb so a full disk does not refuse instances first.",
                )
            ]
        return [_pass("disk", name, detail)]

    def check_spool(self) -> list[Check]:
        """The spool folder takes a file durably (create, write, fsync, remove) and belongs to the service's user."""
        spool = self.config.appliance.data_dir / "spool"
        name = "spool"
        if not spool.is_dir():
            return [
                _fail(
                    "spool",
                    name,
                    f"the spool folder {spool} does not exist",
                    "Create the layout (systemd-tmpfiles --create, or start the service once).",
                )
            ]
        owner_problem = self._spool_owner(spool)
        if owner_problem is not None:
            return [owner_problem]
        probe = spool / f".selftest-{secrets.token_hex(6)}"
        user = _user_name(os.geteuid())
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, os.urandom(4096))
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(spool)
            probe.unlink()
            fsync_dir(spool)
        except OSError as exc:
            with contextlib.suppress(OSError):
                probe.unlink()
            fixes = {
                errno.EACCES: f"Give the spool to the service's user: chown -R {self.service_user or user} {spool}.",
                errno.EPERM: f"Give the spool to the service's user: chown -R {self.service_user or user} {spool}.",
                errno.EROFS: "The file system is read-only: remount it read-write, or move data_dir to one that is.",
                errno.ENOSPC: "The disk is full: free space under data_dir.",
                errno.EDQUOT: "The user's disk quota is used up: raise it or free space.",
            }
            return [
                _fail(
                    "spool",
                    name,
                    f"cannot write to {spool} as {user}: {exc.strerror}",
                    fixes.get(exc.errno or 0, "Check the disk and the folder's permissions (dmesg for I/O errors)."),
                )
            ]
        return [_pass("spool", name, f"{spool} takes a file durably (create, fsync, remove) as {user}")]

    def _spool_owner(self, spool: Path) -> Check | None:
        """As root every folder is writable: then check the spool belongs to the user the service runs as."""
        if os.geteuid() != 0 or not self.service_user:
            return None
        try:
            expected = pwd.getpwnam(self.service_user).pw_uid
        except KeyError:
            return None  # not an installed appliance (no service user): nothing to compare with
        owner = spool.stat().st_uid
        if owner == expected:
            return None
        owner_name = _user_name(owner)
        return _fail(
            "spool",
            "spool",
            f"{spool} belongs to {owner_name}, the service runs as {self.service_user} and cannot write it",
            f"chown -R {self.service_user}:{self.service_user} {spool}",
        )


def run_selftest(
    config: ApplianceConfig,
    *,
    trusted: Mapping[str, Ed25519PublicKey] | None = None,
    calling_ae: str | None = None,
    min_free_mb: int = 1024,
    timeout_s: float = 5.0,
    skip: Collection[str] = (),
    on_check: Callable[[Check], None] | None = None,
) -> SelfTestReport:
    """Run the checklist for ``config``; the arguments are those of :class:`SelfTest` and :meth:`SelfTest.run`."""
    selftest = SelfTest(config, trusted=trusted, calling_ae=calling_ae, min_free_mb=min_free_mb, timeout_s=timeout_s)
    return selftest.run(skip=skip, on_check=on_check)


# --- the broker probe -------------------------------------------------------------------------------------------


class _BrokerProbe:
    """One MQTT 5 connection as the device, driven from this thread with explicit, bounded waits."""

    def __init__(self, config: ApplianceConfig, timeout_s: float) -> None:
        self.config = config
        self.section = config.mqtt
        self.timeout_s = timeout_s
        self.connack: int | None = None
        self.puback: dict[int, int] = {}
        self.disconnect_reason: int | None = None
        site, device = config.appliance.site, config.appliance.device
        self.client_id = self.section.client_id or f"medge-{site}-{device}"
        self.topic = topic(site, device, TopicKind.EVENT)
        self.where = f"{self.section.host}:{self.section.port}"

    def run(self) -> Check:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        section = self.section
        try:
            context = self._tls()
            password = self._password()
            self._preflight(context)
        except _Refused as refused:
            return refused.check
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5, reconnect_on_failure=False
        )
        client.manual_ack_set(True)  # leave what the broker delivers unacknowledged: it goes to the service
        client.connect_timeout = min(section.connect_timeout_s, self.timeout_s)
        client.on_socket_open = nodelay_on_socket_open
        client.on_connect = self._on_connect
        client.on_publish = lambda _c, _u, mid, rc, _p: self.puback.__setitem__(mid, int(rc.value))
        client.on_disconnect = self._on_disconnect
        if context is not None:
            client.tls_set_context(context)
        if section.username is not None:
            client.username_pw_set(section.username, password)
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = section.session_expiry_s  # the service's session lives on
        tls = "TLS" if context is not None else "plain TCP"
        try:
            client.connect(
                section.host, section.port, keepalive=section.keepalive_s, clean_start=False, properties=properties
            )
        except (OSError, ValueError) as exc:  # the pre-flight got through a moment ago: a flapping broker
            return _fail(
                "broker",
                "MQTT broker",
                f"cannot connect to {self.where} ({tls}): {exc}",
                "Check the broker's log; run the self-test again.",
            )
        try:
            if not self._loop(client, lambda: self.connack is not None or self.disconnect_reason is not None):
                return _fail(
                    "broker",
                    "MQTT broker",
                    f"no CONNACK from {self.where} within {self.timeout_s:g} s",
                    "Check that the port is an MQTT listener (with TLS when mqtt.ca_file is set).",
                )
            if self.connack != MqttReason.SUCCESS:
                return self._connect_refused()
            message = Event(
                site=self.config.appliance.site,
                device=self.config.appliance.device,
                kind="selftest",
                severity="info",
                message="self-test: the broker is reachable and this device may publish",
            )
            info = client.publish(self.topic, message.to_json(), qos=1)
            if not self._loop(client, lambda: info.mid in self.puback or self.disconnect_reason is not None):
                return _fail(
                    "broker",
                    "MQTT broker",
                    f"connected, but no PUBACK for a QoS 1 event to {self.topic} within {self.timeout_s:g} s",
                    "Check the broker's log and its ACL for this device.",
                )
            reason = self.puback.get(info.mid)
            if reason is None or reason not in _PUBLISH_ACCEPTED:
                return self._publish_refused(reason)
            who = section.username or "its certificate"
            nobody = " (no subscriber now)" if reason == MqttReason.NO_MATCHING_SUBSCRIBERS else ""
            return _pass(
                "broker",
                "MQTT broker",
                f"connected to {self.where} ({tls}) as {who}; a QoS 1 event to {self.topic} got PUBACK success{nobody}",
            )
        finally:
            with contextlib.suppress(Exception):
                if client.is_connected():
                    client.disconnect()
                    self._loop(client, lambda: not client.is_connected(), timeout=1.0)
            with contextlib.suppress(Exception):
                sock = client.socket()
                if sock is not None:
                    sock.close()

    def _preflight(self, context: ssl.SSLContext | None) -> None:
        """Reach the broker's port (and finish a TLS handshake) first, to tell apart why a connection fails.

        paho reports these failures less precisely and leaves the socket of a failed handshake open.
        """
        host, port = self.section.host, self.section.port
        try:
            with socket.create_connection((host, port), timeout=self.timeout_s) as sock:
                set_tcp_nodelay(sock)
                if context is not None:
                    with context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False) as tls:
                        tls.settimeout(self.timeout_s)
                        tls.do_handshake()
                        with contextlib.suppress(OSError):  # a polite close_notify, so the broker logs no error
                            tls.unwrap()
        except ConnectionRefusedError as exc:
            raise _Refused(
                f"nothing listens at {self.where}: the broker is down or elsewhere",
                "Start the broker (systemctl status mosquitto) or correct [mqtt] host and port.",
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            raise _Refused(
                f"the broker's certificate at {self.where} does not verify: {exc.verify_message}",
                "Install the site CA from the device's credential bundle as mqtt.ca_file, and dial the host name "
                "the broker's certificate names.",
            ) from exc
        except ssl.SSLError as exc:
            raise _Refused(
                f"the TLS handshake with {self.where} failed: {exc.reason or exc}",
                "Check that this port is the broker's TLS listener, and the device certificate if the broker asks "
                "for one.",
            ) from exc
        except TimeoutError as exc:
            raise _Refused(
                f"{self.where} did not answer within {self.timeout_s:g} s",
                "Check [mqtt] host and port and the firewall (a dropped connection looks like this).",
            ) from exc
        except OSError as exc:
            raise _Refused(
                f"cannot reach {self.where}: {exc.strerror or exc}",
                "Check [mqtt] host and port, DNS, and the network route to the broker.",
            ) from exc

    def _on_connect(self, _client: object, _userdata: object, _flags: object, reason: object, _props: object) -> None:
        self.connack = int(reason.value)  # type: ignore[attr-defined]

    def _on_disconnect(self, _client: object, _userdata: object, _flags: object, reason: object, _p: object) -> None:
        self.disconnect_reason = int(getattr(reason, "value", 0) or 0)

    def _loop(self, client: Any, done: Callable[[], bool], timeout: float | None = None) -> bool:
        """Drive the connection until ``done()`` or the time limit; return whether it is done.

        paho's own ``loop()`` would open a loopback socket pair to wake itself; reading and
        writing on select() here needs none.
        """
        deadline = time.monotonic() + (self.timeout_s if timeout is None else timeout)
        while not done():
            left = deadline - time.monotonic()
            sock = client.socket()
            if left <= 0 or sock is None:
                return done()
            buffered = sock.pending() if hasattr(sock, "pending") else 0  # TLS bytes already decrypted
            if buffered:
                readable, writable = True, client.want_write()
            else:
                try:
                    ready = select.select([sock], [sock] if client.want_write() else [], [], min(0.1, left))
                except (OSError, ValueError):  # closed under us
                    return done()
                readable, writable = bool(ready[0]), bool(ready[1])
            if readable and client.loop_read() != 0:
                return done()
            if writable and client.socket() is not None and client.loop_write() != 0:
                return done()
            if client.socket() is not None:
                client.loop_misc()
        return True

    def _tls(self) -> ssl.SSLContext | None:
        try:
            return self.section.ssl_context()
        except ConfigError as exc:
            if exc.field == "mqtt.ca_file":
                raise _Refused(
                    f"cannot load mqtt.ca_file {self.section.ca_file}: {exc.message}",
                    "Install ca.crt from the device's credential bundle where mqtt.ca_file points.",
                ) from exc
            raise _Refused(
                f"cannot load the device certificate {self.section.cert_file}: {exc.message}",
                "Install client.crt and client.key from the device's credential bundle.",
            ) from exc

    def _password(self) -> str | None:
        try:
            return self.section.password()
        except ConfigError as exc:
            raise _Refused(
                f"cannot read mqtt.password_file {self.section.password_file}: {exc.message}",
                "Install the password file from the device's credential bundle, readable by the service's user.",
            ) from exc

    def _connect_refused(self) -> Check:
        code = self.connack
        who = self.section.username or "the device certificate"
        if code is None:
            return _fail(
                "broker",
                "MQTT broker",
                f"{self.where} closed the connection before a CONNACK (reason {self.disconnect_reason})",
                "Check the broker's log: it may refuse the client id or the protocol version.",
            )
        try:
            reason = MqttReason(code)
        except ValueError:
            reason = None
        if reason in (MqttReason.BAD_USERNAME_OR_PASSWORD, MqttReason.NOT_AUTHORIZED, MqttReason.BANNED):
            # Mosquitto 2.0 answers 0x87 for a wrong password as well as for an unknown or removed identity.
            if self.section.username is not None:
                return _fail(
                    "broker",
                    "MQTT broker",
                    f"{self.where} refused the username or password of {who} (CONNACK 0x{code:02X}: a wrong "
                    "password, or the device is not registered there or was removed)",
                    "Install the device's current credential bundle (mqtt.password_file), or re-add the device on "
                    "the broker (medge broker add-device --replace) and reload it.",
                )
            return _fail(
                "broker",
                "MQTT broker",
                f"{self.where} does not let {who} connect (CONNACK 0x{code:02X}: unknown, revoked or denied)",
                "Install the device's current certificate bundle, or re-add the device on the broker "
                "(medge broker add-device --replace) and reload it.",
            )
        label = reason.name.lower() if reason is not None else "unknown"
        return _fail(
            "broker",
            "MQTT broker",
            f"{self.where} refused the connection: CONNACK 0x{code:02X} ({label})",
            "Check the broker's log for this client.",
        )

    def _publish_refused(self, code: int | None) -> Check:
        if code == MqttReason.NOT_AUTHORIZED:
            return _fail(
                "broker",
                "MQTT broker",
                f"connected, but the broker does not let {self.section.username or 'this device'} publish to "
                f"{self.topic} (PUBACK 0x87: not authorised)",
                "Make [appliance] site/device match the broker identity (site/device), or re-add the device on the "
                "broker and reload it.",
            )
        detail = "the connection closed before a PUBACK" if code is None else f"PUBACK 0x{code:02X}"
        return _fail(
            "broker",
            "MQTT broker",
            f"connected, but a QoS 1 event to {self.topic} was refused: {detail}",
            "Check the broker's log and its ACL for this device.",
        )


class _Refused(Exception):
    """A broker check that ends before connecting (its result carried along)."""

    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.check = _fail("broker", "MQTT broker", detail, fix)


# --- helpers ----------------------------------------------------------------------------------------------------


def _pass(key: str, name: str, detail: str) -> Check:
    return Check(key=key, name=name, status=CheckStatus.PASS, detail=detail)


def _fail(key: str, name: str, detail: str, fix: str) -> Check:
    return Check(key=key, name=name, status=CheckStatus.FAIL, detail=detail, fix=fix)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a container user without a passwd entry
        return f"uid {uid}"


def _existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _bounded(key: str, name: str, function: Callable[[], list[Check]], limit_s: float) -> list[Check]:
    """Run one check in a daemon thread; past ``limit_s`` it fails as hung (the thread is abandoned)."""
    outcome: list[list[Check]] = []
    started = time.perf_counter()

    def target() -> None:
        try:
            outcome.append(function())
        except MedgeError as exc:
            outcome.append([_fail(key, name, str(exc), "Fix what the message names, then run the self-test again.")])
        except Exception as exc:  # a check that crashes is a failed check, not a crashed checklist
            log.exception("self-test check %s crashed", key)
            outcome.append([_fail(key, name, f"the check itself failed: {exc!r}", "Report this with the log.")])

    thread = threading.Thread(target=target, name=f"medge-selftest-{key}", daemon=True)
    thread.start()
    thread.join(limit_s)
    seconds = round(time.perf_counter() - started, 3)
    if thread.is_alive() or not outcome:
        return [
            Check(
                key=key,
                name=name,
                status=CheckStatus.FAIL,
                detail=f"did not finish within {limit_s:g} s (hung)",
                fix="Check the component it talks to, then run the self-test again.",
                seconds=seconds,
            )
        ]
    return [check.model_copy(update={"seconds": seconds}) for check in outcome[0]]
