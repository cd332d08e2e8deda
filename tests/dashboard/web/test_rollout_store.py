"""Enrollment's claim and the ingest's rollout updates on both databases (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from dashboard.audit import CLI_ACTOR
from dashboard.auth import ThrottlePolicy
from dashboard.enrollment import create_enrollment_token, enroll
from dashboard.errors import EnrollmentRefused
from dashboard.ingest import BatchWriter, InboundMessage
from dashboard.store import Device, Package, Rollout, RolloutState, RolloutStep, Store
from firmware_integration.broker import AuthMode, write_broker_config
from firmware_integration.broker.registrar import FolderRegistrar
from sdk.fleet_contracts import OTA_EVENT, EnrollmentRequest, OtaReport, OtaStep
from sdk.messages import CommandResult, Event
from sdk.testing.mosquitto import free_port
from sdk.topics import TopicKind, topic
from tests.dashboard.enrollment_support import device_csr

SITE = "st-marys"


def _registrar(tmp_path: Path) -> FolderRegistrar:
    folder = tmp_path / "broker"
    write_broker_config(
        folder, tls=None, auth=AuthMode.PASSWORD, port=free_port(), bind_address="127.0.0.1", run_as=None
    )
    return FolderRegistrar(folder)


def test_an_enrollment_token_is_claimed_once(store: Store, tmp_path: Path) -> None:
    created = create_enrollment_token(store, SITE, actor=CLI_ACTOR, ttl_s=60)
    _, csr = device_csr(SITE, "ct-1")
    request = EnrollmentRequest(token=created.secret, site=SITE, device="ct-1", csr_pem=csr)
    options = {"registrar": _registrar(tmp_path), "trusted_keys": ["PEM"], "throttle": ThrottlePolicy()}
    answer = enroll(store, request, **options)  # type: ignore[arg-type]
    assert answer.mqtt.username == f"{SITE}/ct-1" and answer.device_token.startswith("medge_device_")
    with pytest.raises(EnrollmentRefused, match="used already"):
        enroll(store, request, **options)  # type: ignore[arg-type]


def test_ota_events_and_answers_move_their_rollout_once(store: Store) -> None:
    now = datetime.now(UTC)
    with store.write() as session:
        device = Device(site=SITE, device="ct-1", first_seen=now, last_seen=now)
        other = Device(site=SITE, device="ct-2", first_seen=now, last_seen=now)
        session.add_all([device, other])
        session.add(
            Package(
                sha256="a" * 64,
                name="chest",
                version="2.0.0",
                profile="generic",
                precision="fp32",
                size=10,
                signer_key_id="k",
                uploaded_by="cli",
                uploaded_at=now,
                file_path="/nowhere",
            )
        )
        session.flush()
        session.add(
            Rollout(
                update_id="u-1",
                device_id=device.id,
                package_sha256="a" * 64,
                force=False,
                requested_by="cli",
                command_id="c-1",
                created_at=now,
                state=RolloutState.SENT,
                updated_at=now,
            )
        )

    def event(device: str, step: OtaStep, **fields: object) -> InboundMessage:
        report = OtaReport(update_id="u-1", step=step, package="chest 2.0.0", **fields)  # type: ignore[arg-type]
        message = Event(
            site=SITE, device=device, kind=OTA_EVENT, message=step.value, detail=report.model_dump(mode="json")
        )
        return InboundMessage(topic(SITE, device, TopicKind.EVENT), message.to_json())

    answer = CommandResult(site=SITE, device="ct-1", correlation_id="c-1", ok=True)
    download = event("ct-1", OtaStep.DOWNLOAD, progress=0.25)
    writer = BatchWriter(store)
    writer.write([InboundMessage(topic(SITE, "ct-1", TopicKind.CMD_RESULT), answer.to_json()), download])
    writer.write([download, event("ct-2", OtaStep.DONE)])  # a re-send, and another device naming this rollout
    with store.session() as session:
        rollout = session.scalars(select(Rollout)).one()
        assert (rollout.state, rollout.last_step, rollout.progress) == (RolloutState.RUNNING, "download", 0.25)
        assert [s.step for s in session.scalars(select(RolloutStep).order_by(RolloutStep.created))] == [
            "accepted",
            "download",
        ]
    writer.write([event("ct-1", OtaStep.ROLLED_BACK, ok=False, reason="health regressed"), event("ct-1", OtaStep.DONE)])
    with store.session() as session:
        rollout = session.scalars(select(Rollout)).one()
        assert (rollout.state, rollout.reason) == (RolloutState.ROLLED_BACK, "health regressed")
        assert len(session.scalars(select(RolloutStep)).all()) == 4
