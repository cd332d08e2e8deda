"""Series grouping: completion on release + quiet time, several associations, duplicates, ordering, multi-frame."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from runtime.series import SeriesInstance, SeriesTracker, SliceRecord, order_slices
from runtime.work_queue import DICOMDIR_SOP_CLASS, InstanceState, SeriesState, WorkQueue, WorkQueueError
from sdk.errors import ConfigError
from sdk.routing import Router, RoutingRule

SERIES = "1.2.826.0.1.3680043.1.2"
STUDY = "1.2.826.0.1.3680043.1"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(tmp_path: Path, clock: FakeClock) -> Iterator[WorkQueue]:
    q = WorkQueue(tmp_path / "queue.db", clock=clock)
    yield q
    q.close()


@pytest.fixture
def tracker(queue: WorkQueue) -> SeriesTracker:
    return SeriesTracker(queue, quiet_time_s=5.0, unreleased_timeout_s=60.0)


def receive(
    queue: WorkQueue,
    sop: str,
    association: str | None,
    *,
    series: str = SERIES,
    sop_class: str = "1.2.840.10008.5.1.4.1.1.2",
) -> None:
    queue.add_received(
        spool_path=f"/spool/{sop}.dcm",
        sop_class_uid=sop_class,
        sop_instance_uid=sop,
        study_instance_uid=STUDY,
        series_instance_uid=series,
        calling_ae="CT1",
        association_id=association,
        transfer_syntax="1.2.840.10008.1.2.1",
        size=1000,
    )


def decode(
    queue: WorkQueue,
    tracker: SeriesTracker,
    sop: str,
    *,
    z: float | None = None,
    number: int | None = None,
    orientation: tuple[float, ...] | None = AXIAL,
    frames: int = 1,
    series: str = SERIES,
) -> None:
    """What the decode worker does: read the header, tell the tracker, advance the instance."""
    tracker.instance_added(
        SeriesInstance(
            sop_instance_uid=sop,
            series_instance_uid=series,
            study_instance_uid=STUDY,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            instance_number=number,
            image_position=None if z is None else (-100.0, -100.0, z),
            image_orientation=orientation,
            frames=frames,
            attributes={"Modality": "CT", "BodyPartExamined": "CHEST", "ImageOrientationPatient": list(AXIAL)},
        )
    )
    queue.advance(sop, InstanceState.DECODED)


def arrive(queue: WorkQueue, tracker: SeriesTracker, clock: FakeClock, sops: list[str], association: str | None):
    for index, sop in enumerate(sops):
        receive(queue, sop, association)
        decode(queue, tracker, sop, z=float(index), number=index + 1)
        clock.t += 0.5


def test_complete_after_release_and_quiet_time(queue: WorkQueue, tracker: SeriesTracker, clock: FakeClock) -> None:
    arrive(queue, tracker, clock, ["1.1", "1.2", "1.3"], "assoc-1")
    clock.t += 30
    assert tracker.tick() == []  # the association is still open
    tracker.association_released("assoc-1", 3)  # the SCP's on_association_released signature
    clock.t += 4.9
    assert tracker.tick() == []  # quiet time not over since the release
    clock.t += 0.2
    (info,) = tracker.tick()
    assert (info.series_instance_uid, info.state, info.generation) == (SERIES, SeriesState.COMPLETE, 1)
    assert (info.instance_count, info.decoded_count, info.slice_count) == (3, 3, 3)
    assert (info.modality, info.body_part, info.orientation, info.associations) == (
        "CT",
        "CHEST",
        "axial",
        ("assoc-1",),
    )
    assert tracker.tick() == []  # each completion is reported once
    assert tracker.counts() == {"open": 0, "complete": 1, "analysing": 0, "analysed": 0}
    assert queue.claim_series("inference").series_instance_uid == SERIES


def test_not_complete_until_every_instance_is_decoded(
    queue: WorkQueue, tracker: SeriesTracker, clock: FakeClock
) -> None:
    arrive(queue, tracker, clock, ["1.1", "1.2"], "assoc-1")
    receive(queue, "1.3", "assoc-1")  # not decoded yet: the decoder is behind
    receive(queue, "1.4", "assoc-1")
    tracker.association_released("assoc-1")
    clock.t += 30
    assert tracker.tick() == []
    decode(queue, tracker, "1.3", z=2.0)
    queue.quarantine("1.4", "truncated")  # set aside: it no longer holds the series back
    (info,) = tracker.tick()
    assert (info.instance_count, info.decoded_count, info.slice_count) == (4, 3, 3)


def test_an_association_that_is_never_released_times_out(
    queue: WorkQueue, tracker: SeriesTracker, clock: FakeClock
) -> None:
    arrive(queue, tracker, clock, ["1.1", "1.2"], "assoc-kept-open")
    clock.t += 59
    assert tracker.tick() == []
    clock.t += 2
    assert [info.series_instance_uid for info in tracker.tick()] == [SERIES]


def test_a_series_over_several_associations(queue: WorkQueue, tracker: SeriesTracker, clock: FakeClock) -> None:
    arrive(queue, tracker, clock, ["1.1", "1.2"], "assoc-A")
    tracker.association_released("assoc-A")
    clock.t += 3
    arrive(queue, tracker, clock, ["1.3", "1.4"], "assoc-B")  # before the quiet time ran out
    clock.t += 10
    assert tracker.tick() == []  # B is still open
    tracker.association_released("assoc-B")
    clock.t += 5.1
    (info,) = tracker.tick()
    assert info.associations == ("assoc-A", "assoc-B")
    assert info.instance_count == 4

    # A late instance re-opens it; completion starts over and the series is a new generation.
    arrive(queue, tracker, clock, ["1.5"], "assoc-C")
    assert tracker.get(SERIES).state is SeriesState.OPEN
    tracker.association_released("assoc-C")
    clock.t += 5.1
    (info,) = tracker.tick()
    assert (info.generation, info.instance_count, info.associations[-1]) == (2, 5, "assoc-C")


def test_a_resend_does_not_reopen_or_recount(queue: WorkQueue, tracker: SeriesTracker, clock: FakeClock) -> None:
    arrive(queue, tracker, clock, ["1.1"], "assoc-A")
    tracker.association_released("assoc-A")
    clock.t += 6
    assert len(tracker.tick()) == 1
    receive(queue, "1.1", "assoc-B")  # the scanner sends it again
    info = tracker.get(SERIES)
    assert (info.state, info.instance_count, info.associations) == (SeriesState.COMPLETE, 1, ("assoc-A",))


def test_folder_ingest_without_association_completes_on_quiet_time(
    queue: WorkQueue, tracker: SeriesTracker, clock: FakeClock
) -> None:
    arrive(queue, tracker, clock, ["1.1", "1.2"], None)
    clock.t += 4
    assert tracker.tick() == []
    clock.t += 1.5
    assert len(tracker.tick()) == 1


def test_restart_keeps_series_state(tmp_path: Path, clock: FakeClock) -> None:
    queue = WorkQueue(tmp_path / "queue.db", clock=clock)
    tracker = SeriesTracker(queue, quiet_time_s=5, unreleased_timeout_s=600)
    arrive(queue, tracker, clock, ["1.1", "1.2"], "assoc-1")
    queue.close()  # killed mid-association: the association will never be released

    queue = WorkQueue(tmp_path / "queue.db", clock=clock)
    assert queue.resume().associations == 1  # its connection died with the process
    tracker = SeriesTracker(queue, quiet_time_s=5, unreleased_timeout_s=600)
    assert tracker.get(SERIES).instance_count == 2
    clock.t += 5.1
    (info,) = tracker.tick()
    assert [s.sop_instance_uid for s in tracker.slices(SERIES)] == ["1.1", "1.2"]
    assert info.decoded_count == 2
    queue.close()


def test_duplicate_slice_positions_are_kept_and_flagged(
    queue: WorkQueue, tracker: SeriesTracker, clock: FakeClock
) -> None:
    for sop, z in [("1.1", 0.0), ("1.2", 1.25), ("1.3", 1.25), ("1.4", 2.5), ("1.5", 1.3), ("1.6", 2.504)]:
        receive(queue, sop, "assoc-1")
        decode(queue, tracker, sop, z=z)
    decode(queue, tracker, "1.2", z=1.25)  # a redo after a crash is not a duplicate of itself
    info = tracker.get(SERIES)
    assert (info.instance_count, info.slice_count, info.duplicate_positions) == (6, 6, 4)
    flagged = {s.sop_instance_uid for s in tracker.slices(SERIES) if s.duplicate}
    assert flagged == {"1.2", "1.3", "1.4", "1.6"}  # 2.504 is within the 0.01 mm tolerance of 2.5
    assert [s.sop_instance_uid for s in tracker.slices(SERIES)] == ["1.1", "1.2", "1.3", "1.5", "1.4", "1.6"]


def oblique(degrees: float) -> tuple[float, ...]:
    a = math.radians(degrees)
    return (1.0, 0.0, 0.0, 0.0, math.cos(a), math.sin(a))


def test_oblique_slices_are_ordered_along_their_normal(
    queue: WorkQueue, tracker: SeriesTracker, clock: FakeClock
) -> None:
    orientation = oblique(35)
    row, column = orientation[:3], orientation[3:]
    normal = (0.0, -math.sin(math.radians(35)), math.cos(math.radians(35)))
    origin = (-120.0, -80.0, 40.0)
    rng = random.Random(7)
    sops = [f"1.{i}" for i in range(12)]
    shuffled = list(enumerate(sops))
    rng.shuffle(shuffled)
    for index, sop in shuffled:
        # 2.5 mm apart along the normal, each shifted within its plane (a moving table origin) so that
        # sorting on z alone is wrong; InstanceNumber deliberately runs backwards.
        shift_row, shift_column = rng.uniform(-20, 20), rng.uniform(-20, 20)
        position = tuple(
            o + 2.5 * index * n + shift_row * r + shift_column * c
            for o, n, r, c in zip(origin, normal, row, column, strict=True)
        )
        receive(queue, sop, "assoc-1")
        tracker.instance_added(
            SeriesInstance(sop, SERIES, STUDY, instance_number=100 - index, image_position=position,
                           image_orientation=orientation)
        )  # fmt: skip
    ordered = tracker.slices(SERIES)
    assert [s.sop_instance_uid for s in ordered] == sops
    by_z = sorted(ordered, key=lambda s: s.image_position[2])
    assert [s.sop_instance_uid for s in by_z] != sops  # the test would not tell a z sort from the right one
    assert tracker.get(SERIES).duplicate_positions == 0


def test_ordering_falls_back_to_instance_number() -> None:
    slices = [
        SliceRecord("c", instance_number=3, image_position=(0.0, 0.0, 0.0), image_orientation=AXIAL),
        SliceRecord("a", instance_number=1, image_position=None, image_orientation=AXIAL),
        SliceRecord("z", instance_number=None),
        SliceRecord("b", instance_number=2, image_position=(0.0, 0.0, 9.0), image_orientation=AXIAL),
    ]
    assert [s.sop_instance_uid for s in order_slices(slices)] == ["a", "b", "c", "z"]
    localizer = SliceRecord("loc", 1, (0.0, 0.0, 50.0), (1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    axial = [SliceRecord(f"s{i}", 10 - i, (0.0, 0.0, float(i)), AXIAL) for i in range(3)]
    # The most common orientation sets the axis; the localizer is placed by its position along it.
    assert [s.sop_instance_uid for s in order_slices([localizer, *axial])] == ["s0", "s1", "s2", "loc"]


def test_multiframe_instances_count_their_frames(queue: WorkQueue, tracker: SeriesTracker, clock: FakeClock) -> None:
    receive(queue, "1.1", "assoc-1")
    decode(queue, tracker, "1.1", z=0.0, frames=150)
    tracker.association_released("assoc-1")
    clock.t += 6
    (info,) = tracker.tick()
    assert (info.instance_count, info.slice_count, info.multiframe) == (1, 150, True)
    router = Router([RoutingRule(package="ct-volume", unit="series", modality="CT", min_slices=20)])
    assert router.route(info.routing_subject()) == ["ct-volume"]


def test_series_instance_from_real_and_enhanced_datasets() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    instance = SeriesInstance.from_dataset(ds)
    assert instance.series_instance_uid == ds.SeriesInstanceUID
    assert instance.instance_number == int(ds.InstanceNumber)
    assert instance.image_position == tuple(float(v) for v in ds.ImagePositionPatient)
    assert (instance.frames, instance.is_dicomdir) == (1, False)

    enhanced = pydicom.Dataset()
    enhanced.SOPInstanceUID, enhanced.SeriesInstanceUID, enhanced.StudyInstanceUID = "9.1", "9.2", "9.3"
    enhanced.NumberOfFrames = "12"
    orientation, position = pydicom.Dataset(), pydicom.Dataset()
    orientation.ImageOrientationPatient = list(AXIAL)
    position.ImagePositionPatient = [1.0, 2.0, 3.0]
    shared, first = pydicom.Dataset(), pydicom.Dataset()
    shared.PlaneOrientationSequence = [orientation]
    first.PlanePositionSequence = [position]
    enhanced.SharedFunctionalGroupsSequence = [shared]
    enhanced.PerFrameFunctionalGroupsSequence = [first]
    instance = SeriesInstance.from_dataset(enhanced)
    assert (instance.frames, instance.image_position, instance.image_orientation) == (12, (1.0, 2.0, 3.0), AXIAL)


def test_dicomdir_files_are_not_part_of_a_series(queue: WorkQueue, tracker: SeriesTracker) -> None:
    ds = pydicom.dcmread(get_testdata_file("DICOMDIR"))
    instance = SeriesInstance.from_dataset(ds)
    assert instance.is_dicomdir
    receive(queue, "2.1", None, series="", sop_class=DICOMDIR_SOP_CLASS)
    assert tracker.instance_added(instance) is False
    receive(queue, "2.2", None, series="1.9", sop_class=DICOMDIR_SOP_CLASS)  # even with a series UID
    assert tracker.series() == []


def test_an_instance_the_queue_does_not_know_is_refused(tracker: SeriesTracker) -> None:
    with pytest.raises(WorkQueueError, match="not in the work queue"):
        tracker.instance_added(SeriesInstance("7.7", SERIES, STUDY))


def test_bad_timings_are_refused(queue: WorkQueue) -> None:
    with pytest.raises(ConfigError, match="quiet_time_s"):
        SeriesTracker(queue, quiet_time_s=30, unreleased_timeout_s=10)
