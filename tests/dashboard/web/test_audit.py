"""The hash-chained audit log (dashboard/audit.py): what is recorded, and tampering detected; on both databases."""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import delete, select, text, update
from typer.testing import CliRunner

from dashboard.audit import GENESIS_HASH, Actor, canonical_content, record, verify_chain
from dashboard.store import AuditEntry, Role, Store
from sdk.cli.main import app as medge
from tests.dashboard.web.conftest import Site


def _entries(store: Store) -> list[AuditEntry]:
    with store.session() as session:
        return list(session.scalars(select(AuditEntry).order_by(AuditEntry.id)))


def _fill(store: Store, count: int) -> None:
    for index in range(count):
        with store.write() as session:
            record(
                session,
                Actor(f"user{index}", "clinician", f"10.0.0.{index}"),
                "test.action",
                f"thing:{index}",
                {"n": index},
            )


def test_each_entry_chains_to_the_previous_one(store: Store) -> None:
    _fill(store, 5)
    entries = _entries(store)
    assert [entry.id for entry in entries] == [1, 2, 3, 4, 5]
    assert entries[0].prev_hash == GENESIS_HASH
    for previous, entry in itertools.pairwise(entries):
        assert entry.prev_hash == previous.hash
    first = entries[0]
    content = canonical_content(
        id=1,
        at=first.at,
        actor="user0",
        role="clinician",
        client_ip="10.0.0.0",
        action="test.action",
        target="thing:0",
        detail=first.detail,
        prev_hash=GENESIS_HASH,
    )
    assert first.hash == hashlib.sha256(content).hexdigest()
    assert json.loads(first.detail) == {"n": 0}
    report = verify_chain(store)
    assert report.intact and report.entries == 5 and report.head_hash == entries[-1].hash


def test_changing_an_entry_is_detected_at_that_entry(store: Store) -> None:
    _fill(store, 6)
    with store.write() as session:  # someone with database access rewrites who did it
        session.execute(update(AuditEntry).where(AuditEntry.id == 3).values(actor="somebody-else"))
    report = verify_chain(store)
    assert not report.intact and report.first_broken == 3 and report.entries == 2
    assert "does not match its hash" in (report.reason or "")


def test_rehashing_a_changed_entry_is_detected_at_the_next(store: Store) -> None:
    _fill(store, 6)
    entries = _entries(store)
    forged = entries[2]
    content = canonical_content(
        id=3,
        at=forged.at,
        actor="somebody-else",
        role=forged.role,
        client_ip=forged.client_ip,
        action=forged.action,
        target=forged.target,
        detail=forged.detail,
        prev_hash=forged.prev_hash,
    )
    with store.write() as session:
        session.execute(
            update(AuditEntry)
            .where(AuditEntry.id == 3)
            .values(actor="somebody-else", hash=hashlib.sha256(content).hexdigest())
        )
    report = verify_chain(store)
    assert report.first_broken == 4 and "entry 3 was altered" in (report.reason or "")


def test_removing_an_entry_is_detected(store: Store) -> None:
    _fill(store, 6)
    with store.write() as session:
        session.execute(delete(AuditEntry).where(AuditEntry.id == 4))
    report = verify_chain(store)
    assert report.first_broken == 4 and "missing" in (report.reason or "")


def test_concurrent_writers_keep_one_unbroken_chain(store: Store) -> None:
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for index in range(10):
                with store.write() as session:
                    record(session, Actor(f"w{worker}"), "test.concurrent", f"n:{index}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    report = verify_chain(store)
    assert report.intact and report.entries == 40


def test_viewing_a_study_reference_and_acting_are_recorded_with_who_and_where(
    site_factory: Callable[..., Site], store: Store
) -> None:
    site = site_factory(store, trusted_proxies=["127.0.0.1"])
    user = site.add_user(Role.CLINICIAN, "hanna")
    client = site.session_of(user)
    client.headers["x-forwarded-for"] = "192.168.7.21"
    finding = site.publish_one(study_ref="pseudo-study-1", accession_number="ACC-1", patient_id="PID-1")
    assert client.get("/").status_code == 200
    assert not [e for e in _entries(store) if e.action == "finding.view"], "the worklist shows no study reference"
    client.get(f"/findings/{finding}")
    client.get(f"/api/v1/findings/{finding}")
    client.post_form(f"/findings/{finding}/acknowledge")
    client.get("/api/v1/feedback.csv")
    entries = [e for e in _entries(store) if e.actor == "hanna"]
    assert [(e.action, e.target) for e in entries] == [
        ("finding.view", f"finding:{finding}"),
        ("finding.view", f"finding:{finding}"),
        ("finding.acknowledge", f"finding:{finding}"),
        ("feedback.export", None),
    ]
    assert {(e.role, e.client_ip) for e in entries} == {("clinician", "192.168.7.21")}
    views = [json.loads(e.detail) for e in entries[:2]]
    assert [(v["study_ref"], v["via"]) for v in views] == [("pseudo-study-1", "page"), ("pseudo-study-1", "api")]
    assert all(v["accession_number_shown"] and v["patient_id_shown"] for v in views), "every view of PHI is audited"
    assert client.get(f"/findings/{finding + 1000}").status_code == 404
    assert len([e for e in _entries(store) if e.actor == "hanna"]) == 4, "nothing recorded for what does not exist"


def test_the_audit_page_verifies_the_chain_and_shows_a_break(site: Site) -> None:
    admin = site.as_role(Role.ADMIN)
    _fill(site.store, 3)
    page = admin.post_form("/admin/audit/verify")
    assert page.status_code == 200 and "Chain intact:" in page.text
    with site.store.write() as session:
        session.execute(text("UPDATE audit_log SET detail = :detail WHERE id = 2"), {"detail": '{"n":99}'})
    page = admin.post_form("/admin/audit/verify")
    assert "Chain broken at entry 2" in page.text
    assert "n=99" in admin.get("/admin/audit").text, "the log still shows what is there"


def test_medge_dashboard_audit_verify_names_the_first_broken_entry(tmp_path: Path, store: Store) -> None:
    url = store.engine.url.render_as_string(hide_password=False)
    config = tmp_path / "dashboard.toml"
    config.write_text(f'demo = true\ndata_dir = "{tmp_path}"\n[store]\nurl = "{url}"\n')
    runner = CliRunner()
    _fill(store, 4)
    result = runner.invoke(medge, ["dashboard", "audit-verify", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "intact: 4 entries" in result.output
    with store.write() as session:
        session.execute(update(AuditEntry).where(AuditEntry.id == 2).values(client_ip="8.8.8.8"))
    result = runner.invoke(medge, ["dashboard", "audit-verify", "--config", str(config)])
    assert result.exit_code == 1
    assert "broken at entry 2" in result.output
