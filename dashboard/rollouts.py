"""Over-the-air rollouts: a package sent to devices or groups, followed step by step; key rotations.

Sending a package to devices creates one :class:`~dashboard.store.Rollout` per
device and publishes ``Command(command="update", args=UpdateRequest)`` on each
device's ``cmd`` topic (QoS 1). The version must go up against what the device
runs (its status and heartbeat) and what was last sent to it; a version that
does not go up is refused unless an admin forces it, and the force is in the
audit log. The device answers the command (accepted / refused) and reports
every step as an ``ota`` event; the ingest applies both to the rollout in the
transaction that stores them (:func:`apply_ota_events`,
:func:`apply_command_results`), so a step is never stored without its effect.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import ValidationError
from sqlalchemy import Table, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from dashboard.audit import Actor, record
from dashboard.enrollment import package_url
from dashboard.errors import AccountError, NotFoundError, PermissionDenied, RolloutRefused, Unavailable
from dashboard.store.engine import Store
from dashboard.store.models import Device, DeviceCredential, Package, Rollout, RolloutState, RolloutStep
from sdk.fleet_contracts import KeyRotation, OtaReport, OtaStep, PackageOffer, UpdateRequest
from sdk.messages import Command
from sdk.model_versions import version_key
from sdk.trust import TrustStore

__all__ = [
    "CommandSender",
    "RolloutInfo",
    "RolloutStepInfo",
    "SentCommand",
    "Targets",
    "apply_command_results",
    "apply_ota_events",
    "compare_versions",
    "get_rollout",
    "list_rollouts",
    "send_key_rotation",
    "start_rollout",
]

logger = logging.getLogger(__name__)

_FINAL_STEPS = {
    OtaStep.DONE: RolloutState.DONE,
    OtaStep.ROLLED_BACK: RolloutState.ROLLED_BACK,
    OtaStep.REFUSED: RolloutState.REFUSED,
}
_NOT_INSTALLED = (RolloutState.REFUSED, RolloutState.ROLLED_BACK)


class CommandSender(Protocol):
    """Publishes a command on its device's ``cmd`` topic (the ingest's MQTT client)."""

    def send_command(self, command: Command) -> None: ...


@dataclass(frozen=True)
class Targets:
    """Which devices: by row id, by enrollment group, by site."""

    devices: Sequence[int] = ()
    groups: Sequence[str] = ()
    sites: Sequence[str] = ()

    def __bool__(self) -> bool:
        return bool(self.devices or self.groups or self.sites)


@dataclass(frozen=True)
class RolloutStepInfo:
    """One reported step."""

    step: str
    ok: bool
    reason: str | None
    progress: float | None
    created: datetime
    received_at: datetime


@dataclass(frozen=True)
class RolloutInfo:
    """A rollout as the pages and the API show it."""

    id: int
    update_id: str
    device_id: int
    site: str
    device: str
    package_sha256: str
    package_name: str
    package_version: str
    force: bool
    requested_by: str
    created_at: datetime
    state: RolloutState
    last_step: str | None
    progress: float | None
    reason: str | None
    updated_at: datetime
    steps: list[RolloutStepInfo] = field(default_factory=list)


@dataclass(frozen=True)
class SentCommand:
    """A command published to one device."""

    site: str
    device: str
    command_id: str


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as version ``a`` is lower than, equal to or higher than ``b`` (the appliances' order)."""
    left, right = version_key(a), version_key(b)
    return (left > right) - (left < right)


def _live_versions(device: Device, name: str) -> list[str]:
    """Versions of package ``name`` the device says it runs (status packages, heartbeat engines)."""
    found = []
    for package in (device.status or {}).get("packages", []) or []:
        if isinstance(package, dict) and package.get("name") == name and package.get("version"):
            found.append(str(package["version"]))
    for engine in (device.last_heartbeat or {}).get("engines", []) or []:
        parts = str(engine.get("package", "") if isinstance(engine, dict) else "").split()
        if len(parts) == 2 and parts[0] == name:
            found.append(parts[1])
    return found


