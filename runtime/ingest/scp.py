"""The DICOM Storage SCP: scanners push instances here; each is fsync'd into the spool before success goes back.

Status codes sent for a C-STORE (:class:`StoreStatus`):

* ``0x0000`` stored, fsync'd and handed to ``on_stored``.
* ``0xA700`` out of resources: the spool quota has no room (nothing written), or
  the write failed (nothing partial left). The sender keeps the instance and retries.
* ``0xA900`` the dataset's SOP Class/Instance UID differs from the C-STORE request's:
  quarantined.
* ``0xC000`` cannot understand: the dataset is truncated or structurally broken, or a
  UID that places it (SOP Class/Instance, Study, Series) is missing or invalid (not
  digits and dots, or longer than 64): quarantined. "Cannot understand" rather than
  0xA900 because the dataset cannot be identified at all.
* ``0x0110`` processing failure: ``on_stored`` raised; the instance stays spooled and
  a resend replaces it.

Every failure response carries an Error Comment with the reason, and raises an
:class:`~runtime.ingest.events.IngestEvent`. Unsupported SOP classes or transfer
syntaxes are refused at association (presentation context rejected), and so are
calling AE titles outside ``allowed_calling_aes`` (when it is not empty) and a
called AE title other than ours.

Speed. pynetdicom polls: its DUL thread (socket side) sleeps 1 ms whenever it
finds nothing to do, and the association thread, which serves requests, sleeps
1 ms before each look at its message queue, so each C-STORE waited for both
sleeps and crossed threads twice; with the spool's fsyncs that made ~250
instances/s of 128x128 CT where dcmtk's storescp takes ~1400/s. Unless
``tuned=False``, each association (a) waits in ``select()`` on its socket
instead of sleeping (:func:`~runtime.ingest.sockets.wait_on_socket`) and (b)
serves a C-STORE request in the DUL thread the moment pynetdicom has assembled
it (:class:`_InlineStores`), so a request is read, stored, fsync'd and answered
by one thread without a sleep. pynetdicom still does all the DICOM: PDUs, the
state machine, DIMSE, the Storage service class, the response. Both rely on
pynetdicom internals of the release series named in
:data:`~runtime.ingest.sockets.TUNED_PYNETDICOM`; with another release they stay
off (a warning says so) and ingest works at the old speed. The maximum PDU we
accept is raised from pynetdicom's 16 KiB to :data:`MAX_PDU_BYTES`, so a
scanner sends a 512x512 slice in 5 PDUs instead of 33. The received dataset is
written as received, never decoded and re-encoded.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    MRImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from runtime.ingest.events import IngestEvent, IngestEventHandler, IngestEventKind, emit
from runtime.ingest.part10 import file_meta_bytes, read_header
from runtime.ingest.sockets import nodelay_evt_handlers, pynetdicom_is_tuned, set_tcp_nodelay, wait_on_socket
from runtime.spool import IngestSource, Spool, SpoolError, SpoolFullError, StoredInstance
from sdk.appliance_config import DicomSection
from sdk.errors import DicomInputError

__all__ = ["MAX_PDU_BYTES", "STORAGE_SOP_CLASSES", "TRANSFER_SYNTAXES", "StorageSCP", "StoreStatus"]

logger = logging.getLogger(__name__)

STORAGE_SOP_CLASSES: tuple[str, ...] = (
    CTImageStorage,
    EnhancedCTImageStorage,
    MRImageStorage,
    EnhancedMRImageStorage,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    SecondaryCaptureImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
)
"""The storage SOP classes accepted; any other is refused at association."""

TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)
"""The transfer syntaxes accepted for every storage SOP class (uncompressed first)."""

MAX_PDU_BYTES = 128 * 1024
"""The largest PDU we ask peers to send (dcmtk's own ceiling): fewer PDUs, so less per-PDU Python, per instance."""

_META_ALLOWANCE = 512  # file meta bytes added to a received dataset, for the quota pre-check
_ERROR_COMMENT_MAX = 64  # (0000,0902) is LO


class StoreStatus(enum.IntEnum):
    """C-STORE response statuses this SCP sends (see the module docstring for when)."""

    SUCCESS = 0x0000
    PROCESSING_FAILURE = 0x0110
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000


@dataclass
class _Association:
    id: str
    calling_ae: str
    stored: int = 0


class StorageSCP:
    """A C-STORE/C-ECHO SCP writing into a :class:`~runtime.spool.Spool`.

    Args:
        config: AE title, host, port and allowed calling AE titles
            (empty: any, which the config only allows in demo mode).
        spool: where instances go.
        on_stored: called once per stored instance, in the association's thread, before
            the success status is sent; if it raises, the sender gets 0x0110.
        on_event: notified of refusals, quarantines and failures (errors are logged and contained).
        on_association_released: ``(association_id, instance_count)`` when an accepted
            association ends (released, or aborted: the count is final either way);
            errors are logged and contained.
        require_called_aet: refuse associations addressed to another AE title.
        port: listen here instead of ``config.port``; 0 picks a free port (tests, embedding),
            which :attr:`port` then reports.
        max_inflated_bytes: a deflated dataset may not inflate beyond this (a deflate bomb is
            refused with 0xC000 instead of exhausting memory).
        max_pdu_bytes: the largest PDU peers may send us (0: no limit).
        tuned: serve each association without pynetdicom's polling sleeps (see the module
            docstring); False leaves pynetdicom as it comes (for comparison).
        admit: asked before each C-STORE; a reason (e.g. "the outbox is full") makes the SCP
            answer 0xA700 out of resources, so the scanner keeps the instance and retries later.

    Events emitted: :class:`~runtime.ingest.events.IngestEventKind` ``ASSOCIATION_REJECTED``,
    ``ASSOCIATION_ABORTED``, ``OUT_OF_RESOURCES``, ``QUARANTINED``, ``STORE_FAILED``, ``HOOK_FAILED``.
    """

    def __init__(
        self,
        config: DicomSection,
        spool: Spool,
        on_stored: Callable[[StoredInstance], None],
        *,
        on_event: IngestEventHandler | None = None,
        on_association_released: Callable[[str, int], None] | None = None,
        require_called_aet: bool = True,
        port: int | None = None,
        max_inflated_bytes: int = 256 * 1024**2,
        max_pdu_bytes: int = MAX_PDU_BYTES,
        tuned: bool = True,
        admit: Callable[[], str | None] | None = None,
    ) -> None:
        self._config = config
        self._admit = admit
        self._spool = spool
        self._on_stored = on_stored
        self._on_event = on_event
        self._on_released = on_association_released
        self._require_called_aet = require_called_aet
        self._bind_port = config.port if port is None else port
        self._max_inflated = max_inflated_bytes
        self._max_pdu = max_pdu_bytes
        self._tuned = tuned
        self._server: ThreadedAssociationServer | None = None
        self._ae: AE | None = None
        self._associations: dict[Any, _Association] = {}
        self._quiet_pdus = True
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and start serving in background threads; returns at once.

        Raises:
            OSError: the address cannot be bound (port in use, no such interface).
        """
        if self._server is not None:
            return
        pynetdicom_logger = logging.getLogger("pynetdicom")
        if pynetdicom_logger.level == logging.NOTSET:
            # It logs every PDU at INFO; keep it quiet unless someone asked for its debug output.
            pynetdicom_logger.setLevel(logging.WARNING)
        ae = AE(ae_title=self._config.ae_title)
        ae.require_called_aet = self._require_called_aet
        ae.require_calling_aet = list(self._config.allowed_calling_aes)
        ae.maximum_pdu_size = self._max_pdu
        ae.add_supported_context(Verification)
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        handlers: list[EventHandlerType] = [
            *nodelay_evt_handlers(),
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_C_STORE, self._on_c_store),
            (evt.EVT_RELEASED, self._on_released_evt),
            (evt.EVT_ABORTED, self._on_aborted_evt),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
        ]
        server = ae.start_server((self._config.host, self._bind_port), block=False, evt_handlers=handlers)
        if server is None:  # block=False always returns the server
            raise RuntimeError("pynetdicom did not return the server it started")
        # Accepted sockets inherit it on Linux; EVT_CONN_OPEN sets it again wherever they do not.
        set_tcp_nodelay(server.socket)
        self._quiet_pdus = not pynetdicom_logger.isEnabledFor(logging.INFO)
        if self._quiet_pdus:
            _unbind_standard_log_handlers(server)
        self._ae, self._server = ae, server
        logger.info(
            "DICOM SCP %s listening on %s:%d (%d storage SOP classes)",
            self._config.ae_title,
            self._config.host,
            self.port,
            len(STORAGE_SOP_CLASSES),
        )

    def stop(self) -> None:
        """Stop accepting, abort open associations (senders retry what was not acknowledged) and close."""
        ae, self._ae, self._server = self._ae, None, None
        if ae is not None:
            ae.shutdown()
            logger.info("DICOM SCP %s stopped", self._config.ae_title)

    def __enter__(self) -> StorageSCP:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (the real one when the config asked for port 0).

        Raises:
            RuntimeError: the SCP is not running.
        """
        if self._server is None:
            raise RuntimeError("the SCP is not running")
        return int(self._server.server_address[1])

    @property
    def running(self) -> bool:
        return self._server is not None

    # -- association events ------------------------------------------------------------------------------------

    def _on_conn_open(self, event: evt.Event) -> None:
        # Fires after accept() and before the association's threads start: the moment to set it up.
        if self._quiet_pdus:
            # Each association binds pynetdicom's per-PDU log formatters again; drop them before the first PDU.
            _unbind_standard_log_handlers(event.assoc)
        if self._tuned:
            wait_on_socket(event.assoc)
            _InlineStores.install(event.assoc)

    def _on_accepted(self, event: evt.Event) -> None:
        state = _Association(id=uuid.uuid4().hex, calling_ae=event.assoc.requestor.ae_title)
        with self._lock:
            self._associations[event.assoc] = state
        logger.debug("association %s from %s accepted", state.id, state.calling_ae)

    def _on_rejected(self, event: evt.Event) -> None:
        requestor = event.assoc.requestor
        request = requestor.primitive
        calling = requestor.ae_title
        called = str(request.called_ae_title).strip() if request is not None else self._config.ae_title
        allowed = self._config.allowed_calling_aes
        if allowed and calling not in allowed:
            why = f"calling AE title {calling!r} is not in allowed_calling_aes"
        elif self._require_called_aet and called != self._config.ae_title:
            why = f"called AE title {called!r} is not ours ({self._config.ae_title!r})"
        else:
            why = "refused by the association policy (e.g. too many associations)"
        emit(
            self._on_event,
            IngestEvent(
                kind=IngestEventKind.ASSOCIATION_REJECTED,
                message=f"association from {requestor.address}:{requestor.port} rejected: {why}",
                source=IngestSource.SCP,
                calling_ae=calling,
            ),
        )

    def _on_released_evt(self, event: evt.Event) -> None:
        self._finish(event.assoc, aborted=False)

    def _on_aborted_evt(self, event: evt.Event) -> None:
        self._finish(event.assoc, aborted=True)

    def _on_conn_close(self, event: evt.Event) -> None:
        # Released/aborted normally come first; this catches a connection lost without either.
        self._finish(event.assoc, aborted=True)

    def _finish(self, assoc: Any, *, aborted: bool) -> None:
        with self._lock:
            state = self._associations.pop(assoc, None)
        if state is None:
            return
        if aborted:
            emit(
                self._on_event,
                IngestEvent(
                    kind=IngestEventKind.ASSOCIATION_ABORTED,
                    message=f"association {state.id} from {state.calling_ae!r} ended without a release "
                    f"after {state.stored} instance(s)",
                    source=IngestSource.SCP,
                    calling_ae=state.calling_ae,
                    association_id=state.id,
                ),
            )
        if self._on_released is None:
            return
        try:
            self._on_released(state.id, state.stored)
        except Exception:
            logger.exception("on_association_released failed for association %s", state.id)

    # -- C-STORE -----------------------------------------------------------------------------------------------

    def _on_c_store(self, event: evt.Event) -> int | Dataset:
        received_at = datetime.now(UTC)
        with self._lock:
            state = self._associations.get(event.assoc)
        if state is None:  # the handler can run only on an accepted association; be defensive anyway
            state = _Association(id=uuid.uuid4().hex, calling_ae=event.assoc.requestor.ae_title)
        request = cast(C_STORE, event.request)
        declared_uid = str(request.AffectedSOPInstanceUID or "")
        declared_class = str(request.AffectedSOPClassUID or "")
        transfer_syntax = str(event.context.transfer_syntax)
        stream = event.encoded_dataset(include_meta=False)

        def refuse(status: StoreStatus, kind: IngestEventKind, why: str, *, quarantine: bytes | None = None) -> Dataset:
            path = None
            if quarantine is not None:
                try:
                    path = self._spool.quarantine(
                        quarantine,
                        f"{why} (from {state.calling_ae!r}, association {state.id})",
                        name=f"{state.calling_ae}-{declared_uid}.dcm",
                    )
                except SpoolError as exc:
                    logger.error("cannot quarantine an instance from %s: %s", state.calling_ae, exc)
            emit(
                self._on_event,
                IngestEvent(
                    kind=kind,
                    message=f"C-STORE from {state.calling_ae!r} refused (0x{status:04X}): {why}",
                    source=IngestSource.SCP,
                    calling_ae=state.calling_ae,
                    association_id=state.id,
                    sop_instance_uid=declared_uid or None,
                    path=path,
                ),
            )
            return _status(status, why)

        if not self._spool.has_room(len(stream) + _META_ALLOWANCE):
            return refuse(StoreStatus.OUT_OF_RESOURCES, IngestEventKind.OUT_OF_RESOURCES, "spool quota reached")
        refusal = self._admit() if self._admit is not None else None
        if refusal is not None:
            return refuse(StoreStatus.OUT_OF_RESOURCES, IngestEventKind.OUT_OF_RESOURCES, refusal)
        try:
            head = file_meta_bytes(
                sop_class_uid=declared_class,
                sop_instance_uid=declared_uid,
                transfer_syntax_uid=transfer_syntax,
                implementation_class_uid=PYNETDICOM_IMPLEMENTATION_UID,
                implementation_version_name=PYNETDICOM_IMPLEMENTATION_VERSION,
                source_ae_title=state.calling_ae,
            )
        except DicomInputError as exc:  # the request's own UIDs are unusable
            return refuse(StoreStatus.CANNOT_UNDERSTAND, IngestEventKind.QUARANTINED, str(exc), quarantine=stream)
        try:
            header = read_header(
                stream, transfer_syntax_uid=transfer_syntax, max_inflated_bytes=self._max_inflated
            ).identity()
        except DicomInputError as exc:
            return refuse(
                StoreStatus.CANNOT_UNDERSTAND, IngestEventKind.QUARANTINED, exc.message, quarantine=head + stream
            )
        if header.sop_instance_uid != declared_uid or header.sop_class_uid != declared_class:
            why = (
                f"dataset SOP {header.sop_class_uid}/{header.sop_instance_uid} differs from the request's "
                f"{declared_class}/{declared_uid}"
            )
            return refuse(
                StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, IngestEventKind.QUARANTINED, why, quarantine=head + stream
            )
        try:
            written = self._spool.store(
                (head, stream),
                study_instance_uid=header.study_instance_uid,
                series_instance_uid=header.series_instance_uid,
                sop_instance_uid=declared_uid,
            )
        except SpoolFullError:
            return refuse(StoreStatus.OUT_OF_RESOURCES, IngestEventKind.OUT_OF_RESOURCES, "spool quota reached")
        except SpoolError as exc:
            return refuse(StoreStatus.OUT_OF_RESOURCES, IngestEventKind.STORE_FAILED, f"spool write failed: {exc}")
        instance = StoredInstance(
            path=written.path,
            sop_class_uid=header.sop_class_uid,
            sop_instance_uid=declared_uid,
            study_instance_uid=header.study_instance_uid,
            series_instance_uid=header.series_instance_uid,
            transfer_syntax_uid=transfer_syntax,
            size_bytes=written.size_bytes,
            received_at=received_at,
            source=IngestSource.SCP,
            calling_ae=state.calling_ae,
            association_id=state.id,
            duplicate=written.duplicate,
        )
        try:
            self._on_stored(instance)
        except Exception as exc:
            logger.exception("on_stored failed for %s", written.path)
            return refuse(StoreStatus.PROCESSING_FAILURE, IngestEventKind.HOOK_FAILED, f"hand-off failed: {exc}")
        state.stored += 1
        return StoreStatus.SUCCESS


class _InlineStores(queue.Queue[Any]):
    """One association's DIMSE message queue that serves C-STORE requests as pynetdicom puts them, in its DUL thread.

    pynetdicom's DUL thread assembles each DIMSE message from its PDUs and puts
    it on ``assoc.dimse.msg_queue``; the association thread looks at that
    queue once a millisecond (a fixed sleep) and serves what it finds. Put here,
    a valid C-STORE request is served at once by the same
    ``Association._serve_request`` the association thread would call: the
    Storage service class runs the ``EVT_C_STORE`` handler and queues the
    response, which the DUL sends on its next turn. Nothing else is lost by
    serving there: the sender waits for that response before it sends more, so
    the DUL has nothing to read meanwhile. Every other message (C-ECHO, the
    ``(None, None)`` an abort puts) is queued for the association thread as before.

    A blocking ``abort()`` waits for the DUL thread to stop, which from that
    thread would never happen; :meth:`install` therefore makes an abort raised
    while serving here (pynetdicom aborts on an unknown context or an exception
    in the service class) non-blocking: the A-ABORT is queued and the DUL sends it.
    And while a request is served the network (idle) timer stands still, as it
    does when the association thread serves: the peer is silent because it waits
    for our answer, so a slow disk must not read as an idle peer and abort the
    association after ``network_timeout``.
    """

    def __init__(self, assoc: Any) -> None:
        super().__init__()
        self._assoc = assoc
        self._idle_timer = getattr(assoc.dul, "_idle_timer", None)

    @classmethod
    def install(cls, assoc: Any) -> bool:
        """Replace ``assoc``'s DIMSE message queue (before its threads start); return whether it was done."""
        if not pynetdicom_is_tuned("inline C-STORE serving"):
            return False
        dimse: Any = getattr(assoc, "dimse", None)
        dul: Any = getattr(assoc, "dul", None)
        blocking_abort = getattr(type(assoc), "_abort_blocking", None)
        if (
            type(getattr(dimse, "msg_queue", None)) is not queue.Queue
            or not hasattr(getattr(dul, "_idle_timer", None), "stop")
            or not callable(getattr(assoc, "_serve_request", None))
            or blocking_abort is None
            or not isinstance(dul, threading.Thread)
        ):
            return False

        def abort(block: bool = True) -> None:
            blocking_abort(assoc, block and threading.current_thread() is not dul)

        # Association.abort() and the (non-)blocking switches pynetdicom makes around handlers all end here.
        assoc._abort_blocking = abort
        dimse.msg_queue = cls(assoc)
        return True

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        context_id, message = item
        if isinstance(message, C_STORE) and message.is_valid_request and context_id is not None:
            idle = self._idle_timer
            if idle is not None:
                idle.restart()
                idle.stop()  # frozen with its whole timeout left
            try:
                self._assoc._serve_request(message, context_id)
            finally:
                if idle is not None:
                    idle.restart()  # running again from the answer on
            return
        super().put(item, block, timeout)


def _status(status: StoreStatus, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = int(status)
    text = comment.encode("ascii", "replace").decode("ascii").replace("\\", "/")
    ds.ErrorComment = "".join(c if c.isprintable() else "?" for c in text)[:_ERROR_COMMENT_MAX]
    return ds


def _unbind_standard_log_handlers(target: Any) -> None:
    """Drop pynetdicom's per-PDU/DIMSE logging handlers from a server or an association.

    They format every message (tens of microseconds each) even when their logger discards the result.
    """
    for event in (evt.EVT_PDU_RECV, evt.EVT_PDU_SENT, evt.EVT_DIMSE_RECV, evt.EVT_DIMSE_SENT):
        handlers = target.get_handlers(event)
        for handler, _args in list(handlers) if isinstance(handlers, list) else ():
            if getattr(handler, "__module__", "") == "pynetdicom._handlers":
                target.unbind(event, handler)
