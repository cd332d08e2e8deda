"""The REST API under /api/v1 with a token, as a script uses it; the worklist page's filters; both databases."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from dashboard.audit import CLI_ACTOR
from dashboard.auth import create_token
from dashboard.store import Role, Store
from sdk.messages import EngineHealth, Event, Heartbeat, PackageRef, Status
from tests.dashboard.web.conftest import Browserless, Site, make_finding

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def _script(site: Site, role: Role = Role.CLINICIAN) -> Browserless:
    token = create_token(site.store, f"script-{role.value}", role, actor=CLI_ACTOR).secret
    return site.client(headers={"authorization": f"Bearer {token}"})


def _populate(site: Site) -> list[str]:
    """24 findings from 2 devices over 2 sites, spread over hours, alternating positives and labels."""
    messages = []
    for index in range(24):
        messages.append(
            make_finding(
                site="st-marys" if index % 3 else "general",
                device=f"ct-{index % 2 + 1}",
                seq=index,
                modality="CT" if index % 4 else "MR",
                label="nodule" if index % 2 else "effusion",
                score=round(0.05 + index * 0.04, 2),
                positive=index % 2 == 1,
                created=T0 + timedelta(hours=index),
            )
        )
    site.publish(*messages)
    return [message.id for message in messages]


def test_findings_page_through_newest_first_without_repeats(site: Site) -> None:
    ids = _populate(site)
    script = _script(site)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 5} | ({"cursor": cursor} if cursor else {})
        body = script.get("/api/v1/findings", params=params).json()
        seen += [item["message_id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
        site.publish_one(created=T0 + timedelta(days=1))  # newer arrivals meanwhile do not shift the pages
    assert pages == 5
    assert seen == list(reversed(ids)), "newest first, each once"


def test_findings_filter_and_sort(site: Site) -> None:
    _populate(site)
    script = _script(site)

    def query(**params: object) -> list[dict[str, object]]:
        response = script.get("/api/v1/findings", params={"limit": 100, **params})
        assert response.status_code == 200, response.text
        return response.json()["items"]

    assert {item["site"] for item in query(site="general")} == {"general"}
    assert len(query(site="general")) == 8
    assert all(item["positive"] for item in query(positive=True)) and len(query(positive=True)) == 12
    assert {item["modality"] for item in query(modality="MR")} == {"MR"}
    assert {item["label"] for item in query(label="effusion", device="ct-1")} == {"effusion"}
    window = query(since=(T0 + timedelta(hours=5)).isoformat(), until=(T0 + timedelta(hours=8)).isoformat())
    assert [item["seq"] for item in window] == [7, 6, 5]
    by_score = [item["score"] for item in query(sort="score")]
    assert by_score == sorted(by_score, reverse=True) and by_score[0] == pytest.approx(0.97)
    second = script.get("/api/v1/findings", params={"sort": "score", "limit": 10}).json()
    more = script.get("/api/v1/findings", params={"sort": "score", "limit": 10, "cursor": second["next_cursor"]})
    assert [item["score"] for item in second["items"] + more.json()["items"]] == by_score[:20]
    assert script.get("/api/v1/findings", params={"state": "acknowledged"}).json()["items"] == []
    bad = script.get("/api/v1/findings", params={"sort": "time", "cursor": second["next_cursor"]})
    assert bad.status_code == 400, "a score cursor is no time cursor"
    assert script.get("/api/v1/findings", params={"limit": 0}).status_code == 422


def test_the_worklist_page_filters_as_the_api_does(site: Site) -> None:
    _populate(site)
    clinician = site.as_role(Role.CLINICIAN)
    page = clinician.get("/", params={"site": "general", "positive": "1", "state": "", "from": "", "to": ""})
    assert page.status_code == 200
    assert page.text.count('<tr class="finding positive"') == 4
    assert 'class="finding negative"' not in page.text
    day = clinician.get("/", params={"from": "2026-11-20", "to": "2026-11-20"}).text
    assert day.count('<tr class="finding') == 16, "hours 8-23 of 20 November (UTC display)"
    assert 'data-live="0"' in day, "a date-bounded view is not extended live"
    scored = clinician.get("/", params={"sort": "score"}).text
    assert scored.index(">0.97<") < scored.index(">0.93<")
    assert "Older" not in clinician.get("/").text
    for option in ("general", "st-marys", "effusion", "MR"):
        assert f'<option value="{option}"' in page.text


def test_a_finding_in_full_with_its_study_reference_as_the_phi_policy_allows(
    site_factory: Callable[..., Site], store: Store
) -> None:
    shown = site_factory(store)
    finding = shown.publish_one(
        accession_number="ACC-778", patient_id="PID-9", location={"row": 10.5, "column": 20.0}, frame=3
    )
    script = _script(shown)
    body = script.get(f"/api/v1/findings/{finding}").json()
    assert (body["accession_number"], body["patient_id"]) == ("ACC-778", "PID-9")
    assert (body["study_ref"], body["series_ref"], body["frame"]) == ("study", "series", 3)
    assert body["package"] == {"name": "chest-ct", "version": "1.2.0", "precision": "int8", "profile": "intel-xeon"}
    assert body["latency_ms"] == {"decode": 3.0, "infer": 12.5} and body["scores"]["nodule"] == 0.91
    assert body["feedback"] is None and body["state"] == "new"
    clinician = shown.as_role(Role.CLINICIAN)
    page = clinician.get(f"/findings/{finding}").text
    for text in (
        "ACC-778",
        "PID-9",
        "chest-ct",
        "1.2.0",
        "int8",
        "intel-xeon",
        "infer",
        "12.5 ms",
        "15.5 ms",
        "recorded in the audit",
    ):
        assert text in page, text
    hidden = site_factory(store, show_accession_number=False)
    assert _script(hidden).get(f"/api/v1/findings/{finding}").json()["accession_number"] is None
    assert _script(hidden).get(f"/api/v1/findings/{finding}").json()["patient_id"] is None
    assert "ACC-778" not in hidden.as_role(Role.CLINICIAN).get(f"/findings/{finding}").text
    assert "PID-9" not in hidden.as_role(Role.CLINICIAN).get(f"/findings/{finding}").text
    assert script.get("/api/v1/findings/999999").status_code == 404


def test_devices_metrics_and_events(site: Site) -> None:
    now = datetime.now(UTC)
    site.publish(
        Status(
            site="st-marys",
            device="ct-1",
            state="online",
            version="0.4.1",
            packages=[PackageRef(name="chest-ct", version="1.2.0", precision="int8", profile="x", sha256="a" * 64)],
        ),
        *[make_finding(seq=seq, created=now - timedelta(minutes=5 * seq)) for seq in (0, 1, 2, 5)],
    )
    site.publish(
        Heartbeat(
            site="st-marys",
            device="ct-1",
            uptime_s=100,
            queues={"decode": 2, "infer": 1},
            latency_ms_p50=40.0,
            latency_ms_p95=90.0,
            engines=[
                EngineHealth(
                    package="chest-ct",
                    engine="onnxruntime",
                    device="cpu",
                    providers=["CPUExecutionProvider"],
                    degraded=True,
                    reason="CUDA unavailable",
                )
            ],
        ),
        Event(site="st-marys", device="ct-1", kind="decode-error", severity="error", message="truncated file"),
        Event(site="st-marys", device="ct-1", kind="model-change", severity="info", message="1.2.0 live"),
    )
    technician = _script(site, Role.TECHNICIAN)
    (device,) = technician.get("/api/v1/devices").json()
    assert device["online"] and device["state"] == "online" and device["version"] == "0.4.1"
    assert device["degraded"] and device["degraded_reasons"] == ["chest-ct: CUDA unavailable"]
    assert (device["queue_depth"], device["latency_ms_p50"], device["latency_ms_p95"]) == (3, 40.0, 90.0)
    assert device["missing_count"] == 2 and device["max_seq"] == 5
    assert device["last_error"]["message"] == "truncated file"
    assert device["engines"][0]["providers"] == ["CPUExecutionProvider"]
    metrics = technician.get(f"/api/v1/devices/{device['id']}/metrics").json()
    assert len(metrics["findings_per_hour"]) == 24 and sum(row[1] for row in metrics["findings_per_hour"]) == 4
    assert metrics["latency"][0][1:] == [40.0, 90.0] and metrics["queue_depth"][0][1] == 3
    assert metrics["gaps"] == [[3, 4]]
    events = technician.get("/api/v1/events", params={"limit": 1}).json()
    assert [e["kind"] for e in events["items"]] == ["model-change"] and events["next_before"] is not None
    older = technician.get("/api/v1/events", params={"before": events["next_before"]}).json()
    assert [e["kind"] for e in older["items"]] == ["decode-error"] and older["next_before"] is None
    errors = technician.get("/api/v1/events", params={"severity": "error"}).json()
    assert [e["message"] for e in errors["items"]] == ["truncated file"]
    assert technician.get("/api/v1/devices/999").status_code == 404
    page = site.as_role(Role.TECHNICIAN).get(f"/devices/{device['id']}").text
    assert (
        "DEGRADED" in page and "CUDA unavailable" in page and "3\u20134" in page
    )  # an en dash between the first and last missing number


def test_the_openapi_document_and_its_offline_docs_page(sqlite_site: Site) -> None:
    script = _script(sqlite_site)
    schema = script.get("/api/v1/openapi.json").json()
    paths = schema["paths"]
    for path in ("/api/v1/findings", "/api/v1/findings/{finding_id}", "/api/v1/devices", "/api/v1/events"):
        assert "get" in paths[path], path
    assert "/api/v1/feedback.csv" in paths and "post" in paths["/api/v1/findings/{finding_id}/review"]
    assert not any(path.startswith(("/admin", "/login", "/findings")) for path in paths), "pages are not API"
    assert sqlite_site.client().get("/docs").status_code == 303, "FastAPI's CDN-backed Swagger UI is not served"
    docs = script.get("/api/v1/docs")
    assert docs.status_code == 200 and "/api/v1/findings/{finding_id}/acknowledge" in docs.text
    assert "FindingDetail" in docs.text
    assert "cdn" not in docs.text.lower() and "swagger" not in docs.text.lower()