def _current_version(session: Session, device: Device, name: str) -> str | None:
    """The highest version of ``name`` the device runs or was last sent (not refused or rolled back)."""
    versions = _live_versions(device, name)
    sent = session.scalar(
        select(Package.version)
        .join(Rollout, Rollout.package_sha256 == Package.sha256)
        .where(Rollout.device_id == device.id, Package.name == name, Rollout.state.not_in(_NOT_INSTALLED))
        .order_by(Rollout.id.desc())
        .limit(1)
    )
    if sent is not None:
        versions.append(sent)
    best: str | None = None
    for version in versions:
        if best is None or compare_versions(version, best) > 0:
            best = version
    return best


def _resolve(session: Session, targets: Targets) -> list[Device]:
    """The enrolled devices named, in a group or at a site (only enrolled ones hold a token to download with)."""
    if targets.devices:
        enrolled = set(
            session.scalars(
                select(DeviceCredential.device_id).where(DeviceCredential.device_id.in_(list(targets.devices)))
            )
        )
        missing = sorted(set(targets.devices) - enrolled)
        if missing:
            raise AccountError(
                f"device(s) {', '.join(map(str, missing))} are not enrolled: they cannot download packages",
                field="devices",
            )
    conditions = []
    if targets.devices:
        conditions.append(Device.id.in_(list(targets.devices)))
    if targets.sites:
        conditions.append(Device.site.in_(list(targets.sites)))
    if targets.groups:
        grouped = select(DeviceCredential.device_id).where(DeviceCredential.device_group.in_(list(targets.groups)))
        conditions.append(Device.id.in_(grouped))
    if not conditions:
        return []
    query = (
        select(Device)
        .join(DeviceCredential, DeviceCredential.device_id == Device.id)
        .where(or_(*conditions))
        .order_by(Device.site, Device.device)
    )
    return list(session.scalars(query))


def start_rollout(
    store: Store,
    package_sha256: str,
    targets: Targets,
    *,
    actor: Actor,
    sender: CommandSender | None,
    force: bool = False,
    may_force: bool = False,
    probation_s: float = 300.0,
) -> list[RolloutInfo]:
    """Send a package to every device of ``targets``; audited as ``package.rollout``.

    All or nothing: if the version does not go up on any device and the
    rollout is not forced, nothing is sent.

    Raises:
        PermissionDenied: ``force`` without ``may_force`` (only admins may).
        NotFoundError: no such package, or no enrolled device matches.
        AccountError: no target named, or a device named is not enrolled.
        RolloutRefused: the version does not go up on some device (names them).
        Unavailable: no MQTT connection to send commands on.
    """
    if force and not may_force:
        raise PermissionDenied("only an admin may force a package whose version does not go up")
    if sender is None:
        raise Unavailable("this dashboard has no MQTT connection to send commands on")
    if not targets:
        raise AccountError("name at least one device, group or site", field="targets")
    now = datetime.now(UTC)
    commands: list[Command] = []
    with store.write() as session:
        package = session.get(Package, package_sha256.lower())
        if package is None:
            raise NotFoundError(f"no package {package_sha256}")
        devices = _resolve(session, targets)
        if not devices:
            raise NotFoundError("no enrolled device matches the devices, groups and sites named")
        not_up = []
        for device in devices:
            current = _current_version(session, device, package.name)
            if current is not None and compare_versions(package.version, current) <= 0:
                not_up.append(f"{device.site}/{device.device} has {current}")
        if not_up and not force:
            raise RolloutRefused(
                f"{package.name} {package.version} does not go up on " + ", ".join(not_up) + " (an admin may force it)"
            )
        offer = PackageOffer(
            name=package.name,
            version=package.version,
            sha256=package.sha256,
            size=package.size,
            url=package_url(package.sha256),
        )
        rows = []
        for device in devices:
            update_id = str(uuid.uuid4())
            request = UpdateRequest(update_id=update_id, package=offer, force=force, probation_s=probation_s)
            command = Command(
                site=device.site, device=device.device, command="update", args=request.model_dump(mode="json")
            )
            commands.append(command)
            row = Rollout(
                update_id=update_id,
                device_id=device.id,
                package_sha256=package.sha256,
                force=force,
                requested_by=actor.name[:128],
                command_id=command.id,
                created_at=now,
                state=RolloutState.SENT,
                updated_at=now,
            )
            session.add(row)
            rows.append((row, device))
        session.flush()
        detail = {
            "package": f"{package.name} {package.version}",
            "devices": [f"{device.site}/{device.device}" for device in devices],
            "groups": list(targets.groups),
            "sites": list(targets.sites),
            "force": force,
            "not_up": not_up,
        }
        record(
            session,
            actor,
            "package.rollout-forced" if force else "package.rollout",
            f"package:{package.sha256}",
            detail,
        )
        infos = [_info(row, device, package) for row, device in rows]
    for command in commands:
        sender.send_command(command)
    logger.info("%s %s sent to %d device(s) by %s", package.name, package.version, len(commands), actor.name)
    return infos


