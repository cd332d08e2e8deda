"""MQTT reporting: the durable outbox to the dashboard, end-to-end acknowledged, and commands back.

:class:`Reporter` is what the appliance owns; :class:`Backoff` is its
reconnect policy; :class:`CommandHandler` is the shape of a command handler.
"""

from runtime.reporting.backoff import Backoff
from runtime.reporting.commands import CommandHandler
from runtime.reporting.connection import BrokerConnectionError
from runtime.reporting.reporter import EventSink, Reporter, ReporterStats, Severity

__all__ = ["Backoff", "BrokerConnectionError", "CommandHandler", "EventSink", "Reporter", "ReporterStats", "Severity"]
