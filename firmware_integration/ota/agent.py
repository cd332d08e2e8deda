"""The appliance side of over-the-air updates: take an ``update`` command to a live package or a rollback.

::

    cmd "update" ─▶ accepted (answered at once) ─▶ download (HTTPS, resumable) ─▶ verify (trusted keys,
    hashes, version goes up) ─▶ install (into the inactive slot) ─▶ golden (the slot loaded on the side:
    the package must go live there) ─▶ switch (the packages symlink, then reload) ─▶ probation (watch it)
    ─▶ done │ refused (nothing changed) │ rolled-back (the previous slot is live again)

Every step is written to the journal before it starts and reported as an
``ota`` event. :meth:`OtaAgent.recover` runs at service start, before the
packages load, and undoes whatever a kill left half-done: before the switch
the active slot was never touched (``refused``); after it, the previous slot
is made live again (``rolled-back``): a crash on probation counts as a regression.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from device_profiles import DeviceProfile
from firmware_integration.layout import Layout
from firmware_integration.ota.download import PackageDownload
from firmware_integration.ota.errors import OtaError
from firmware_integration.ota.journal import FINAL_STEPS, Journal, JournalEntry
from firmware_integration.ota.keys import RotationResult, rotate_keys
from firmware_integration.ota.slots import Slots
from runtime.packages import EventSink, PackageSet
from runtime.reporting import CommandHandler
from sdk.appliance_config import ApplianceConfig
from sdk.config_files import config_error_from_validation
from sdk.errors import PackageError, VerificationError
from sdk.fleet_contracts import OTA_EVENT, KeyRotation, OtaReport, OtaStep, PackageOffer, UpdateRequest
from sdk.messages import Command, PackageRef
from sdk.model_versions import version_key
from sdk.package import open_package, verify_package
from sdk.trust import TrustStore, local_config_dir

__all__ = ["ApplianceHandle", "OtaAgent", "OtaPaths"]

log = logging.getLogger(__name__)

_SPACE_MARGIN = 16 * 1024 * 1024
_PROGRESS_STEPS = 10  # a download reports at most every 10 %


class ApplianceHandle(Protocol):
    """What the agent needs of the running appliance (:class:`runtime.appliance.Appliance` has it)."""

    @property
    def profile(self) -> DeviceProfile: ...

    @property
    def packages(self) -> PackageSet: ...

    def reload_packages(self) -> list[PackageRef]: ...

    def package_refs(self) -> list[PackageRef]: ...

    def package_outcomes(self) -> dict[str, dict[str, int]]: ...


@dataclass(frozen=True)
class OtaPaths:
    """Where updates keep their files.

    Attributes:
        packages_dir: the runtime's ``[packages] dir``; becomes a symlink to the active slot.
        slots_dir: holds the slot folders ``A`` and ``B`` (same file system as ``packages_dir``).
        trusted_keys_dir: the trust store packages are verified with (rotated over the air).
        work_dir: the journal, the download in progress, the record of the last key rotation.
    """

    packages_dir: Path
    slots_dir: Path
    trusted_keys_dir: Path
    work_dir: Path

    @classmethod
    def from_layout(cls, layout: Layout) -> OtaPaths:
        return cls(layout.packages_dir, layout.slots_dir, layout.trusted_keys_dir, layout.state_dir / "ota")

    @classmethod
    def from_config(cls, config: ApplianceConfig) -> OtaPaths:
        """The appliance config's folders: slots beside the packages folder, work files in the data dir."""
        packages = config.packages.dir
        keys = config.packages.trusted_keys_dir or local_config_dir() / "trusted_keys"
        return cls(packages, packages.parent / "slots", keys, config.appliance.data_dir / "ota")

    @property
    def journal(self) -> Path:
        return self.work_dir / "journal.json"

    @property
    def downloads(self) -> Path:
        return self.work_dir / "download"

    def part(self, offer: PackageOffer) -> Path:
        """The download of an offer (kept between tries: a re-sent update resumes it)."""
        return PackageDownload.part_path(offer, self.downloads)


class _Refused(Exception):
    """A check failed before the switch: nothing changed."""


class _Regressed(Exception):
    """The new package failed after the switch: roll back."""


class _Stopped(Exception):
    """The service is stopping: the journal stays, :meth:`OtaAgent.recover` finishes the update at the next start."""


