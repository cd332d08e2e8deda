"""Grouping instances into series, deciding when a series is complete, and ordering its slices.

A scanner sends a series over one or several associations and never says
"this series is done", so completion is inferred: a series is complete when

* every association that delivered an instance of it has been released (or
  aborted, or died with a restart), and no instance arrived for it, nor was
  an association of it released, for ``quiet_time_s``; or, for scanners that
  keep an association open for hours, no instance arrived for
  ``unreleased_timeout_s``; and
* every instance of it has been decoded or set aside, so its attributes and
  slice geometry are known when it is routed.

A new instance for a complete (or even analysed) series re-opens it: it will
complete again with the next ``generation``. The arrival side of this
bookkeeping is written by :meth:`~runtime.work_queue.WorkQueue.add_received`
in the same transaction as the instance itself; the tracker adds what the
decoded header tells (attributes, geometry, frames) and the association
releases, and finds the series that became complete. Everything lives in the
work queue's database, so a restart keeps it.

Slices with the same position are both kept and flagged ``duplicate`` (a
re-sent reconstruction, two echoes): dropping either could drop the one the
model needs. A multi-frame instance counts all its frames as slices.
DICOMDIR files are indexes, not images: they belong to no series.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.work_queue import DICOMDIR_SOP_CLASS, InstanceState, SeriesState, WorkQueue, WorkQueueError
from sdk.errors import ConfigError
from sdk.routing import (
    Orientation,
    RoutingSubject,
    classify_orientation,
    dicom_attributes,
    image_geometry,
    slice_normal,
)

__all__ = ["SeriesInfo", "SeriesInstance", "SeriesTracker", "SliceRecord", "order_slices"]

log = logging.getLogger(__name__)


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class SeriesInstance:
    """What a decoded header tells about an instance's place in its series.

    Attributes:
        attributes: routing attributes (:func:`sdk.routing.dicom_attributes`);
            the series keeps those of its first decoded instance.
        frames: ``NumberOfFrames`` (1 for single-frame images).
    """

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str = ""
    instance_number: int | None = None
    image_position: tuple[float, float, float] | None = None
    image_orientation: tuple[float, ...] | None = None
    frames: int = 1
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_dicomdir(self) -> bool:
        return self.sop_class_uid == DICOMDIR_SOP_CLASS

    @classmethod
    def from_dataset(cls, ds: Any, *, keywords: Sequence[str] = ()) -> SeriesInstance:
        """Read the series-relevant attributes of a dataset (pass :attr:`Router.keywords` as ``keywords``)."""
        attributes = dicom_attributes(ds, keywords)
        position, orientation = image_geometry(ds)
        return cls(
            sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
            series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
            study_instance_uid=str(ds.get("StudyInstanceUID", "")),
            sop_class_uid=str(attributes.get("SOPClassUID", "")),
            instance_number=_int(ds.get("InstanceNumber")),
            image_position=position,
            image_orientation=orientation,
            frames=max(1, _int(ds.get("NumberOfFrames")) or 1),
            attributes=attributes,
        )


@dataclass(frozen=True)
class SliceRecord:
    """One instance of a series, as needed to put the series in order."""

    sop_instance_uid: str
    instance_number: int | None = None
    image_position: tuple[float, float, float] | None = None
    image_orientation: tuple[float, ...] | None = None
    frames: int = 1
    duplicate: bool = False
    spool_path: Path | None = None
    state: InstanceState | None = None


def _orientation_key(orientation: Sequence[float] | None) -> str | None:
    return None if orientation is None else ",".join(f"{v:.4f}" for v in orientation)


def _projection(position: Sequence[float] | None, normal: Sequence[float] | None) -> float | None:
    if position is None or normal is None:
        return None
    return sum(p * n for p, n in zip(position, normal, strict=True))


def order_slices(slices: Sequence[SliceRecord]) -> list[SliceRecord]:
    """Slices in spatial order along the series' slice normal, or by InstanceNumber when geometry is missing.

    The normal is that of the series' most common ImageOrientationPatient
    (a stray localizer does not tilt the axis), so oblique series sort
    correctly. If any slice lacks a position or orientation the whole series
    falls back to InstanceNumber (missing numbers last); ties keep a stable
    order by InstanceNumber, then SOP Instance UID.
    """
    orientations = Counter(s.image_orientation for s in slices if s.image_orientation is not None)
    normal = slice_normal(orientations.most_common(1)[0][0]) if orientations else None
    geometric = normal is not None and all(s.image_position is not None for s in slices)

    def by_number(s: SliceRecord) -> tuple[bool, int, str]:
        return (s.instance_number is None, s.instance_number or 0, s.sop_instance_uid)

    if geometric:
        return sorted(slices, key=lambda s: (_projection(s.image_position, normal), *by_number(s)))
    return sorted(slices, key=by_number)


@dataclass(frozen=True)
class SeriesInfo:
    """A series as the tracker knows it.

    Attributes:
        instance_count: instances received (each SOP Instance UID once).
        decoded_count: instances whose header was read.
        slice_count: frames of the decoded instances not set aside.
        duplicate_positions: instances sharing a slice position with another.
        generation: how many times it completed (it re-opens when instances
            arrive after completion).
    """

    series_instance_uid: str
    study_instance_uid: str
    state: SeriesState
    modality: str
    body_part: str
    description: str
    instance_count: int
    decoded_count: int
    slice_count: int
    duplicate_positions: int
    multiframe: bool
    associations: tuple[str, ...]
    first_received: float
    last_received: float
    completed_at: float | None
    generation: int
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def orientation(self) -> Orientation | None:
        iop = self.attributes.get("ImageOrientationPatient")
        return classify_orientation(iop if isinstance(iop, list) else None)

    def routing_subject(self) -> RoutingSubject:
        """The series as a subject for :meth:`sdk.routing.Router.route`."""
        return RoutingSubject("series", dict(self.attributes), self.slice_count)


_SET_ASIDE = ("quarantined", "failed")
_SERIES_QUERY = f"""
SELECT s.series_instance_uid, s.study_instance_uid, s.state, s.modality, s.body_part, s.description,
       s.instance_count, s.first_received, s.last_received, s.completed_at, s.generation, s.attributes,
       (SELECT count(*) FROM series_slices WHERE series_instance_uid = s.series_instance_uid),
       (SELECT coalesce(sum(t.frames), 0) FROM series_slices t JOIN instances i USING (sop_instance_uid)
         WHERE t.series_instance_uid = s.series_instance_uid AND i.state NOT IN {_SET_ASIDE}),
       (SELECT count(*) FROM series_slices WHERE series_instance_uid = s.series_instance_uid AND duplicate = 1),
       (SELECT coalesce(max(frames), 1) FROM series_slices WHERE series_instance_uid = s.series_instance_uid)
