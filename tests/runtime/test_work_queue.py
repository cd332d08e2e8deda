"""The durable work queue: idempotency, leases, resume, the outbox, and kill -9 at random points."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from runtime.work_queue import (
    AddResult,
    InstanceState,
    OutboxState,
    SeriesClaim,
    WorkQueue,
    WorkQueueError,
)
from sdk.messages import Finding, PackageRef, finding_id, parse_message

REPO = Path(__file__).resolve().parents[2]
PACKAGE_SHA = "ab" * 32


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


def make_finding(sop: str, frame: int | None = None, package_sha: str = PACKAGE_SHA) -> Finding:
    return Finding(
        id=finding_id(sop, package_sha, frame),
        site="site-a",
        device="dev-1",
        seq=0,
        package=PackageRef(
            name="chest-ct-nodule", version="1.0.0", precision="int8", profile="x86", sha256=package_sha
        ),
        study_ref="s" * 32,
        series_ref="r" * 32,
        instance_ref="i" * 32,
        modality="CT",
        frame=frame,
        label="nodule",
        score=0.7,
        scores={"nodule": 0.7},
        threshold=0.5,
        positive=True,
    )


def add(queue: WorkQueue, sop: str, *, series: str = "1.2.3.1", association: str | None = "assoc-1", **kw) -> AddResult:
    fields = {
        "spool_path": f"/spool/{sop}.dcm",
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "sop_instance_uid": sop,
        "study_instance_uid": "1.2.3",
        "series_instance_uid": series,
        "calling_ae": "SCANNER",
        "association_id": association,
        "transfer_syntax": "1.2.840.10008.1.2.1",
        "size": 1234,
    }
    fields.update(kw)
    return queue.add_received(**fields)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(tmp_path: Path, clock: FakeClock) -> Iterator[WorkQueue]:
    q = WorkQueue(tmp_path / "queue.db", clock=clock, max_attempts=3)
    yield q
    q.close()


def to_analysed(queue: WorkQueue, sop: str, findings: list[Finding]) -> int:
    queue.advance(sop, InstanceState.DECODED)
    return queue.record_findings(sop, findings)


def test_add_received_is_idempotent_and_never_resets_progress(queue: WorkQueue) -> None:
    assert add(queue, "1.1") is AddResult.ADDED
    assert add(queue, "1.1", spool_path="/spool/other.dcm", durable=False) is AddResult.DUPLICATE
    assert len(queue.instances()) == 1
    assert queue.get("1.1").spool_path == Path("/spool/1.1.dcm")

    to_analysed(queue, "1.1", [make_finding("1.1")])
    queue.mark_acked([finding_id("1.1", PACKAGE_SHA)])
    assert queue.get("1.1").state is InstanceState.REPORTED
    # A resend after it was reported is ignored: no new row, no new work, no new finding.
    assert add(queue, "1.1") is AddResult.DUPLICATE
    assert queue.get("1.1").state is InstanceState.REPORTED
    assert queue.counts()["received"] == 0
    assert len(queue.findings()) == 1


def test_add_takes_the_ingests_stored_instance(queue: WorkQueue) -> None:
    from runtime.spool import IngestSource, StoredInstance

    stored = StoredInstance(
        path=Path("/spool/ab/1.5.dcm"),
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid="1.5",
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.1",
        transfer_syntax_uid="1.2.840.10008.1.2.4.90",
        size_bytes=4321,
        received_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        source=IngestSource.FOLDER,
    )
    assert queue.add(stored) is AddResult.ADDED
    record = queue.get("1.5")
    assert (record.spool_path, record.transfer_syntax, record.size) == (stored.path, "1.2.840.10008.1.2.4.90", 4321)
    assert (record.calling_ae, record.association_id) == ("", None)
    assert record.received_at == stored.received_at.timestamp()
    assert queue.add(stored) is AddResult.DUPLICATE


def test_resend_replaces_a_quarantined_instance(queue: WorkQueue) -> None:
    add(queue, "1.1")
    queue.claim_next("received", "decoder")
    queue.quarantine("1.1", "truncated pixel data")
    record = queue.get("1.1")
    assert (record.state, record.reason) == (InstanceState.QUARANTINED, "truncated pixel data")

    assert add(queue, "1.1", spool_path="/spool/fixed.dcm") is AddResult.REPLACED
    record = queue.get("1.1")
    assert record.state is InstanceState.RECEIVED
    assert (record.reason, record.attempts, record.spool_path) == (None, 0, Path("/spool/fixed.dcm"))


def test_record_findings_twice_gives_one_finding_and_contiguous_sequence(queue: WorkQueue) -> None:
    for sop in ("1.1", "1.2", "1.3"):
        add(queue, sop)
    assert to_analysed(queue, "1.1", [make_finding("1.1", 0), make_finding("1.1", 1)]) == 2
    # The redo after a crash: same ids, nothing new, state unchanged.
    assert queue.record_findings("1.1", [make_finding("1.1", 0), make_finding("1.1", 1)]) == 0
    assert to_analysed(queue, "1.2", [make_finding("1.2")]) == 1
    # A second package on the same instance makes a different finding.
    assert to_analysed(queue, "1.3", [make_finding("1.3"), make_finding("1.3", package_sha="cd" * 32)]) == 2

    entries = queue.findings()
    assert [e.seq for e in entries] == [0, 1, 2, 3, 4]
    assert len({e.finding_id for e in entries}) == 5
    for entry in entries:
        message = parse_message(entry.payload)
        assert isinstance(message, Finding)
        assert (message.id, message.seq) == (entry.finding_id, entry.seq)
    assert [e.finding_id for e in queue.findings("1.1")] == [finding_id("1.1", PACKAGE_SHA, f) for f in (0, 1)]
    assert queue.get("1.1").state is InstanceState.ANALYSED


def test_record_findings_is_atomic_with_the_state_change(queue: WorkQueue) -> None:
    add(queue, "1.1")
    with pytest.raises(WorkQueueError, match="cannot go from received to analysed"):
        queue.record_findings("1.1", [make_finding("1.1")])
    assert queue.findings() == []  # rolled back with the refused transition
    assert queue.get("1.1").state is InstanceState.RECEIVED
    with pytest.raises(WorkQueueError, match="not in the work queue"):
        queue.record_findings("9.9", [make_finding("9.9")])


def test_an_instance_without_findings_is_reported_at_once(queue: WorkQueue) -> None:
    add(queue, "1.1")
    assert to_analysed(queue, "1.1", []) == 0
    assert queue.get("1.1").state is InstanceState.REPORTED
    # A second package's finding later: analysed again until the dashboard has it.
    assert queue.record_findings("1.1", [make_finding("1.1", package_sha="cd" * 32)]) == 1
    assert queue.get("1.1").state is InstanceState.ANALYSED
    queue.mark_acked([finding_id("1.1", "cd" * 32)])
    assert queue.get("1.1").state is InstanceState.REPORTED
    assert queue.record_findings("1.1", [make_finding("1.1", package_sha="cd" * 32)]) == 0
    assert queue.get("1.1").state is InstanceState.REPORTED


def test_findings_for_a_quarantined_instance_are_dropped(queue: WorkQueue) -> None:
    add(queue, "1.1")
    queue.claim_next("received", "decoder")
    queue.quarantine("1.1", "per-instance timeout")
    assert queue.record_findings("1.1", [make_finding("1.1")]) == 0
    assert queue.findings() == []


def test_record_findings_batch_commits_a_group_and_keeps_each_instance_apart(queue: WorkQueue) -> None:
    for sop in ("1.1", "1.2", "1.3", "1.4", "1.5"):
        add(queue, sop)
    # 1.1-1.3 claimed for decoding (the appliance hands tensors straight to inference), 1.4 decoded, 1.5 not claimed.
    claimed = [record.sop_instance_uid for record in queue.claim_batch("received", "decoder", limit=3)]
    assert claimed == ["1.1", "1.2", "1.3"]
    queue.advance("1.4", InstanceState.DECODED)
    queue.quarantine("1.3", "per-instance timeout")  # set aside while its findings were being made
    results = queue.record_findings_batch(
        [
            ("1.1", [make_finding("1.1", 0), make_finding("1.1", 1)]),
            ("1.2", []),
            ("1.3", [make_finding("1.3")]),
            ("1.4", [make_finding("1.4")]),
            ("1.5", [make_finding("1.5")]),
            ("9.9", [make_finding("9.9")]),
        ],
        worker="decoder",
    )
    assert results[:2] == [2, 0] and results[3] == 1
    refusals = ((2, "quarantined meanwhile"), (4, "from received to analysed"), (5, "not in the work queue"))
    for index, message in refusals:
        assert isinstance(results[index], WorkQueueError) and message in str(results[index]), results[index]
    states = {sop: queue.get(sop).state for sop in ("1.1", "1.2", "1.3", "1.4", "1.5")}
    assert states == {
        "1.1": InstanceState.ANALYSED,
        "1.2": InstanceState.REPORTED,  # no finding: nothing to wait for
        "1.3": InstanceState.QUARANTINED,
        "1.4": InstanceState.ANALYSED,
        "1.5": InstanceState.RECEIVED,
    }
    assert queue.get("1.1").worker is None and queue.get("1.1").lease_until is None
    # Refused items left nothing behind; the recorded ones got contiguous sequence numbers.
    assert [(e.sop_instance_uid, e.seq) for e in queue.findings()] == [("1.1", 0), ("1.1", 1), ("1.4", 2)]
    # A redo after a crash adds nothing and moves nothing back.
    assert queue.record_findings_batch([("1.1", [make_finding("1.1", 0), make_finding("1.1", 1)])]) == [0]
    assert len(queue.findings()) == 3 and queue.get("1.1").state is InstanceState.ANALYSED
    assert queue.record_findings_batch([]) == []


def test_record_findings_batch_respects_the_claim(queue: WorkQueue) -> None:
    add(queue, "1.1")
    queue.claim_next("received", "decoder")
    (result,) = queue.record_findings_batch([("1.1", [make_finding("1.1")])], worker="another")
    assert isinstance(result, WorkQueueError) and "claimed by decoder" in str(result)
    assert queue.findings() == [] and queue.get("1.1").state is InstanceState.DECODING


def test_transitions_the_state_machine_refuses(queue: WorkQueue) -> None:
    add(queue, "1.1")
    with pytest.raises(WorkQueueError, match="from received to reported"):
        queue.advance("1.1", "reported")
    with pytest.raises(WorkQueueError, match="quarantine"):
        queue.advance("1.1", "quarantined")
    with pytest.raises(WorkQueueError, match="cannot be claimed"):
        queue.claim_next("analysed", "w")
    with pytest.raises(WorkQueueError, match="not in the work queue"):
        queue.advance("9.9", "decoded")
    queue.advance("1.1", "decoded", rows=512)
    queue.advance("1.1", "decoded", columns=512)  # a redo merges its fields
    assert queue.get("1.1").info == {"rows": 512, "columns": 512}
    with pytest.raises(WorkQueueError, match="from decoded to received"):
        queue.advance("1.1", "received")


def test_claims_are_fifo_and_exclusive(queue: WorkQueue, clock: FakeClock) -> None:
    for i in range(4):
        add(queue, f"1.{i}")
        clock.t += 1
    first = queue.claim_next("received", "decoder")
    batch = queue.claim_batch("received", "decoder", limit=5)
    assert first.sop_instance_uid == "1.0"
    assert [r.sop_instance_uid for r in batch] == ["1.1", "1.2", "1.3"]
    assert all(r.state is InstanceState.DECODING and r.worker == "decoder" for r in [first, *batch])
    assert queue.claim_next("received", "other") is None


def test_a_lease_expires_and_the_item_is_claimed_again(queue: WorkQueue, clock: FakeClock) -> None:
    add(queue, "1.1")
    claimed = queue.claim_next("received", "decoder-1", lease_s=10)
    assert claimed.attempts == 1
    clock.t += 9
    assert queue.claim_next("received", "decoder-2") is None
    queue.renew("1.1", "decoder-1", lease_s=10)
    clock.t += 9
    assert queue.claim_next("received", "decoder-2") is None
    clock.t += 2
    again = queue.claim_next("received", "decoder-2", lease_s=10)
    assert (again.sop_instance_uid, again.worker, again.attempts) == ("1.1", "decoder-2", 2)
    # The first worker lost its claim: its late result is refused.
    with pytest.raises(WorkQueueError, match="claimed by decoder-2"):
        queue.advance("1.1", "decoded", worker="decoder-1")
    with pytest.raises(WorkQueueError, match="not claimed by decoder-1"):
        queue.renew("1.1", "decoder-1")
    queue.advance("1.1", "decoded", worker="decoder-2")
    assert queue.get("1.1").state is InstanceState.DECODED


def test_an_instance_that_keeps_killing_its_worker_fails(queue: WorkQueue, clock: FakeClock) -> None:
    add(queue, "1.1")
    for _ in range(3):  # max_attempts
        assert queue.claim_next("received", "decoder", lease_s=1) is not None
        clock.t += 2
    assert queue.claim_next("received", "decoder") is None
    record = queue.get("1.1")
    assert record.state is InstanceState.FAILED
    assert "gave up after 3 attempts" in record.reason


def test_resume_returns_claimed_work_to_its_stable_state(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "queue.db"
    queue = WorkQueue(path, clock=clock)
    for sop in ("1.1", "1.2", "1.3"):
        add(queue, sop)
    queue.claim_next("received", "decoder")  # 1.1 decoding
    queue.advance("1.2", "decoded")
    queue.claim_next("decoded", "inference")  # 1.2 analysing
    to_analysed(queue, "1.3", [make_finding("1.3")])
    queue.mark_sent([finding_id("1.3", PACKAGE_SHA)])
    with queue.transaction() as db:  # a complete series claimed by the inference worker
        db.execute("UPDATE series SET state = 'complete', completed_at = 1, generation = 1")
    assert queue.claim_series("inference") == SeriesClaim("1.2.3.1", 1)
    queue.close()  # the process dies here

    queue = WorkQueue(path, clock=clock)
    report = queue.resume()
    assert (report.instances, report.series, report.associations, report.findings) == (2, 1, 1, 1)
    assert queue.get("1.1").state is InstanceState.RECEIVED
    assert queue.get("1.2").state is InstanceState.DECODED
    assert queue.get("1.1").worker is None
    assert [e.state for e in queue.findings()] == [OutboxState.PENDING]
    assert queue.claim_series("inference") == SeriesClaim("1.2.3.1", 1)
    assert queue.resume().instances == 0
    queue.close()


def test_counts_cover_every_state(queue: WorkQueue) -> None:
    for i in range(5):
        add(queue, f"1.{i}")
    queue.claim_next("received", "decoder")
    queue.advance("1.1", "decoded")
    queue.quarantine("1.2", "not an image")
    queue.fail("1.3", "no live package accepts MG")
    assert queue.counts() == {
        "received": 1,
        "decoding": 1,
        "decoded": 1,
        "analysing": 0,
        "analysed": 0,
        "reported": 0,
        "quarantined": 1,
        "failed": 1,
    }


def test_outbox_pending_sent_acked(queue: WorkQueue, clock: FakeClock) -> None:
    for sop in ("1.1", "1.2"):
        add(queue, sop)
    to_analysed(queue, "1.1", [make_finding("1.1", 0), make_finding("1.1", 1)])
    to_analysed(queue, "1.2", [make_finding("1.2")])
    ids = [e.finding_id for e in queue.findings()]
    assert [e.finding_id for e in queue.pending(2)] == ids[:2]
    assert queue.depth() == 3

    assert queue.mark_sent(ids[:2]) == 2
    assert queue.mark_sent(ids[:2]) == 0
    assert [e.finding_id for e in queue.pending()] == ids[2:]
    assert queue.depth() == 3  # sent is not acknowledged

    assert queue.mark_acked([ids[0], "unknown-id"]) == 1
    assert queue.get("1.1").state is InstanceState.ANALYSED  # one of its findings is still unacknowledged
    assert queue.mark_acked([ids[1], ids[0]]) == 1
    assert queue.get("1.1").state is InstanceState.REPORTED
    assert queue.depth() == 1

    queue.mark_sent(ids[2:])
    clock.t += 30
    assert queue.requeue_unacknowledged(60) == 0
    clock.t += 31
    assert queue.requeue_unacknowledged(60) == 1
    assert [e.finding_id for e in queue.pending()] == ids[2:]
    queue.mark_acked(ids[2:])
    assert queue.get("1.2").state is InstanceState.REPORTED and queue.depth() == 0

    clock.t += 100
    assert queue.purge_acked(50) == 3
    add(queue, "1.3")
    to_analysed(queue, "1.3", [make_finding("1.3")])
    assert [e.seq for e in queue.findings()] == [3]  # sequence numbers are never re-used


def test_series_findings_and_reopen_during_analysis(queue: WorkQueue, clock: FakeClock) -> None:
    add(queue, "1.1")
    with queue.transaction() as db:
        db.execute("UPDATE series SET state = 'complete', completed_at = 1, generation = 1")
    claim = queue.claim_series("inference")
    add(queue, "1.2")  # a late instance re-opens the series while it is analysed
    assert queue.record_series_findings(claim, [make_finding("1.2.3.1")]) == 1
    with queue.transaction() as db:
        assert db.execute("SELECT state FROM series").fetchone()[0] == "open"
    assert queue.findings()[0].series_instance_uid == "1.2.3.1"
    assert queue.findings()[0].sop_instance_uid is None


def test_a_file_that_is_not_a_queue_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "queue.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(WorkQueueError, match="not a usable work queue") as info:
        WorkQueue(bad)
    assert info.value.path == bad


def test_three_threads_share_the_queue(tmp_path: Path) -> None:
    queue = WorkQueue(tmp_path / "queue.db")
    sops = [f"1.2.{i}" for i in range(60)]
    done = threading.Event()
    errors: list[BaseException] = []

    def guard(fn):
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # surfaced by the assertion below
                errors.append(exc)

        return run

    def scp() -> None:
        for sop in sops:
            add(queue, sop)

    def decoder() -> None:
        while not done.is_set():
            item = queue.claim_next("received", "decoder")
            if item is None:
                time.sleep(0.001)
                continue
            queue.advance(item.sop_instance_uid, "decoded", worker="decoder")

    def inference() -> None:
        finished = 0
        while finished < len(sops):
            item = queue.claim_next("decoded", "inference")
            if item is None:
                time.sleep(0.001)
                continue
            queue.record_findings(item.sop_instance_uid, [make_finding(item.sop_instance_uid)], worker="inference")
            finished += 1
        done.set()

    threads = [threading.Thread(target=guard(fn)) for fn in (scp, decoder, inference)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert queue.counts()["analysed"] == len(sops)
    assert [e.seq for e in queue.findings()] == list(range(len(sops)))
    queue.close()


# -- kill -9 at random points ---------------------------------------------------------------------------------------

CHILD = r"""
import random, sys
from runtime.work_queue import WorkQueue
from sdk.messages import Finding, PackageRef, finding_id

path, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
sha = "ab" * 32
queue = WorkQueue(path, max_attempts=1_000_000)
queue.resume()

def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()

def finding(sop, frame):
    return Finding(
        id=finding_id(sop, sha, frame), site="s", device="d", seq=0,
        package=PackageRef(name="p", version="1.0.0", precision="int8", profile="x86", sha256=sha),
        study_ref="a", series_ref="b", instance_ref=sop, modality="CT", frame=frame, label="nodule",
        score=0.5, scores={"nodule": 0.5}, threshold=0.5, positive=True,
    )

def step():
    item = queue.claim_next("received", "decoder")
    if item is not None:
        queue.advance(item.sop_instance_uid, "decoded", worker="decoder")
    item = queue.claim_next("decoded", "inference")
    if item is not None:
        sop = item.sop_instance_uid
        queue.record_findings(sop, [finding(sop, 0), finding(sop, 1)], worker="inference")
        say("F " + sop)
    entries = queue.pending(3)
    if entries and rng.random() < 0.5:
        ids = [e.finding_id for e in entries]
        queue.mark_sent(ids)
        if rng.random() < 0.5:
            queue.mark_acked(ids[:1])
    return item is not None

say("READY")
for i in range(count):
    sop = f"1.2.826.0.1.{i}"
    if queue.get(sop) is None:
        queue.add_received(
            spool_path=f"/spool/{sop}.dcm", sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid=sop,
            study_instance_uid="1.2.3", series_instance_uid="1.2.3.4", calling_ae="CT1", association_id=seed,
            transfer_syntax="1.2.840.10008.1.2.1", size=100,
        )
        say("A " + sop)
    step()
