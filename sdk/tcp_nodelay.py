"""TCP_NODELAY on every socket medge opens (DESIGN.md: small DICOM and MQTT messages must not wait for Nagle).

Without it each small message stalls ~40 ms on loopback (Nagle's algorithm
meeting the peer's delayed ACK). The DICOM ingest, the MQTT reporter, the
dashboard's ingest, ``medge selftest`` and the HTTPS clients of provisioning and
updates all set it through these.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

__all__ = ["NODELAY_SOCKET_OPTIONS", "nodelay_on_socket_open", "set_tcp_nodelay"]

log = logging.getLogger(__name__)

NODELAY_SOCKET_OPTIONS = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
"""``socket_options`` of an httpx transport (package downloads, enrollment): TCP_NODELAY on each connection."""


def set_tcp_nodelay(sock: Any) -> bool:
    """Turn Nagle's algorithm off on a TCP (or TLS over TCP) socket; return whether it is now set.

    Non-TCP sockets (and ``None``, a socket already closed) are left alone.
    """
    if getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # the peer may already be gone; the connection then fails on its own
        log.debug("cannot set TCP_NODELAY: %s", exc)
        return False
    return True


def nodelay_on_socket_open(_client: object, _userdata: object, sock: Any) -> None:
    """paho-mqtt's ``on_socket_open`` callback: TCP_NODELAY before CONNECT goes out."""
    set_tcp_nodelay(sock)
