"""How medge's DICOM associations use their sockets: TCP_NODELAY everywhere, and waiting on data instead of polling.

pynetdicom never sets TCP_NODELAY. A C-STORE is a few small PDUs each way; with
Nagle's algorithm on, the last small segment waits for the peer's delayed ACK,
so each instance stalls ~40-45 ms on loopback. ``nodelay_evt_handlers()`` is
what an SCU passes to ``AE.associate`` (the SCP binds the same handler itself)::

    assoc = ae.associate("127.0.0.1", 11112, ae_title="MEDGE", evt_handlers=nodelay_evt_handlers())

pynetdicom's DUL thread polls: when it finds nothing to do it sleeps
``_run_loop_delay`` (1 ms) before it looks at the socket again, so a PDU that
arrives just after it went to sleep waits up to a millisecond, once per
message. :func:`wait_on_socket` makes one association's DUL wait *in*
``select()`` on its socket instead (up to the same millisecond, so primitives
queued by other threads are still picked up as soon as before): data wakes it
at once, and an idle association costs no more CPU than before. It restores
what pynetdicom documents for ``AssociationSocket.select_timeout`` and no
longer does. The same socket reads a PDU into one buffer instead of 4 KiB
pieces (512x512 CT: ~20 % more instances/s).
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
from typing import Any, cast

import pynetdicom
from pynetdicom import evt
from pynetdicom.events import EventHandlerType
from pynetdicom.transport import AssociationSocket

from sdk.tcp_nodelay import set_tcp_nodelay

__all__ = ["TUNED_PYNETDICOM", "nodelay_evt_handlers", "pynetdicom_is_tuned", "set_tcp_nodelay", "wait_on_socket"]

logger = logging.getLogger(__name__)

TUNED_PYNETDICOM = "3.0."
"""The pynetdicom release series whose internals :func:`wait_on_socket` (and the SCP's inline C-STORE) rely on.

With another version both leave pynetdicom as it is (slower, never wrong) and log why once.
"""

SOCKET_WAIT_S = 0.001
"""How long an idle DUL waits in ``select()``: pynetdicom's own poll period, so idle CPU and the pick-up
time of primitives queued by other threads stay what they were."""

_warned: set[str] = set()


def _on_conn_open(event: evt.Event) -> None:
    """``EVT_CONN_OPEN``: fires after accept()/connect() and before the first PDU goes out."""
    dul_socket = event.assoc.dul.socket
    set_tcp_nodelay(dul_socket.socket if dul_socket is not None else None)


def nodelay_evt_handlers() -> list[EventHandlerType]:
    """The ``evt_handlers`` that set TCP_NODELAY on an association's socket as soon as it connects."""
    return [(evt.EVT_CONN_OPEN, _on_conn_open)]


def pynetdicom_is_tuned(feature: str) -> bool:
    """Whether the installed pynetdicom is the series medge's tuning was written for (else log once, by feature)."""
    if pynetdicom.__version__.startswith(TUNED_PYNETDICOM):
        return True
    if feature not in _warned:
        _warned.add(feature)
        logger.warning(
            "pynetdicom %s is not %sx: %s is off (DICOM ingest works, more slowly)",
            pynetdicom.__version__,
            TUNED_PYNETDICOM,
            feature,
        )
    return False


class _WaitingSocket(AssociationSocket):
    """An association socket whose ``ready`` waits up to ``select_timeout`` for data when the DUL has nothing to do.

    When the DUL still has events queued it must not wait, so then it only looks.
    """

    @property
    def ready(self) -> bool:
        sock = self.socket
        if sock is None or self._is_connected is False:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # decrypted bytes select() cannot see (pynetdicom #528)
        timeout = self.select_timeout if self.assoc.dul.event_queue.empty() else 0
        try:
            readable, _, _ = select.select([sock], [], [], timeout)
        except (OSError, ValueError):
            self.event_queue.put("Evt17")  # transport connection closed
            return False
        return bool(readable)

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` (fewer only if the peer closed), as pynetdicom's ``recv`` does, without its copies.

        pynetdicom reads 4 KiB at a time and appends each piece to a growing
        bytearray: 128 reads and copies for a 512 KiB PDU. This reads straight
        into one buffer of the final size, as much as the kernel has each time.
        """
        sock = cast(socket.socket, self.socket)
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        read = 0
        while read < nr_bytes:
            received = sock.recv_into(view[read:], nr_bytes - read)
            if not received:  # the connection is broken: return what we have, as pynetdicom does
                del view
                del buffer[read:]
                return buffer
            read += received
        return buffer


def wait_on_socket(assoc: Any) -> bool:
    """Make ``assoc``'s DUL thread wait on its socket instead of sleeping between polls; return whether it does.

    Call it before the association's threads start (``EVT_CONN_OPEN`` on the
    acceptor side). Leaves the association as it is, and says so once in the
    log, when pynetdicom is not the series this was written for.
    """
    dul: Any = getattr(assoc, "dul", None)
    sock = getattr(dul, "socket", None)
    if not pynetdicom_is_tuned("waiting on the socket") or type(sock) is not AssociationSocket:
        return False
    if not hasattr(dul, "_run_loop_delay"):
        return False
    sock.__class__ = _WaitingSocket  # the same object, now waiting in ready(); nothing else changes
    sock.select_timeout = SOCKET_WAIT_S
    dul._run_loop_delay = 0  # the wait in select() replaces the sleep
    return True