def _info(row: Rollout, device: Device, package: Package, steps: list[RolloutStepInfo] | None = None) -> RolloutInfo:
    return RolloutInfo(
        id=row.id,
        update_id=row.update_id,
        device_id=device.id,
        site=device.site,
        device=device.device,
        package_sha256=package.sha256,
        package_name=package.name,
        package_version=package.version,
        force=row.force,
        requested_by=row.requested_by,
        created_at=row.created_at,
        state=row.state,
        last_step=row.last_step,
        progress=row.progress,
        reason=row.reason,
        updated_at=row.updated_at,
        steps=steps or [],
    )


def list_rollouts(store: Store, *, device_id: int | None = None, limit: int = 200) -> list[RolloutInfo]:
    """Rollouts, newest first, with their steps."""
    with store.session() as session:
        query = (
            select(Rollout, Device, Package)
            .join(Device, Device.id == Rollout.device_id)
            .join(Package, Package.sha256 == Rollout.package_sha256)
            .order_by(Rollout.id.desc())
            .limit(limit)
        )
        if device_id is not None:
            query = query.where(Rollout.device_id == device_id)
        found = session.execute(query).all()
        steps = _steps(session, [row.id for row, _, _ in found])
        return [_info(row, device, package, steps.get(row.id)) for row, device, package in found]


def get_rollout(store: Store, update_id: str) -> RolloutInfo:
    """One rollout with its steps.

    Raises:
        NotFoundError: no such rollout.
    """
    with store.session() as session:
        found = session.execute(
            select(Rollout, Device, Package)
            .join(Device, Device.id == Rollout.device_id)
            .join(Package, Package.sha256 == Rollout.package_sha256)
            .where(Rollout.update_id == update_id)
        ).first()
        if found is None:
            raise NotFoundError(f"no rollout {update_id}")
        row, device, package = found
        return _info(row, device, package, _steps(session, [row.id]).get(row.id))


def _steps(session: Session, rollout_ids: list[int]) -> dict[int, list[RolloutStepInfo]]:
    """Steps in the device's order (its clock): one batch may store an answer after the event that followed it."""
    steps: dict[int, list[RolloutStepInfo]] = {}
    if not rollout_ids:
        return steps
    rows = session.scalars(
        select(RolloutStep).where(RolloutStep.rollout_id.in_(rollout_ids)).order_by(RolloutStep.created, RolloutStep.id)
    )
    for step in rows:
        steps.setdefault(step.rollout_id, []).append(
            RolloutStepInfo(step.step, step.ok, step.reason, step.progress, step.created, step.received_at)
        )
    return steps


# Applied by the ingest, in the transaction that stores the events and command results ------------------