while step():
    pass
say("DONE")
"""


def run_child(path: Path, count: int, seed: int, kill_after_lines: int | None, delay: float = 0.0) -> list[str]:
    """Run the child; SIGKILL it after it reported ``kill_after_lines`` steps (+ ``delay``), or let it finish."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(count), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    seen: list[bytes] = []
    try:
        assert proc.stdout.readline() == b"READY\n", proc.stderr.read().decode()
        if kill_after_lines is not None:
            # Counting the child's own progress lands the kill mid-stream whatever the machine's speed.
            while len(seen) < kill_after_lines and (line := proc.stdout.readline()):
                seen.append(line)
            time.sleep(delay)
            proc.kill()  # SIGKILL
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = (b"".join(seen) + out).decode().split("\n")[:-1]  # the last piece may be a line cut by the kill
    if kill_after_lines is None:
        assert proc.returncode == 0 and lines[-1] == "DONE", err.decode()
    elif "DONE" not in lines:  # a late run may finish its little remaining work before the kill lands
        assert proc.returncode == -9, err.decode()
    return lines


def check_invariants(path: Path, added: set[str], analysed: set[str], count: int) -> dict[str, int]:
    queue = WorkQueue(path)
    try:
        queue.resume()
        records = {r.sop_instance_uid: r for r in queue.instances()}
        assert added <= set(records), "an instance acknowledged as added was lost"
        findings = queue.findings()
        assert [e.seq for e in findings] == list(range(len(findings))), "sequence numbers not contiguous"
        by_instance: dict[str, list[str]] = {}
        for entry in findings:
            by_instance.setdefault(entry.sop_instance_uid, []).append(entry.finding_id)
            message = parse_message(entry.payload)
            assert (message.id, message.seq) == (entry.finding_id, entry.seq)
        for sop, record in records.items():
            expected = [finding_id(sop, PACKAGE_SHA, frame) for frame in (0, 1)]
            if record.state in (InstanceState.ANALYSED, InstanceState.REPORTED):
                assert by_instance.get(sop) == expected, f"{sop} analysed without exactly its two findings"
            else:
                assert record.state in (InstanceState.RECEIVED, InstanceState.DECODED), record
                assert sop not in by_instance, f"{sop} has findings but is {record.state}"
                assert sop not in analysed, f"{sop} was recorded as analysed, now {record.state}"
        assert len(records) <= count
        return queue.counts()
    finally:
        queue.close()


def test_sigkill_at_random_points_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    count = 100
    rng = random.Random(20240611)
    added: set[str] = set()
    analysed: set[str] = set()
    killed = 0
    for run in range(20):
        lines = run_child(path, count, seed=run, kill_after_lines=rng.randint(0, 8), delay=rng.uniform(0, 0.01))
        killed += "DONE" not in lines
        added |= {line[2:] for line in lines if line.startswith("A ")}
        analysed |= {line[2:] for line in lines if line.startswith("F ")}
        check_invariants(path, added, analysed, count)
    assert analysed, "no run got as far as recording findings"
    assert killed >= 10, f"only {killed} of 20 runs were killed mid-stream"

    run_child(path, count, seed=99, kill_after_lines=None)
    counts = check_invariants(path, added, analysed, count)
    assert counts["analysed"] + counts["reported"] == count
    queue = WorkQueue(path)
    assert len(queue.findings()) == 2 * count
    assert json.loads(queue.findings()[-1].payload)["seq"] == 2 * count - 1
    queue.close()
