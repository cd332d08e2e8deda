"""Sending the SRs of the PACS outbox to the hospital's PACS with C-STORE, and retrying until it takes them.

::

    pacs_outbox (SQLite, written with the findings) ─▶ PacsDelivery.step(): due SRs in order
        ─▶ PacsSender: one association (TCP_NODELAY) per batch, one C-STORE per SR
        ─▶ success / warning: sent  |  refused: retried after its own back-off  |  unreachable: all wait

An SR leaves the outbox only when the PACS answered success or warning
(e.g. 0xB000 coercion); whatever else happens it stays ``pending`` and is
sent again later, so a PACS that is down, refuses the association or runs
out of space loses nothing. A send cut off after the PACS stored the SR but
before we marked it is repeated: the SR's SOP Instance UID is stable, so the
PACS keeps one copy.

Events (``on_event(kind, severity, message, detail)``): ``pacs-send-failed``
once when an outage begins (the PACS unreachable, or refusing), and
``pacs-send-recovered`` when SRs go through again.
"""

from __future__ import annotations

import enum
import io
import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.status import code_to_category

from runtime.ingest.sockets import nodelay_evt_handlers, set_tcp_nodelay
from runtime.metrics import RuntimeMetrics
from runtime.reporting.backoff import Backoff
from runtime.work_queue import PacsResult, WorkQueue
from sdk.appliance_config import PacsSection
from sdk.errors import MedgeError

__all__ = ["PacsDelivery", "PacsError", "PacsSender", "SendOutcome", "StoreResponse"]

log = logging.getLogger(__name__)

EventSink = Callable[[str, str, str, Mapping[str, object]], None]

_PURGE_EVERY_S = 60.0
_BATCH = 16  # SRs per association at most


class PacsError(MedgeError):
    """The PACS cannot be reached, refused the association or dropped it: nothing was sent."""


class StoreResponse(enum.IntEnum):
    """C-STORE statuses the sender names (PS3.4 B.2.3); any other is judged by its category."""

    SUCCESS = 0x0000
    COERCION_OF_DATA_ELEMENTS = 0xB000
    ELEMENTS_DISCARDED = 0xB006
    DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class SendOutcome:
    """What the PACS answered for one SR.

    Attributes:
        finding_id: the SR's finding.
        status: the C-STORE status, or None when no response came (the association broke).
        accepted: success or warning: the PACS has it.
        reason: the status in words (with the PACS's Error Comment, if any).
    """

    finding_id: str
    status: int | None
    accepted: bool
    reason: str


def _describe(status: int, comment: str | None) -> str:
    try:
        name = StoreResponse(status).name.replace("_", " ").lower()
    except ValueError:
        name = code_to_category(status).lower()
    text = f"0x{status:04X} ({name})"
    return f"{text}: {comment}" if comment else text


class PacsSender:
    """C-STORE SCU for the SRs: one association per batch, TCP_NODELAY on its socket.

    Args:
        section: the ``[pacs]`` config (host, port, called AE title, timeouts).
        calling_ae: our AE title (``[pacs] calling_ae``, else the appliance's ``[dicom] ae_title``).

    Raises:
        PacsError: from :meth:`send`, when no association could be made.
    """

    def __init__(self, section: PacsSection, calling_ae: str) -> None:
        if not section.host or not section.ae_title:
            raise PacsError("the PACS has no host or AE title", field="pacs")
        self._section = section
        self._host = section.host
        self._called = section.ae_title
        self.calling_ae = calling_ae

    @property
    def destination(self) -> str:
        """``AE@host:port`` of the PACS."""
        return f"{self._called}@{self._host}:{self._section.port}"

    def send(self, results: Sequence[PacsResult]) -> list[SendOutcome]:
        """C-STORE each SR in order over one association; the outcome of each, in order.

        SRs after a broken association get no status (``status=None``) and stay to be sent again.

        Raises:
            PacsError: the PACS is unreachable, refused the association, or accepted none of the SR classes.
        """
        if not results:
            return []
        timeout = self._section.timeout_s
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        ae.connection_timeout = timeout
        for sop_class in dict.fromkeys(result.sop_class_uid for result in results):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        # pynetdicom leaves its socket open when the connection is refused; a probe of our own says why, cleanly.
        try:
            with socket.create_connection((self._host, self._section.port), timeout=timeout) as probe:
                set_tcp_nodelay(probe)
        except OSError as exc:
            raise PacsError(f"{self.destination} cannot be reached: {exc}") from exc
        try:
            assoc = ae.associate(
                self._host, self._section.port, ae_title=self._called, evt_handlers=nodelay_evt_handlers()
            )
            if assoc.is_rejected:
                raise PacsError(f"{self.destination} rejected the association from {self.calling_ae!r}")
            if not assoc.is_established:
                raise PacsError(f"{self.destination} cannot be reached (no association within {timeout:g} s)")
            try:
                return self._store_all(assoc, results)
            finally:
                if assoc.is_established:
                    assoc.release()
        finally:
            ae.shutdown()

    def _store_all(self, assoc: object, results: Sequence[PacsResult]) -> list[SendOutcome]:
        outcomes: list[SendOutcome] = []
        broken: str | None = None
        for result in results:
            if broken is not None:
                outcomes.append(SendOutcome(result.finding_id, None, False, broken))
                continue
            try:
                ds = pydicom.dcmread(io.BytesIO(result.data))
            except (InvalidDicomError, ValueError, EOFError) as exc:  # our own bytes: only a bug gets here
                outcomes.append(SendOutcome(result.finding_id, None, False, f"the stored SR is unreadable: {exc}"))
                continue
            try:
                response = assoc.send_c_store(ds)  # type: ignore[attr-defined]
            except ValueError as exc:  # no accepted presentation context for its SOP class / transfer syntax
                outcomes.append(SendOutcome(result.finding_id, None, False, f"{self.destination} refused: {exc}"))
                continue
            status = getattr(response, "Status", None)
            if status is None:
                broken = f"no C-STORE response from {self.destination} (association aborted or timed out)"
                outcomes.append(SendOutcome(result.finding_id, None, False, broken))
                continue
            category = code_to_category(int(status))
            reason = _describe(int(status), getattr(response, "ErrorComment", None))
            outcomes.append(SendOutcome(result.finding_id, int(status), category in ("Success", "Warning"), reason))
        return outcomes


