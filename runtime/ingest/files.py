"""Storing a whole DICOM Part 10 file into the spool: the folder watch's and ``Appliance.submit``'s one path."""

from __future__ import annotations

from datetime import UTC, datetime

from runtime.ingest.part10 import read_header
from runtime.spool import IngestSource, Spool, StoredInstance

__all__ = ["store_part10"]


def store_part10(spool: Spool, data: bytes, *, source: IngestSource, max_bytes: int) -> StoredInstance:
    """Check a Part 10 file's header, write it durably into the spool and describe it for the work queue.

    Raises:
        DicomInputError: not a DICOM file, or its identifying UIDs are missing or invalid.
        SpoolFullError: the spool's quota has no room for it.
        SpoolError: the write failed.
    """
    header = read_header(data, max_inflated_bytes=max_bytes).identity()
    received_at = datetime.now(UTC)
    written = spool.store(
        data,
        study_instance_uid=header.study_instance_uid,
        series_instance_uid=header.series_instance_uid,
        sop_instance_uid=header.sop_instance_uid,
    )
    return StoredInstance(
        path=written.path,
        sop_class_uid=header.sop_class_uid,
        sop_instance_uid=header.sop_instance_uid,
        study_instance_uid=header.study_instance_uid,
        series_instance_uid=header.series_instance_uid,
        transfer_syntax_uid=header.transfer_syntax_uid,
        size_bytes=written.size_bytes,
        received_at=received_at,
        source=source,
        duplicate=written.duplicate,
    )
