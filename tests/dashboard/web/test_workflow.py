"""Acting on findings (dashboard/workflow.py): the state machine, its races, the feedback export; on both databases."""

from __future__ import annotations

import csv
import io
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from dashboard.audit import Actor
from dashboard.errors import NotFoundError, TransitionError
from dashboard.store import Feedback, Finding, FindingState, Role, Store, Verdict
from dashboard.workflow import FEEDBACK_FIELDS, FeedbackFilter, acknowledge, feedback_rows, review
from tests.dashboard.web.conftest import Site, make_finding

ALICE = Actor("alice", "clinician", "10.1.2.3")
BOB = Actor("bob", "clinician", "10.1.2.4")


def _state(store: Store, finding_id: int) -> FindingState:
    with store.session() as session:
        finding = session.get(Finding, finding_id)
        assert finding is not None
        return finding.state


def test_new_then_acknowledged_then_reviewed(site: Site) -> None:
    store = site.store
    finding = site.publish_one()
    assert _state(store, finding) == FindingState.NEW
    acknowledge(store, finding, actor=ALICE)
    assert _state(store, finding) == FindingState.ACKNOWLEDGED
    review(store, finding, Verdict.DISAGREE, "  calcified granuloma, not a nodule  ", actor=BOB)
    assert _state(store, finding) == FindingState.REVIEWED
    with store.session() as session:
        feedback = session.scalars(select(Feedback)).one()
        row = session.get(Finding, finding)
        assert row is not None and row.state_changed_at is not None
    assert (feedback.acknowledged_by, feedback.reviewed_by) == ("alice", "bob")
    assert feedback.verdict == Verdict.DISAGREE and feedback.comment == "calcified granuloma, not a nodule"
    assert feedback.reviewed_at is not None and feedback.reviewed_at >= feedback.acknowledged_at


@pytest.mark.parametrize(
    ("steps", "illegal"),
    [
        ([], "review"),  # new → reviewed skips acknowledging
        (["acknowledge"], "acknowledge"),  # twice
        (["acknowledge", "review"], "acknowledge"),  # reviewed → acknowledged
        (["acknowledge", "review"], "review"),  # reviewed twice
    ],
)
def test_illegal_transitions_are_refused_and_change_nothing(site: Site, steps: list[str], illegal: str) -> None:
    store = site.store
    finding = site.publish_one()

    def do(step: str) -> None:
        if step == "acknowledge":
            acknowledge(store, finding, actor=ALICE)
        else:
            review(store, finding, Verdict.AGREE, None, actor=ALICE)

    for step in steps:
        do(step)
    before = _state(store, finding)
    with store.session() as session:
        feedback_before = session.scalar(select(Feedback.reviewed_at).where(Feedback.finding_id == finding))
    with pytest.raises(TransitionError, match=f"is {before.value}"):
        do(illegal)
    assert _state(store, finding) == before
    with store.session() as session:
        assert session.scalar(select(Feedback.reviewed_at).where(Feedback.finding_id == finding)) == feedback_before


def test_a_missing_finding_is_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        acknowledge(store, 424242, actor=ALICE)


def test_two_people_acknowledging_at_once_one_wins(site: Site) -> None:
    finding = site.publish_one()
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def race(actor: Actor) -> None:
        barrier.wait()
        try:
            acknowledge(site.store, finding, actor=actor)
            outcomes.append("won")
        except TransitionError:
            outcomes.append("refused")

    threads = [threading.Thread(target=race, args=(Actor(f"user{i}"),)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused", "refused", "refused", "won"]
    with site.store.session() as session:
        assert session.scalar(select(func.count()).select_from(Feedback)) == 1


def test_a_resent_finding_is_one_row_and_keeps_its_state(site: Site) -> None:
    message = make_finding(seq=7)
    site.publish(message)
    finding = site.finding_id(message)
    acknowledge(site.store, finding, actor=ALICE)
    site.publish(message, message)  # the appliance re-sends (no ack reached it)
    with site.store.session() as session:
        assert session.scalar(select(func.count()).select_from(Finding)) == 1
    assert _state(site.store, finding) == FindingState.ACKNOWLEDGED


def test_the_web_forms_and_the_api_walk_the_same_machine(site: Site) -> None:
    clinician = site.as_role(Role.CLINICIAN)
    finding = site.publish_one()
    review_early = clinician.post_form(f"/findings/{finding}/review", {"verdict": "agree"})
    assert review_early.status_code == 409 and "cannot become reviewed" in review_early.text
    assert clinician.post_form(f"/findings/{finding}/acknowledge").status_code == 303
    page = clinician.get(f"/findings/{finding}").text
    assert 'id="review"' in page and 'id="acknowledge"' not in page, "only the next step is offered"
    no_verdict = clinician.post_form(f"/findings/{finding}/review", {"comment": "x"})
    assert no_verdict.status_code == 400
    done = clinician.post_form(f"/findings/{finding}/review", {"verdict": "agree", "comment": "clear nodule"})
    assert done.headers["location"] == f"/findings/{finding}"
    page = clinician.get(f"/findings/{finding}").text
    assert "clear nodule" in page and 'id="review"' not in page
    api = clinician.post(
        f"/api/v1/findings/{finding}/review",
        json={"verdict": "disagree"},
        headers={"x-csrf-token": clinician.csrf},
    )
    assert api.status_code == 409 and "is reviewed" in api.json()["detail"]
    bad = clinician.post(
        f"/api/v1/findings/{finding}/review", json={"verdict": "maybe"}, headers={"x-csrf-token": clinician.csrf}
    )
    assert bad.status_code == 422


def test_feedback_exports_as_csv_and_json_with_pseudonyms_only(site: Site) -> None:
    clinician = site.as_role(Role.CLINICIAN)
    findings = [site.publish_one(accession_number=f"ACC{i}", study_ref=f"study-{i}") for i in range(3)]
    for finding, verdict in zip(findings[:2], ("agree", "disagree"), strict=True):
        acknowledge(site.store, finding, actor=ALICE)
        review(site.store, finding, verdict, f'comment, with "quotes" {verdict}', actor=BOB)
    acknowledge(site.store, findings[2], actor=ALICE)  # acknowledged only: no verdict to export

    response = clinician.get("/api/v1/feedback.csv")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0]) == list(FEEDBACK_FIELDS)
    assert [(row["study_ref"], row["verdict"]) for row in rows] == [("study-0", "agree"), ("study-1", "disagree")]
    assert rows[1]["comment"] == 'comment, with "quotes" disagree'
    assert rows[0]["reviewed_by"] == "bob" and rows[0]["package_name"] == "chest-ct"
    assert "ACC" not in response.text, "an export leaves the dashboard: no accession numbers"

    as_json = clinician.get("/api/v1/feedback.json").json()
    assert [item["finding_id"] for item in as_json] == [row["finding_id"] for row in rows]
    assert as_json[0]["score"] == pytest.approx(0.91) and as_json[0]["positive"] is True
    later = clinician.get(
        "/api/v1/feedback.json", params={"since": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}
    )
    assert later.json() == []
    assert list(feedback_rows(site.store, FeedbackFilter(site="elsewhere"))) == []
