"""One MQTT 5 connection as the reporter needs it, set up from ``[mqtt]``: TLS, credentials, will, session.

A fresh paho client is made for every connection attempt. paho keeps the
messages it had in flight and re-sends them itself after a reconnect, out of
order with the outbox's re-sends; a new client per connection leaves the
outbox the only source of what to (re)send, in sequence order. The broker
session lives on across clients: it is keyed on the stable client id, with
clean start off and a Session Expiry Interval.

The reporter drives the connection itself with :func:`loop_once` on one
thread (paho's external-loop API): ``Client.loop()`` would add a wake-up
socket pair and one extra ``send`` per publish, for a thread that is never
asleep in it while publishing.

Every socket gets TCP_NODELAY before the CONNECT goes out (paho's
``on_socket_open`` fires right after the TCP/TLS connect): small QoS 1
publishes and their PUBACKs must not wait for Nagle's algorithm.
"""

from __future__ import annotations

import logging
import select
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sdk.appliance_config import MqttSection
from sdk.errors import MedgeError
from sdk.tcp_nodelay import nodelay_on_socket_open

__all__ = ["BrokerConnectionError", "Connector", "loop_once"]

log = logging.getLogger(__name__)


class _PahoLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """paho's own log, capped at INFO.

    paho reports a dropped connection as an ERROR; the reporter states it
    once, as a warning, with what it does next.
    """

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        super().log(min(level, logging.INFO), msg, *args, **kwargs)


_paho_log = _PahoLog(logging.getLogger(__name__ + ".paho"))


class BrokerConnectionError(MedgeError):
    """The broker cannot be reached, or the TCP/TLS connection to it failed (the reporter retries)."""


class Connector:
    """Makes and connects one configured paho client per connection attempt.

    Reads the password file and loads the TLS material once, at
    construction, so a bad setting fails at start rather than on every retry.

    Args:
        section: the ``[mqtt]`` settings.
        client_id: the stable client id the broker keys the session on.

    Raises:
        ConfigError: the CA, certificate, key or password file cannot be read.
    """

    def __init__(self, section: MqttSection, client_id: str) -> None:
        self.section = section
        self.client_id = client_id
        self._tls = section.ssl_context()
        self._password = section.password()

    def client(self, will_topic: str, will_payload: bytes) -> mqtt.Client:
        """A new client (not connected) with credentials, TLS, the retained will and TCP_NODELAY set."""
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        client.connect_timeout = self.section.connect_timeout_s
        client.max_inflight_messages_set(self.section.max_inflight)
        client.enable_logger(_paho_log)  # type: ignore[arg-type]  # paho only calls .log()
        if self._tls is not None:
            client.tls_set_context(self._tls)
        if self.section.username is not None:
            client.username_pw_set(self.section.username, self._password)
        client.will_set(will_topic, will_payload, qos=1, retain=True)
        client.on_socket_open = nodelay_on_socket_open
        return client

    def connect(self, client: mqtt.Client) -> None:
        """Open the TCP (TLS) connection and send CONNECT with clean start off; the CONNACK comes through the loop.

        Raises:
            BrokerConnectionError: the broker is unreachable or the TLS handshake failed.
        """
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self.section.session_expiry_s
        where = f"{self.section.host}:{self.section.port}"
        try:
            client.connect(
                self.section.host,
                self.section.port,
                keepalive=self.section.keepalive_s,
                clean_start=False,
                properties=properties,
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError; ssl.CertificateError a ValueError
            raise BrokerConnectionError(f"cannot connect to the broker at {where}: {exc}") from exc


def loop_once(client: mqtt.Client, timeout: float) -> mqtt.MQTTErrorCode:
    """One turn of the network loop: wait up to ``timeout`` for the socket, read, write, keep-alive.

    Returns:
        ``MQTT_ERR_SUCCESS``, or why the connection is gone (paho has then closed it).
    """
    sock = client.socket()
    if sock is None:
        return mqtt.MQTT_ERR_NO_CONN
    buffered = sock.pending() if hasattr(sock, "pending") else 0  # TLS bytes already decrypted
    if buffered:
        readable, writable = True, client.want_write()
    else:
        try:
            ready = select.select([sock], [sock] if client.want_write() else [], [], timeout)
        except (OSError, ValueError, TypeError):  # closed under us
            return mqtt.MQTT_ERR_CONN_LOST
        readable, writable = bool(ready[0]), bool(ready[1])
    if readable:
        rc = client.loop_read()
        if rc != mqtt.MQTT_ERR_SUCCESS:
            return rc
    if writable and client.socket() is not None:
        rc = client.loop_write()
        if rc != mqtt.MQTT_ERR_SUCCESS:
            return rc
    if client.socket() is None:
        return mqtt.MQTT_ERR_CONN_LOST
    return client.loop_misc()
