"""Which model packages go live on this appliance: verify, load, accept on the device.

At start and after any package change, every installed package is verified
(signature, hashes, format), loaded on the profile's engine and devices, and
accepted only if its golden samples reproduce within the package's tolerance.
A package whose plugins (:mod:`sdk.plugins`) are not installed here from the
distribution and version it was compiled with is refused too (check ``plugin``).
A package that fails any step does not go live; the appliance reports the
reason (an event, the heartbeat, ``/readyz``) and keeps serving the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from device_profiles import DeviceProfile
from runtime.analyzer import Analyzer, GoldenReport
from runtime.engines import Placement
from sdk.errors import ConfigError, EngineError, PackageError, VerificationError
from sdk.manifest import Manifest
from sdk.model_config import resolve_plugins
from sdk.model_versions import version_key
from sdk.package import verify_package
from sdk.plugins import get_registry

__all__ = ["EventSink", "LivePackage", "PackageSet", "RefusedPackage"]

log = logging.getLogger(__name__)

EventSink = Callable[[str, str, str, Mapping[str, object]], None]
"""``(kind, severity, message, detail)``: where the package set reports what it did."""


@dataclass
class LivePackage:
    """A package that passed verification and acceptance and now takes studies."""

    path: Path
    manifest: Manifest
    sha256: str
    analyzer: Analyzer
    golden: GoldenReport

    @property
    def name(self) -> str:
        return self.manifest.model.name

    @property
    def placement(self) -> Placement:
        return self.analyzer.placement


@dataclass(frozen=True)
class RefusedPackage:
    """A package that did not go live, and why."""

    path: Path
    reason: str
    check: str


class PackageSet:
    """The packages installed in a folder, as live or refused.

    Args:
        folder: where ``*.medge`` files are installed.
        trusted: the signing keys this appliance trusts.
        profile: this appliance's device profile.
        fail_closed: refuse a package whose engine fell back from the profile's
            accelerator, instead of running it degraded (site config).
        cache_dir: engine model cache (OpenVINO).
        on_event: receives ``package-live``, ``package-refused`` and ``engine-degraded`` events.

    Events: ``package-live`` (info), ``engine-degraded`` (warning),
    ``package-refused`` (error).
    """

    def __init__(
        self,
        folder: Path,
        trusted: Mapping[str, Ed25519PublicKey],
        profile: DeviceProfile,
        *,
        fail_closed: bool = False,
        cache_dir: Path | None = None,
        on_event: EventSink | None = None,
    ) -> None:
        self.folder = folder
        self.trusted = trusted
        self.profile = profile
        self.fail_closed = fail_closed
        self.cache_dir = cache_dir
        self._emit = on_event or (lambda kind, severity, message, detail: None)
        self.live: dict[str, LivePackage] = {}
        self.refused: list[RefusedPackage] = []

    def _refuse(self, path: Path, check: str, reason: str) -> None:
        self.refused.append(RefusedPackage(path, reason, check))
        log.error("package %s refused (%s): %s", path.name, check, reason)
        self._emit("package-refused", "error", f"{path.name} did not go live: {reason}", {"check": check})

    def _accept(self, path: Path) -> LivePackage | None:
        try:
            package = verify_package(path, self.trusted)
        except VerificationError as exc:
            self._refuse(path, exc.check, str(exc))
            return None
        except PackageError as exc:
            self._refuse(path, "format", str(exc))
            return None
        manifest = package.manifest
        if manifest.engine.profile != self.profile.id:
            self._refuse(
                path, "profile", f"compiled for {manifest.engine.profile}, this appliance is {self.profile.id}"
            )
            return None
        try:
            for record in manifest.compile.plugins:
                get_registry().check(record)
            resolve_plugins(manifest.model)  # imports them and makes their hooks with the package's settings
        except ConfigError as exc:
            self._refuse(path, "plugin", exc.message)
            return None
        try:
            analyzer = Analyzer(
                package, self.profile.preferences, threads=self.profile.default_threads, cache_dir=self.cache_dir
            )
        except EngineError as exc:
            self._refuse(path, "engine", str(exc))
            return None
        placement = analyzer.placement
        if placement.degraded:
            detail = {"device": placement.device, "nodes_by_provider": placement.nodes_by_provider}
            if self.fail_closed:
                analyzer.close()
                self._refuse(path, "engine", f"fail-closed: {placement.reason}")
                return None
            self._emit("engine-degraded", "warning", f"{manifest.model.name}: {placement.reason}", detail)
        try:
            golden = analyzer.check_golden()
        except EngineError as exc:
            analyzer.close()
            self._refuse(path, "golden", str(exc))
            return None
        if not golden.ok:
            analyzer.close()
            self._refuse(
                path,
                "golden",
                f"golden samples: {golden.passed}/{golden.total} within tolerance {golden.tolerance:g} "
                f"(worst |Δ| {golden.worst_delta:.3g}) on {placement.device}",
            )
            return None
        return LivePackage(path, manifest, package.sha256, analyzer, golden)

    def load(self) -> None:
        """(Re)load every package in the folder; the newest version of each model goes live."""
        self.close()
        candidates = [live for path in sorted(self.folder.glob("*.medge")) if (live := self._accept(path))]
        candidates.sort(key=lambda p: version_key(p.manifest.model.version), reverse=True)
        for package in candidates:
            if package.name in self.live:
                package.analyzer.close()
                newer = self.live[package.name].manifest.model.version
                self._refuse(package.path, "superseded", f"version {package.manifest.model.version} < {newer}")
                continue
            self.live[package.name] = package
            self._emit(
                "package-live",
                "info",
                f"{package.name} {package.manifest.model.version} live on {package.placement.device}",
                {"sha256": package.sha256, "precision": package.manifest.engine.precision},
            )

    def close(self) -> None:
        for package in self.live.values():
            package.analyzer.close()
        self.live.clear()
        self.refused.clear()