class PacsDelivery:
    """Drains the PACS outbox into the PACS: the appliance's ``pacs`` thread calls :meth:`step` in a loop.

    Args:
        queue: the work queue holding ``pacs_outbox``.
        section: the ``[pacs]`` config.
        calling_ae: our AE title.
        on_event: receives ``pacs-send-failed`` / ``pacs-send-recovered`` (see the module docstring).
        metrics: the appliance's metrics (SRs sent, failures, pending).
        clock: wall-clock seconds (the outbox's retry times are wall-clock, so they survive a restart).
    """

    def __init__(
        self,
        queue: WorkQueue,
        section: PacsSection,
        calling_ae: str,
        *,
        on_event: EventSink | None = None,
        metrics: RuntimeMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._queue = queue
        self._section = section
        self.sender = PacsSender(section, calling_ae)
        self._backoff = Backoff(section.retry_min_s, section.retry_max_s)
        self._on_event = on_event
        self._metrics = metrics
        self._clock = clock
        self._failures = 0  # consecutive failed batches (the outage's back-off step)
        self.outage: str | None = None
        """Why the last send failed, while SRs cannot get through (None when they do)."""
        self._purged_at = 0.0
        self._hold_until = 0.0  # during an outage: no new association before this

    def step(self, idle_s: float = 1.0) -> float:
        """Send every SR that is due, batch by batch; how long until the next one is due (at most ``idle_s``)."""
        while self._clock() >= self._hold_until and (due := self._queue.pacs_due(_BATCH)):
            if not self._send([entry.result for entry in due], {e.result.finding_id: e.attempts for e in due}):
                break
        now = self._clock()
        if now - self._purged_at > _PURGE_EVERY_S:
            self._purged_at = now
            self._queue.purge_pacs_sent(self._section.keep_sent_s)
        if self._metrics is not None:
            self._metrics.pacs_pending.set(self._queue.pacs_pending())
        next_try = self._queue.pacs_next_try()
        if next_try is None:
            return idle_s
        return max(0.0, min(idle_s, max(next_try, self._hold_until) - self._clock()))

    def _send(self, batch: list[PacsResult], attempts: dict[str, int]) -> bool:
        """One association's worth; whether to go on with the next batch (False: the PACS is away or refusing).

        A batch that gets nothing through is an outage (one back-off for all, one event); an SR refused
        while others go through waits its own back-off (logged, its error kept in the outbox).
        """
        try:
            outcomes = self.sender.send(batch)
        except PacsError as exc:
            self._outage_step({r.finding_id for r in batch}, exc.message)
            return False
        sent = [o.finding_id for o in outcomes if o.accepted]
        if sent:
            self._queue.mark_pacs_sent(sent)
            if self._metrics is not None:
                self._metrics.pacs_sent.inc(len(sent))
        failed = [o for o in outcomes if not o.accepted]
        if not sent:
            self._outage_step({o.finding_id for o in failed}, failed[0].reason)
            return False
        self._failures = 0
        self._hold_until = 0.0
        if self.outage is not None:
            self.outage = None
            self._emit("pacs-send-recovered", "info", f"SRs go through to {self.sender.destination} again")
        for outcome in failed:
            log.warning("PACS did not take the SR of finding %s: %s", outcome.finding_id, outcome.reason)
            retry = self._clock() + self._backoff.delay(attempts.get(outcome.finding_id, 0))
            self._record_failure({outcome.finding_id: retry}, outcome.reason)
        return not any(o.status is None for o in failed)  # a broken association: start a new one next step

    def _outage_step(self, finding_ids: set[str], error: str) -> None:
        """Nothing got through: every SR of the batch waits the outage's back-off; the first failure is an event."""
        retry = self._clock() + self._backoff.delay(self._failures)
        self._failures += 1
        self._hold_until = retry  # the SRs beyond this batch wait too: one probe per back-off, not one per SR
        self._record_failure(dict.fromkeys(finding_ids, retry), error)
        if self.outage is None:
            self._emit("pacs-send-failed", "warning", f"SRs cannot be sent to {self.sender.destination}: {error}")
        else:
            log.info("PACS still failing: %s", error)
        self.outage = error

    def _record_failure(self, retries: dict[str, float], error: str) -> None:
        self._queue.pacs_failed(retries, error)
        if self._metrics is not None:
            self._metrics.pacs_failures.inc(len(retries))

    def _emit(self, kind: str, severity: str, message: str) -> None:
        if self._on_event is None:
            log.warning("%s: %s", kind, message)
            return
        try:
            self._on_event(kind, severity, message, {"destination": self.sender.destination})
        except Exception:  # a notification handler must not stop the deliveries
            log.exception("event handler failed for %s", kind)