FROM series s
"""


class SeriesTracker:
    """Series bookkeeping driven by events; see the module docstring for when a series is complete.

    Args:
        queue: the work queue whose database holds the series.
        quiet_time_s: silence (no arrival, no release) after which a
            released series is complete (``[dicom] quiet_time_s``).
        unreleased_timeout_s: silence after which a series whose association
            is still open is complete anyway.
        position_tolerance_mm: slices closer than this along the normal
            share a position.

    Raises:
        ConfigError: the timings contradict each other.
    """

    def __init__(
        self,
        queue: WorkQueue,
        *,
        quiet_time_s: float = 5.0,
        unreleased_timeout_s: float = 300.0,
        position_tolerance_mm: float = 0.01,
    ) -> None:
        if quiet_time_s < 0 or unreleased_timeout_s < quiet_time_s:
            raise ConfigError(
                f"need 0 <= quiet_time_s <= unreleased_timeout_s, got {quiet_time_s} and {unreleased_timeout_s}"
            )
        self.queue = queue
        self.quiet_time_s = quiet_time_s
        self.unreleased_timeout_s = unreleased_timeout_s
        self.position_tolerance_mm = position_tolerance_mm

    def instance_added(self, instance: SeriesInstance) -> bool:
        """Record a decoded instance's attributes and geometry; False if it belongs to no series (a DICOMDIR).

        Calling it again for the same instance (a redo after a crash) changes
        nothing.

        Raises:
            WorkQueueError: the instance is not in the work queue (it must be
                added with ``add_received`` first, which counts the arrival).
        """
        if instance.is_dicomdir or not instance.series_instance_uid:
            log.debug("instance %s is not part of a series (DICOMDIR or no series UID)", instance.sop_instance_uid)
            return False
        uid = instance.series_instance_uid
        normal = slice_normal(instance.image_orientation)
        projection = _projection(instance.image_position, normal)
        key = _orientation_key(instance.image_orientation)
        with self.queue.transaction() as db:
            known = db.execute(
                "SELECT series_instance_uid FROM instances WHERE sop_instance_uid = ?", (instance.sop_instance_uid,)
            ).fetchone()
            if known is None:
                raise WorkQueueError(f"instance {instance.sop_instance_uid} is not in the work queue")
            if known[0] != uid:
                log.warning(
                    "instance %s: header says series %s, the ingest said %s; the header wins",
                    instance.sop_instance_uid,
                    uid,
                    known[0],
                )
            row = db.execute("SELECT attributes FROM series WHERE series_instance_uid = ?", (uid,)).fetchone()
            if row is None:
                now = self.queue.now()
                db.execute(
                    "INSERT INTO series (series_instance_uid, study_instance_uid, state, instance_count,"
                    " first_received, last_received, updated_at) VALUES (?, ?, 'open', 1, ?, ?, ?)",
                    (uid, instance.study_instance_uid, now, now, now),
                )
            if row is None or row[0] == "{}":
                attrs = instance.attributes
                db.execute(
                    "UPDATE series SET modality = ?, body_part = ?, description = ?, attributes = ?"
                    " WHERE series_instance_uid = ?",
                    (
                        str(attrs.get("Modality", "")),
                        str(attrs.get("BodyPartExamined", "")),
                        str(attrs.get("SeriesDescription", "")),
                        json.dumps(dict(attrs), sort_keys=True),
                        uid,
                    ),
                )
            db.execute(
                "INSERT OR REPLACE INTO series_slices (sop_instance_uid, series_instance_uid, instance_number,"
                " position, orientation, orientation_key, projection, frames, duplicate)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
                (
                    instance.sop_instance_uid,
                    uid,
                    instance.instance_number,
                    None if instance.image_position is None else json.dumps(list(instance.image_position)),
                    None if instance.image_orientation is None else json.dumps(list(instance.image_orientation)),
                    key,
                    projection,
                    instance.frames,
                ),
            )
            if projection is not None:
                tol = self.position_tolerance_mm
                twins = [
                    r[0]
                    for r in db.execute(
                        "SELECT sop_instance_uid FROM series_slices WHERE series_instance_uid = ?"
                        " AND orientation_key = ? AND projection BETWEEN ? AND ? AND sop_instance_uid != ?",
                        (uid, key, projection - tol, projection + tol, instance.sop_instance_uid),
                    )
                ]
                if twins:
                    log.warning(
                        "series %s: instance %s has the slice position of %s; both kept, flagged duplicate",
                        uid,
                        instance.sop_instance_uid,
                        ", ".join(twins),
                    )
                    for sop in (*twins, instance.sop_instance_uid):
                        db.execute("UPDATE series_slices SET duplicate = 1 WHERE sop_instance_uid = ?", (sop,))
        return True

    def association_released(self, association_id: str | int, instance_count: int | None = None) -> None:
        """An association was released or aborted: its series may complete after the quiet time.

        The signature fits the SCP's ``on_association_released`` callback;
        ``instance_count`` (what the SCP stored on it) is only logged.
        """
        log.debug("association %s released after %s instance(s)", association_id, instance_count)
        with self.queue.transaction() as db:
            db.execute(
                "UPDATE associations SET released_at = ? WHERE association_id = ? AND released_at IS NULL",
                (self.queue.now(), str(association_id)),
            )

    def tick(self, now: float | None = None) -> list[SeriesInfo]:
        """Mark the series that are now complete and return them (each completion once).

        This is a notification: the work itself is taken with
        :meth:`~runtime.work_queue.WorkQueue.claim_series`, so a crash between
        the two loses nothing.
        """
        at = self.queue.now() if now is None else now
        with self.queue.transaction() as db:
            candidates = db.execute(
                "SELECT s.series_instance_uid, s.last_received,"
                " (SELECT max(a.released_at) FROM series_associations sa JOIN associations a USING (association_id)"
                "   WHERE sa.series_instance_uid = s.series_instance_uid),"
                " EXISTS (SELECT 1 FROM series_associations sa JOIN associations a USING (association_id)"
                "   WHERE sa.series_instance_uid = s.series_instance_uid AND a.released_at IS NULL)"
                " FROM series s WHERE s.state = 'open' AND s.last_received <= ? AND NOT EXISTS"
                " (SELECT 1 FROM instances i WHERE i.series_instance_uid = s.series_instance_uid"
                "   AND i.state IN ('received', 'decoding'))",
                (at - self.quiet_time_s,),
            ).fetchall()
            complete = []
            for uid, last_received, last_release, still_open in candidates:
                if still_open:
                    done = last_received <= at - self.unreleased_timeout_s
                else:
                    done = max(last_received, last_release or -math.inf) <= at - self.quiet_time_s
                if done:
                    db.execute(
                        "UPDATE series SET state = 'complete', completed_at = ?, generation = generation + 1,"
                        " updated_at = ? WHERE series_instance_uid = ?",
                        (at, at, uid),
                    )
                    complete.append(uid)
            infos = [info for uid in complete if (info := self._info(db, uid)) is not None]
        for info in infos:
            log.info(
                "series %s complete: %d instances, %d slices%s",
                info.series_instance_uid,
                info.instance_count,
                info.slice_count,
                f", {info.duplicate_positions} at duplicate positions" if info.duplicate_positions else "",
            )
        return infos

    def get(self, series_instance_uid: str) -> SeriesInfo | None:
        """A series by its UID, or None."""
        with self.queue.transaction() as db:
            return self._info(db, series_instance_uid)

    def series(self, state: SeriesState | str | None = None) -> list[SeriesInfo]:
        """All series (in one state, if given), oldest arrival first."""
        with self.queue.transaction() as db:
            if state is None:
                uids = db.execute("SELECT series_instance_uid FROM series ORDER BY first_received, rowid")
            else:
                uids = db.execute(
                    "SELECT series_instance_uid FROM series WHERE state = ? ORDER BY first_received, rowid",
                    (SeriesState(state).value,),
                )
            return [info for (uid,) in uids.fetchall() if (info := self._info(db, uid)) is not None]

    def counts(self) -> dict[str, int]:
        """Series per state (every state present, zeros included), for the heartbeat."""
        with self.queue.transaction() as db:
            rows = dict(db.execute("SELECT state, count(*) FROM series GROUP BY state").fetchall())
        return {state.value: int(rows.get(state.value, 0)) for state in SeriesState}

    def slices(self, series_instance_uid: str, *, include_set_aside: bool = False) -> list[SliceRecord]:
        """The series' decoded instances in slice order (see :func:`order_slices`), with their spool paths."""
        with self.queue.transaction() as db:
            rows = db.execute(
                "SELECT t.sop_instance_uid, t.instance_number, t.position, t.orientation, t.frames, t.duplicate,"
                " i.spool_path, i.state FROM series_slices t JOIN instances i USING (sop_instance_uid)"
                " WHERE t.series_instance_uid = ?",
                (series_instance_uid,),
            ).fetchall()
        records = [
            SliceRecord(
                sop_instance_uid=sop,
                instance_number=number,
                image_position=None if position is None else tuple(json.loads(position)),
                image_orientation=None if orientation is None else tuple(json.loads(orientation)),
                frames=frames,
                duplicate=bool(duplicate),
                spool_path=Path(spool),
                state=InstanceState(state),
            )
            for sop, number, position, orientation, frames, duplicate, spool, state in rows
            if include_set_aside or state not in _SET_ASIDE
        ]
        return order_slices(records)

    @staticmethod
    def _info(db: Any, uid: str) -> SeriesInfo | None:
        row = db.execute(f"{_SERIES_QUERY} WHERE s.series_instance_uid = ?", (uid,)).fetchone()
        if row is None:
            return None
        associations = tuple(
            r[0]
            for r in db.execute(
                "SELECT association_id FROM series_associations WHERE series_instance_uid = ? ORDER BY rowid", (uid,)
            )
        )
        return SeriesInfo(
            series_instance_uid=row[0],
            study_instance_uid=row[1],
            state=SeriesState(row[2]),
            modality=row[3],
            body_part=row[4],
            description=row[5],
            instance_count=row[6],
            first_received=row[7],
            last_received=row[8],
            completed_at=row[9],
            generation=row[10],
            attributes=json.loads(row[11]),
            decoded_count=row[12],
            slice_count=row[13],
            duplicate_positions=row[14],
            multiframe=row[15] > 1,
            associations=associations,
        )
