"""The dashboard store: SQLAlchemy 2 models, migrations applied at start, sessions.

Open it with :func:`create_store`; the models are what the ingest writes and
the web UI reads.
"""

from dashboard.store.engine import MIGRATIONS, Store, StoreError, create_store, migrate
from dashboard.store.models import (
    ApiToken,
    AuditEntry,
    Base,
    CommandResult,
    DeadLetter,
    DeadLetterCount,
    DeadLetterReason,
    Device,
    DeviceState,
    Event,
    Feedback,
    Finding,
    FindingState,
    Heartbeat,
    LoginThrottle,
    Role,
    SequenceGap,
    User,
    Verdict,
    WebSession,
)

__all__ = [
    "MIGRATIONS",
    "ApiToken",
    "AuditEntry",
    "Base",
    "CommandResult",
    "DeadLetter",
    "DeadLetterCount",
    "DeadLetterReason",
    "Device",
    "DeviceState",
    "Event",
    "Feedback",
    "Finding",
    "FindingState",
    "Heartbeat",
    "LoginThrottle",
    "Role",
    "SequenceGap",
    "Store",
    "StoreError",
    "User",
    "Verdict",
    "WebSession",
    "create_store",
    "migrate",
]
