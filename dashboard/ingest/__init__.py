"""The dashboard's MQTT ingest: appliance messages into the store, each once, acknowledged after commit.

:class:`IngestService` is the running consumer; :class:`BatchWriter` is the
transaction it runs per batch (usable on its own, e.g. to replay messages).
"""

from dashboard.ingest.classify import InboundMessage
from dashboard.ingest.service import IngestService, IngestStats
from dashboard.ingest.writer import BatchResult, BatchWriter, StoreUnavailable
from dashboard.store.models import DeadLetterReason

__all__ = [
    "BatchResult",
    "BatchWriter",
    "DeadLetterReason",
    "InboundMessage",
    "IngestService",
    "IngestStats",
    "StoreUnavailable",
]