def _add_step(
    session: Session,
    rollout: Rollout,
    message_id: str,
    step: str,
    ok: bool,
    reason: str | None,
    progress: float | None,
    created: datetime,
    now: datetime,
) -> bool:
    """Insert a step row once per message id; ``False`` if it was there already."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    table: Table = RolloutStep.__table__  # type: ignore[assignment]
    statement = (
        insert(table)
        .values(
            rollout_id=rollout.id,
            message_id=message_id,
            step=step,
            ok=ok,
            reason=reason,
            progress=progress,
            created=created,
            received_at=now,
        )
        .on_conflict_do_nothing(index_elements=["message_id"])
        .returning(table.c.id)
    )
    return session.execute(statement).first() is not None


def apply_ota_events(
    session: Session, events: Iterable[tuple[int, str, datetime, dict[str, Any]]], now: datetime
) -> int:
    """Apply ``ota`` events ``(device_id, message_id, created, detail)`` to their rollouts; returns how many applied.

    An event naming another device's rollout, or none, is left alone (it is
    still stored as an event). A rollout that has ended keeps its state; later
    steps are only recorded.
    """
    applied = 0
    for device_id, message_id, created, detail in events:
        try:
            report = OtaReport.model_validate(detail)
        except ValidationError as exc:
            logger.warning("ota event %s has no valid report: %s", message_id, exc.errors()[:1])
            continue
        rollout = session.scalar(
            select(Rollout)
            .where(Rollout.update_id == report.update_id, Rollout.device_id == device_id)
            .with_for_update()
        )
        if rollout is None:
            logger.info("ota event %s names no rollout of its device (%s)", message_id, report.update_id)
            continue
        if not _add_step(
            session, rollout, message_id, report.step.value, report.ok, report.reason, report.progress, created, now
        ):
            continue
        applied += 1
        rollout.updated_at = now
        if rollout.state.final:
            continue
        rollout.last_step = report.step.value
        rollout.state = _FINAL_STEPS.get(report.step, RolloutState.RUNNING)
        if report.progress is not None:
            rollout.progress = report.progress
        if report.reason is not None or not report.ok:
            rollout.reason = report.reason or f"{report.step.value} failed"
    return applied


def apply_command_results(
    session: Session, results: Iterable[tuple[int, str, str, bool, str | None, datetime]], now: datetime
) -> int:
    """Apply answers ``(device_id, message_id, correlation_id, ok, error, created)`` to the rollouts they answer."""
    applied = 0
    for device_id, message_id, correlation_id, ok, error, created in results:
        rollout = session.scalar(
            select(Rollout)
            .where(Rollout.command_id == correlation_id, Rollout.device_id == device_id)
            .with_for_update()
        )
        if rollout is None:
            continue
        step = OtaStep.ACCEPTED.value if ok else OtaStep.REFUSED.value
        if not _add_step(session, rollout, message_id, step, ok, error, None, created, now):
            continue
        applied += 1
        rollout.updated_at = now
        if rollout.state.final:
            continue
        if not ok:
            rollout.state, rollout.last_step = RolloutState.REFUSED, step
            rollout.reason = error or "the device refused the update"
        elif rollout.state == RolloutState.SENT:
            rollout.state, rollout.last_step = RolloutState.RUNNING, step
    return applied


# Key rotation -------------------------------------------------------------------------------------------


def send_key_rotation(
    store: Store,
    rotation: KeyRotation,
    targets: Targets,
    *,
    actor: Actor,
    sender: CommandSender | None,
    trusted: TrustStore,
) -> list[SentCommand]:
    """Send an endorsed key change to devices (``rotate-keys``); audited as ``keys.rotate``.

    The dashboard checks the endorsement against its own trusted keys first:
    a device would refuse it anyway, and a clear error here beats a fleet of
    refusals.

    Raises:
        AccountError: the endorsement is not signed by a key the dashboard trusts, or names no change.
        NotFoundError: no device matches.
        Unavailable: no MQTT connection.
    """
    if sender is None:
        raise Unavailable("this dashboard has no MQTT connection to send commands on")
    if not rotation.add and not rotation.retire:
        raise AccountError("the key change adds and retires nothing", field="rotation")
    signer = trusted.get(rotation.signer)
    if signer is None or not rotation.endorsed_by(signer):
        raise AccountError(
            f"the key change is not endorsed by a trusted key (signer {rotation.signer!r})", field="rotation"
        )
    if not targets:
        raise AccountError("name at least one device, group or site", field="targets")
    commands = []
    with store.write() as session:
        devices = _resolve(session, targets)
        if not devices:
            raise NotFoundError("no enrolled device matches the devices, groups and sites named")
        for device in devices:
            commands.append(
                Command(
                    site=device.site, device=device.device, command="rotate-keys", args=rotation.model_dump(mode="json")
                )
            )
        detail = {
            "signer": rotation.signer,
            "add": len(rotation.add),
            "retire": list(rotation.retire),
            "devices": [f"{device.site}/{device.device}" for device in devices],
            "commands": [command.id for command in commands],
        }
        record(session, actor, "keys.rotate", None, detail)
    for command in commands:
        sender.send_command(command)
    return [SentCommand(command.site, command.device, command.id) for command in commands]
