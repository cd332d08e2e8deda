"""The JSON messages appliances and the dashboard exchange over MQTT.

Every message has ``schema`` (family and version, e.g. ``medge.finding/1``),
a unique ``id`` (the dashboard de-duplicates on it: at-least-once delivery,
exactly-once effect), ``site``, ``device`` and ``created``. Findings carry study
references as keyed pseudonyms unless the site's PHI policy allows otherwise,
and never a patient's name, birth date or pixels.
"""

from __future__ import annotations

import hmac
import json
import uuid
from datetime import UTC, datetime
from hashlib import sha256
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from sdk.config_files import config_error_from_validation
from sdk.errors import MedgeError

__all__ = [
    "Ack",
    "Command",
    "CommandResult",
    "EngineHealth",
    "Event",
    "Finding",
    "FindingLocation",
    "Heartbeat",
    "Message",
    "MessageError",
    "PackageRef",
    "Status",
    "finding_id",
    "parse_message",
    "pseudonym",
]

_FINDING_NAMESPACE = uuid.UUID("6f1c7f0e-3d57-4a8e-9d0c-6d4f2b1e9a10")


class MessageError(MedgeError):
    """A message is not valid JSON or does not match its schema."""


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return str(uuid.uuid4())


def finding_id(instance_uid: str, package_sha256: str, frame: int | None = None, *, origin: str = "") -> str:
    """The stable id of the finding of one instance (and frame) by one package on one appliance.

    Re-analysing the same instance with the same package after a crash gives
    the same id, so the dashboard stores it once. ``origin`` (``site/device``)
    keeps apart the findings of two appliances that were sent the same study.
    """
    key = f"{instance_uid}|{package_sha256}|{'' if frame is None else frame}"
    if origin:
        key += f"|{origin}"
    return str(uuid.uuid5(_FINDING_NAMESPACE, key))


def pseudonym(site_key: bytes, value: str) -> str:
    """A keyed, stable pseudonym for a DICOM identifier (HMAC-SHA256, 32 hex digits)."""
    return hmac.new(site_key, value.encode(), sha256).hexdigest()[:32]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(default_factory=_new_id, min_length=1, max_length=128)
    site: str = Field(min_length=1, max_length=64)
    device: str = Field(min_length=1, max_length=64)
    created: datetime = Field(default_factory=_now)

    def to_json(self) -> bytes:
        """The wire form (compact UTF-8 JSON)."""
        return self.model_dump_json(by_alias=True).encode()


class PackageRef(BaseModel):
    """Which model package produced something."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    precision: str
    profile: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class FindingLocation(BaseModel):
    """Where in the image (pixels) and in the patient (mm, DICOM patient coordinates)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    row: float
    column: float
    patient_mm: tuple[float, float, float] | None = None


class Finding(_Message):
    """The result of one analysed instance (or frame, or series) by one package."""

    schema_: Literal["medge.finding/1"] = Field("medge.finding/1", alias="schema")
    seq: int = Field(ge=0, description="per-device sequence number, for gap detection")
    package: PackageRef
    study_ref: str
    series_ref: str
    instance_ref: str
    accession_number: str | None = Field(default=None, max_length=64)
    patient_id: str | None = Field(default=None, max_length=64, description="only when the site's PHI policy allows")
    modality: str
    frame: int | None = None
    label: str
    score: float = Field(ge=0, le=1)
    scores: dict[str, float]
    threshold: float = Field(ge=0, le=1)
    positive: bool
    location: FindingLocation | None = None
    flags: list[str] = []
    latency_ms: dict[str, float] = {}

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Event(_Message):
    """Something that happened on a device: a rejection, an error, a model change."""

    schema_: Literal["medge.event/1"] = Field("medge.event/1", alias="schema")
    kind: str = Field(min_length=1, max_length=64)
    severity: Literal["info", "warning", "error", "critical"] = "info"
    message: str
    detail: dict[str, Any] = {}

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class EngineHealth(BaseModel):
    """How one live package is being run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    package: str
    engine: str
    device: str
    providers: list[str] = []
    nodes_by_provider: dict[str, int] = {}
    degraded: bool = False
    reason: str | None = None


class Heartbeat(_Message):
    """Periodic health of a device (QoS 0: the newest one is what matters)."""

    schema_: Literal["medge.heartbeat/1"] = Field("medge.heartbeat/1", alias="schema")
    uptime_s: float = Field(ge=0)
    queues: dict[str, int] = {}
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    engines: list[EngineHealth] = []
    disk_free_bytes: int | None = None
    outbox_depth: int = 0
    alarms: list[str] = []
    drift: dict[str, int] = {}

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Status(_Message):
    """Retained online/offline state; the offline one is the MQTT will message."""

    schema_: Literal["medge.status/1"] = Field("medge.status/1", alias="schema")
    state: Literal["online", "offline"]
    packages: list[PackageRef] = []
    version: str = ""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Ack(_Message):
    """Dashboard → device: ids of findings, events and command results committed to the store (duplicates too)."""

    schema_: Literal["medge.ack/1"] = Field("medge.ack/1", alias="schema")
    ids: list[str] = Field(min_length=1)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Command(_Message):
    """Dashboard → device: do something; the answer carries the same ``id`` as correlation.

    ``resend`` is the dashboard's "I am (back) here": it sends it to every
    device it knows each time it connects, and a device re-sends at once
    whatever the dashboard has not acknowledged (what was published while no
    dashboard was subscribed is otherwise only re-sent by the device's timer).
    """

    schema_: Literal["medge.cmd/1"] = Field("medge.cmd/1", alias="schema")
    command: Literal["selftest", "report-config", "activate-package", "resend", "update", "rotate-keys"]
    args: dict[str, Any] = {}

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class CommandResult(_Message):
    """Device → dashboard: the outcome of a :class:`Command`."""

    schema_: Literal["medge.cmd-result/1"] = Field("medge.cmd-result/1", alias="schema")
    correlation_id: str
    ok: bool
    result: dict[str, Any] = {}
    error: str | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


Message = Annotated[
    Finding | Event | Heartbeat | Status | Ack | Command | CommandResult,
    Field(discriminator="schema_"),
]
_MESSAGE = TypeAdapter(Message)


def parse_message(payload: bytes | str) -> Finding | Event | Heartbeat | Status | Ack | Command | CommandResult:
    """Parse and validate any medge message by its ``schema`` field.

    Raises:
        MessageError: not JSON, unknown schema, or a field is invalid (names the field).
    """
    try:
        return _MESSAGE.validate_json(payload)  # the fast path: one pass in pydantic's core
    except ValidationError:
        pass  # parse again below for an error that names the problem
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"message is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MessageError("message is not a JSON object")
    try:
        return _MESSAGE.validate_python(data)
    except ValidationError as exc:
        error = config_error_from_validation(exc, None, error=MessageError)
        tag = f"{data.get('schema')}."
        if error.field and error.field.startswith(tag):  # drop the union tag pydantic puts first
            error.field = error.field[len(tag) :]
        raise error from exc
