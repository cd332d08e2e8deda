"""DICOM ingest: the Storage SCP and the watched folder, both writing into the durable spool.

Typical wiring (the work queue provides ``on_stored``)::

    spool = Spool(data_dir / "spool", config.dicom.spool_quota_mb * 1024 * 1024)
    scp = StorageSCP(config.dicom, spool, queue.add, on_event=events.publish,
                     on_association_released=series.association_released)
    scp.start()
    if config.dicom.watch_dir:
        FolderWatcher(config.dicom.watch_dir, spool, queue.add, on_event=events.publish).start()

``nodelay_evt_handlers()`` gives medge's own SCUs (tests, benchmarks, the demo
scanner) the TCP_NODELAY every DICOM socket needs.
"""

from __future__ import annotations

from runtime.ingest.events import IngestEvent, IngestEventHandler, IngestEventKind
from runtime.ingest.folder_watch import FolderWatcher
from runtime.ingest.part10 import InstanceHeader, InstanceIdentity, file_meta_bytes, read_header
from runtime.ingest.scp import MAX_PDU_BYTES, STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, StorageSCP, StoreStatus
from runtime.ingest.sockets import nodelay_evt_handlers, set_tcp_nodelay

__all__ = [
    "MAX_PDU_BYTES",
    "STORAGE_SOP_CLASSES",
    "TRANSFER_SYNTAXES",
    "FolderWatcher",
    "IngestEvent",
    "IngestEventHandler",
    "IngestEventKind",
    "InstanceHeader",
    "InstanceIdentity",
    "StorageSCP",
    "StoreStatus",
    "file_meta_bytes",
    "nodelay_evt_handlers",
    "read_header",
    "set_tcp_nodelay",
]
