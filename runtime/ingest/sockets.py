"""TCP_NODELAY on every DICOM socket medge opens, as SCP and as SCU.

pynetdicom never sets it. A C-STORE is a few small PDUs each way; with Nagle's
algorithm on, the last small segment waits for the peer's delayed ACK, so each
instance stalls ~40-45 ms on loopback. ``nodelay_evt_handlers()`` is what an
SCU passes to ``AE.associate`` (the SCP binds the same handler itself)::

    assoc = ae.associate("127.0.0.1", 11112, ae_title="MEDGE", evt_handlers=nodelay_evt_handlers())
"""

from __future__ import annotations

import logging
import socket

from pynetdicom import evt
from pynetdicom.events import EventHandlerType

__all__ = ["nodelay_evt_handlers", "set_tcp_nodelay"]

logger = logging.getLogger(__name__)


def set_tcp_nodelay(sock: socket.socket | None) -> bool:
    """Turn Nagle's algorithm off on a TCP socket; return whether it is now set.

    Non-TCP sockets (and ``None``, a socket already closed) are left alone.
    """
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:
        # The peer may already have gone; the association fails on its own.
        logger.debug("cannot set TCP_NODELAY: %s", exc)
        return False
    return True


def _on_conn_open(event: evt.Event) -> None:
    """``EVT_CONN_OPEN``: fires after accept()/connect() and before the first PDU goes out."""
    dul_socket = event.assoc.dul.socket
    set_tcp_nodelay(dul_socket.socket if dul_socket is not None else None)


def nodelay_evt_handlers() -> list[EventHandlerType]:
    """The ``evt_handlers`` that set TCP_NODELAY on an association's socket as soon as it connects."""
    return [(evt.EVT_CONN_OPEN, _on_conn_open)]
