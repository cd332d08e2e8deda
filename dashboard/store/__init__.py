"""The dashboard store: SQLAlchemy 2 models, migrations applied at start, sessions.

Open it with :func:`create_store`; the models are what the ingest writes and
the web UI reads.
"""

from dashboard.store.engine import MIGRATIONS, Store, StoreError, create_store, migrate
from dashboard.store.models import (
    Base,
    CommandResult,
    DeadLetter,
    DeadLetterCount,
    DeadLetterReason,
    Device,
    DeviceState,
    Event,
    Finding,
    FindingState,
    Heartbeat,
    SequenceGap,
)

__all__ = [
    "MIGRATIONS",
    "Base",
    "CommandResult",
    "DeadLetter",
    "DeadLetterCount",
    "DeadLetterReason",
    "Device",
    "DeviceState",
    "Event",
    "Finding",
    "FindingState",
    "Heartbeat",
    "SequenceGap",
    "Store",
    "StoreError",
    "create_store",
    "migrate",
]