def _now() -> datetime:
    return datetime.now(UTC)


class OtaAgent:
    """Runs over-the-air updates and key rotations for one appliance.

    Use::

        agent = OtaAgent(config, paths=OtaPaths.from_layout(layout))
        agent.recover()                                   # before the packages load
        appliance = Appliance(config, commands=agent.commands())
        appliance.start()
        agent.start(appliance, emit)                      # reports what recover() did; takes commands
        ...
        agent.stop()                                      # before appliance.stop()

    Args:
        config: the appliance config (``[dashboard]``: where packages come from).
        paths: where slots, keys and work files are (default: from the config).
        min_failures: failed analyses on probation before the failure rate counts.
        failure_margin: how far (absolute) the failure rate may rise over the previous package's.
        poll_s: how often probation looks at the appliance.
        download_timeout_s: connect and read timeout of the download.
        download_attempts: tries of a download that is cut off (each continues where it stopped).
        download_backoff_s: the wait before the second try (doubles).

    Events (``ota``, detail :class:`~sdk.fleet_contracts.OtaReport`): one per
    step, download progress at most every 10 %; ``keys-rotated`` after a key rotation.

    Raises:
        OtaError: (from the command handlers) a bad request, busy, a refused version or key rotation.
    """

    def __init__(
        self,
        config: ApplianceConfig,
        *,
        paths: OtaPaths | None = None,
        min_failures: int = 3,
        failure_margin: float = 0.2,
        poll_s: float = 0.5,
        download_timeout_s: float = 30.0,
        download_attempts: int = 3,
        download_backoff_s: float = 1.0,
    ) -> None:
        self.config = config
        self.paths = paths or OtaPaths.from_config(config)
        self.slots = Slots(self.paths.packages_dir, self.paths.slots_dir)
        self.journal = Journal(self.paths.journal)
        self.min_failures = min_failures
        self.failure_margin = failure_margin
        self.poll_s = poll_s
        self.download_timeout_s = download_timeout_s
        self.download_attempts = download_attempts
        self.download_backoff_s = download_backoff_s
        self.trusted = TrustStore.load(self.paths.trusted_keys_dir)
        self._appliance: ApplianceHandle | None = None
        self._emit: EventSink = lambda kind, severity, message, detail: None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running: str | None = None  # update id of the update on the agent's thread
        self._recovered = False
        self._unreported: JournalEntry | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    def recover(self) -> OtaReport | None:
        """Make the slots and the journal consistent after a kill at any step; call before the packages load.

        Only files change here (the appliance need not run). The outcome is
        recorded in the journal and reported by :meth:`start`, once events
        can be made durable.

        Returns:
            The final report of an update a kill interrupted (or finished unreported), else None.
        """
        self.slots.ensure()
        self._recovered = True
        entry = self.journal.read()
        if entry is None:
            return None
        if entry.step not in FINAL_STEPS:
            interrupted = entry.step
            active = self.slots.active()
            if interrupted in (OtaStep.SWITCH, OtaStep.PROBATION):
                if active != entry.previous_slot:
                    self.slots.activate(entry.previous_slot)
                final = OtaStep.ROLLED_BACK
            else:
                if interrupted in (OtaStep.INSTALL, OtaStep.GOLDEN) and active != entry.target_slot:
                    self.slots.empty(entry.target_slot)
                final = OtaStep.REFUSED
            entry = entry.model_copy(update={"step": final, "ok": False, "reason": f"interrupted at {interrupted}"})
            self.journal.write(entry)
            log.warning("update %s of %s was interrupted at %s: %s", entry.update_id, entry.package, interrupted, final)
        self._unreported = entry
        return self._as_report(entry)

    def start(self, appliance: ApplianceHandle, emit: EventSink) -> None:
        """Attach to the running appliance, report the outcome of an interrupted update, take commands.

        Args:
            appliance: the started appliance.
            emit: ``(kind, severity, message, detail)``: where reports go (the appliance's event path,
                which makes them durable events for the dashboard).
        """
        self._appliance = appliance
        self._emit = emit
        if not self._recovered:  # the embedder skipped recover(): do it now, and reload if it moved the slot
            before = self.paths.packages_dir.resolve()
            self.recover()
            if self.paths.packages_dir.resolve() != before:
                appliance.reload_packages()
        if self._unreported is not None:
            self._report(self._unreported, self._unreported.step, ok=self._unreported.ok)
            self.journal.clear()
            self._unreported = None

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the update in progress at its next checkpoint; the journal keeps it for :meth:`recover`."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def commands(self) -> dict[str, CommandHandler]:
        """The command handlers this agent serves: ``update`` and ``rotate-keys``."""
        return {"update": self.handle_update, "rotate-keys": self.handle_rotate_keys}

    @property
    def busy(self) -> str | None:
        """The id of the update running now, or None."""
        return self._running

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the update running now to end; True if none runs (any more)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _attached(self) -> ApplianceHandle:
        if self._appliance is None:
            raise OtaError("the update agent is not started yet; send the command again in a moment")
        return self._appliance

    # -- reporting ---------------------------------------------------------------------------------------------------

    @staticmethod
    def _as_report(
        entry: JournalEntry, step: OtaStep | None = None, *, ok: bool = True, progress: float | None = None
    ) -> OtaReport:
        step = step or entry.step
        reason = entry.reason if step in FINAL_STEPS else None
        return OtaReport(
            update_id=entry.update_id, step=step, ok=ok, package=entry.package, reason=reason, progress=progress
        )

    def _report(
        self, entry: JournalEntry, step: OtaStep, *, ok: bool = True, progress: float | None = None, note: str = ""
    ) -> None:
        report = self._as_report(entry, step, ok=ok, progress=progress)
        what = {
            OtaStep.ACCEPTED: "accepted",
            OtaStep.DOWNLOAD: f"downloading ({entry.offer.size} bytes)"
            if progress is None
            else f"downloaded {progress:.0%}",
            OtaStep.VERIFY: "verifying signature, hashes and version",
            OtaStep.INSTALL: f"installing into slot {entry.target_slot}",
            OtaStep.GOLDEN: f"running the golden samples of slot {entry.target_slot}",
            OtaStep.SWITCH: f"switching to slot {entry.target_slot}",
            OtaStep.PROBATION: f"live; on probation for {entry.probation_s:g} s",
            OtaStep.DONE: f"live; passed probation (slot {entry.previous_slot} kept as the rollback target)",
            OtaStep.REFUSED: f"refused, nothing changed: {entry.reason}",
            OtaStep.ROLLED_BACK: f"rolled back to slot {entry.previous_slot}: {entry.reason}",
        }[step]
        severity = "info" if ok else "error"
        message = f"update {entry.update_id}: {entry.package} {what}{note}"
        try:
            self._emit(OTA_EVENT, severity, message, report.model_dump(mode="json"))
        except Exception:  # reporting must not stop an update half-way
            log.exception("could not report %s", message)

    def _advance(self, entry: JournalEntry, step: OtaStep, **changes: Any) -> JournalEntry:
        """Record the step in the journal, then report it (a kill after the write is recovered as this step)."""
        if self._stop.is_set():
            raise _Stopped(str(entry.step))
        entry = entry.model_copy(update={"step": step, **changes})
        self.journal.write(entry)
        self._report(entry, step)
        return entry

    def _finish(self, entry: JournalEntry, step: OtaStep, *, reason: str | None = None) -> None:
        """Record and report the end of an update, then drop the journal (and the download, unless cut off)."""
        ended_at = entry.step
        entry = entry.model_copy(update={"step": step, "ok": step is OtaStep.DONE, "reason": reason})
        self.journal.write(entry)
        self._report(entry, step, ok=entry.ok)
        self.journal.clear()
        if ended_at not in (OtaStep.ACCEPTED, OtaStep.DOWNLOAD):  # a download that did not finish is resumed later
            self.paths.part(entry.offer).unlink(missing_ok=True)
        level = logging.INFO if entry.ok else logging.ERROR
        log.log(level, "update %s of %s: %s%s", entry.update_id, entry.package, step, f" ({reason})" if reason else "")

    # -- the update command ------------------------------------------------------------------------------------------

    def handle_update(self, command: Command) -> dict[str, object]:
        """``update``: check the request and start the update on the agent's thread; answer at once.

        Raises:
            OtaError: malformed request, another update running, no dashboard
                configured, or the version does not go up (without ``force``).
        """
        appliance = self._attached()
        try:
            request = UpdateRequest.model_validate(command.args)
        except ValidationError as exc:
            raise config_error_from_validation(exc, None, error=OtaError) from exc
        with self._lock:
            if self._running is not None:
                if self._running == request.update_id:  # a re-sent command: the update is already under way
                    return {"accepted": True, "update_id": request.update_id, "already_running": True}
                raise OtaError(f"update {self._running} is still running; send this one when it has ended")
            active = self.slots.active()
            entry = JournalEntry(
                update_id=request.update_id,
                offer=request.package,
                force=request.force,
                probation_s=request.probation_s,
                previous_slot=active,
                target_slot=self.slots.other(active),
                live_before=[ref.name for ref in appliance.package_refs()],
            )
            try:
                self._check_dashboard()
                self._check_version(appliance.package_refs(), request.package.name, request.package.version, entry)
            except _Refused as exc:
                refused = entry.model_copy(update={"step": OtaStep.REFUSED, "ok": False, "reason": str(exc)})
                self._report(refused, OtaStep.REFUSED, ok=False)
                raise OtaError(str(exc)) from None
            self.journal.write(entry)
            self._report(entry, OtaStep.ACCEPTED)
            self._running = entry.update_id
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, args=(entry,), name="medge-ota", daemon=True)
            self._thread.start()
        return {"accepted": True, "update_id": entry.update_id}

    def _check_dashboard(self) -> None:
        section = self.config.dashboard
        if not section.url:
            raise _Refused("no dashboard URL is configured ([dashboard] url)")
        if not section.url.startswith("https://") and not self.config.appliance.demo:
            raise _Refused(f"the dashboard URL {section.url} is not https:// (plain HTTP is demo-only)")
        if section.token_file is None:
            raise _Refused("no device token is configured ([dashboard] token_file)")

    @staticmethod
    def _check_version(live: list[PackageRef], name: str, version: str, entry: JournalEntry) -> None:
        current = next((ref for ref in live if ref.name == name), None)
        if current is None or entry.force:
            return
        if version_key(version) <= version_key(current.version):
            raise _Refused(
                f"{name} {current.version} is live; {version} does not go up (only an admin can force a downgrade)"
            )

    def _run(self, entry: JournalEntry) -> None:
        try:
            self._update(entry)
        except Exception:  # never reached by design; the journal is recovered at the next start
            log.exception("update %s failed unexpectedly", entry.update_id)
        finally:
            self._running = None

    def _update(self, entry: JournalEntry) -> None:
        appliance = self._attached()
        switched = False
        try:
            entry = self._advance(entry, OtaStep.DOWNLOAD)
            package = self._download(entry)
            entry = self._advance(entry, OtaStep.VERIFY)
            self._verify(entry, package, appliance)
            entry = self._advance(entry, OtaStep.INSTALL)
            self._install(entry, package)
            entry = self._advance(entry, OtaStep.GOLDEN)
            self._golden(entry, appliance)
            baseline = appliance.package_outcomes().get(entry.offer.name, {})
            entry = self._advance(entry, OtaStep.SWITCH, baseline=dict(baseline))
            switched = True
            self._switch(entry, appliance)
            deadline = _now() + timedelta(seconds=entry.probation_s)
            entry = self._advance(entry, OtaStep.PROBATION, probation_deadline=deadline)
            self._probation(entry, appliance)
            self._finish(entry, OtaStep.DONE)
        except _Stopped as exc:
            log.warning("update %s stopped at %s; it is finished at the next start", entry.update_id, exc)
        except _Refused as exc:
            self._refuse(entry, str(exc))
        except _Regressed as exc:
            self._roll_back(entry, appliance, str(exc))
        except Exception as exc:  # a bug or an I/O failure: still end in a known state
            log.exception("update %s failed at %s", entry.update_id, entry.step)
            reason = f"{entry.step} failed: {type(exc).__name__}: {exc}"
            if switched:
                self._roll_back(entry, appliance, reason)
            else:
                self._refuse(entry, reason)

    def _refuse(self, entry: JournalEntry, reason: str) -> None:
        if entry.step in (OtaStep.INSTALL, OtaStep.GOLDEN) and self.slots.active() != entry.target_slot:
            self.slots.empty(entry.target_slot)  # what was half-installed is not a rollback target
        self._finish(entry, OtaStep.REFUSED, reason=reason)

    def _roll_back(self, entry: JournalEntry, appliance: ApplianceHandle, reason: str) -> None:
        if self.slots.active() != entry.previous_slot:
            self.slots.activate(entry.previous_slot)
        live = appliance.reload_packages()
        back = ", ".join(f"{ref.name} {ref.version}" for ref in live) or "no package"
        self._finish(entry, OtaStep.ROLLED_BACK, reason=f"{reason} (live again: {back})")

    # -- the steps ---------------------------------------------------------------------------------------------------

    def _download(self, entry: JournalEntry) -> Path:
        offer = entry.offer
        section = self.config.dashboard
        assert section.url is not None and section.token_file is not None  # checked when accepted
        part = self.paths.part(offer)
        part.parent.mkdir(parents=True, exist_ok=True)
        for other in part.parent.glob("*.part"):  # one download kept at a time
            if other != part:
                other.unlink()
        have = part.stat().st_size if part.exists() else 0
        free = shutil.disk_usage(part.parent).free
        need = 2 * offer.size - have + _SPACE_MARGIN  # the download and its copy in the slot
        if free < need:
            raise _Refused(f"not enough disk space: {offer.size} bytes need {need} free, {free} are")
        try:
            token = section.token_file.read_text().strip()
        except OSError as exc:
            raise _Refused(f"cannot read the device token {section.token_file}: {exc.strerror}") from exc
        reported = [-1]

        def progress(done: int, total: int) -> None:
            tenth = done * _PROGRESS_STEPS // total
            if tenth > reported[0]:
                reported[0] = tenth
                self._report(entry, OtaStep.DOWNLOAD, progress=done / total)

        downloader = PackageDownload(
            section.url,
            token,
            section.ca_file,
            timeout_s=self.download_timeout_s,
            attempts=self.download_attempts,
            backoff_s=self.download_backoff_s,
            stop=self._stop,
        )
        try:
            return downloader.fetch(offer, self.paths.downloads, progress)
        except OtaError as exc:
            if self._stop.is_set():
                raise _Stopped(str(OtaStep.DOWNLOAD)) from exc
            raise _Refused(f"download: {exc}") from exc

    def _verify(self, entry: JournalEntry, package: Path, appliance: ApplianceHandle) -> None:
        offer = entry.offer
        try:
            verified = verify_package(package, self.trusted)
        except VerificationError as exc:
            raise _Refused(f"verification failed ({exc.check}): {exc.message}") from exc
        except PackageError as exc:
            raise _Refused(f"not a usable package: {exc.message}") from exc
        model = verified.manifest.model
        if (model.name, model.version) != (offer.name, offer.version):
            raise _Refused(f"the package is {model.name} {model.version}, the offer says {offer.name} {offer.version}")
        profile = verified.manifest.engine.profile
        if profile != appliance.profile.id:
            raise _Refused(f"compiled for {profile}, this appliance is {appliance.profile.id}")
        self._check_version(appliance.package_refs(), model.name, model.version, entry)

    def _install(self, entry: JournalEntry, package: Path) -> None:
        target = entry.target_slot
        carried = self.slots.prepare(target, entry.previous_slot, replacing=entry.offer.name)
        name = f"{entry.offer.name}-{entry.offer.version}.medge"
        self.slots.install(target, package, name)
        log.info("slot %s: %s installed beside %s", target, name, ", ".join(carried) or "nothing")

    def _golden(self, entry: JournalEntry, appliance: ApplianceHandle) -> None:
        """Load the inactive slot as the appliance would: the new package must go live, and all that is live now."""
        refused: list[str] = []

        def collect(kind: str, severity: str, message: str, detail: Mapping[str, object]) -> None:
            if kind == "package-refused":
                refused.append(message)

        trial = PackageSet(
            self.slots.path(entry.target_slot),
            self.trusted,
            appliance.profile,
            fail_closed=self.config.appliance.fail_closed,
            cache_dir=self.config.appliance.data_dir / "engine-cache",
            on_event=collect,
        )
        try:
            trial.load()
            live = {name: package.manifest.model.version for name, package in trial.live.items()}
        finally:
            trial.close()
        why = "; ".join(refused) or "no reason given"
        if live.get(entry.offer.name) != entry.offer.version:
            raise _Refused(f"{entry.package} did not go live in slot {entry.target_slot}: {why}")
        if lost := [name for name in entry.live_before if name not in live]:
            raise _Refused(f"{', '.join(lost)} would no longer go live beside {entry.package}: {why}")

    def _switch(self, entry: JournalEntry, appliance: ApplianceHandle) -> None:
        self.slots.activate(entry.target_slot)
        live = appliance.reload_packages()
        if not any(ref.name == entry.offer.name and ref.version == entry.offer.version for ref in live):
            raise _Regressed(f"{entry.package} did not go live after the switch: {self._refusals(appliance)}")

    @staticmethod
    def _refusals(appliance: ApplianceHandle) -> str:
        refused = [f"{r.path.name}: {r.reason}" for r in appliance.packages.refused if r.check != "superseded"]
        return "; ".join(refused) or "no package was refused"

    def _probation(self, entry: JournalEntry, appliance: ApplianceHandle) -> None:
        end = time.monotonic() + entry.probation_s
        while True:
            if (problem := self._regression(entry, appliance)) is not None:
                raise _Regressed(f"on probation: {problem}")
            left = end - time.monotonic()
            if left <= 0:
                return
            if self._stop.wait(min(self.poll_s, left)):
                raise _Stopped(str(OtaStep.PROBATION))

    def _regression(self, entry: JournalEntry, appliance: ApplianceHandle) -> str | None:
        """Why the new package is worse than the previous one, or None."""
        live = {ref.name: ref for ref in appliance.package_refs()}
        name = entry.offer.name
        current = live.get(name)
        if current is None or current.version != entry.offer.version:
            return f"{entry.package} is no longer live ({self._refusals(appliance)})"
        if lost := [other for other in entry.live_before if other not in live]:
            return f"{', '.join(lost)} no longer live ({self._refusals(appliance)})"
        counts = appliance.package_outcomes().get(name, {})
        before_failed = entry.baseline.get("failed", 0)
        before_total = before_failed + entry.baseline.get("analysed", 0)
        failed = counts.get("failed", 0) - before_failed
        total = failed + counts.get("analysed", 0) - entry.baseline.get("analysed", 0)
        before_rate = before_failed / before_total if before_total else 0.0
        rate = failed / total if total else 0.0
        if failed >= self.min_failures and rate > before_rate + self.failure_margin:
            return (
                f"{failed} of {total} analyses failed ({rate:.0%}) since the switch, "
                f"against {before_rate:.0%} before the update"
            )
        return None

    # -- key rotation ------------------------------------------------------------------------------------------------

    def handle_rotate_keys(self, command: Command) -> dict[str, object]:
        """``rotate-keys``: apply an endorsed rotation to the trust store; answered once the store has changed.

        Raises:
            OtaError: malformed, not endorsed by a trusted key, a replay, an
                update running, or the result would leave no key or drop a live package's key.
        """
        appliance = self._attached()
        try:
            rotation = KeyRotation.model_validate(command.args)
        except ValidationError as exc:
            raise config_error_from_validation(exc, None, error=OtaError) from exc
        with self._lock:
            if self._running is not None:
                raise OtaError(f"update {self._running} is running; rotate keys after it has ended")
            needed: dict[str, str] = {}
            for package in list(appliance.packages.live.values()):
                try:
                    signer = open_package(package.path).signer_key_id
                except PackageError:
                    continue
                needed[signer] = f"{package.name} {package.manifest.model.version}"
            result: RotationResult = rotate_keys(
                self.paths.trusted_keys_dir,
                rotation,
                self.trusted,
                needed=needed,
                record=self.paths.work_dir / "key-rotation.json",
            )
            self.trusted = TrustStore.load(self.paths.trusted_keys_dir)
            appliance.packages.trusted = self.trusted
        if not result.repeated:
            message = (
                f"trusted keys rotated (endorsed by {rotation.signer}): added {', '.join(result.added) or 'none'}, "
                f"retired {', '.join(result.retired) or 'none'}"
            )
            detail = {"added": result.added, "retired": result.retired, "trusted": result.trusted}
            try:
                self._emit("keys-rotated", "info", message, detail)
            except Exception:
                log.exception("could not report the key rotation")
        return {
            "added": result.added,
            "retired": result.retired,
            "trusted": result.trusted,
            "repeated": result.repeated,
        }
