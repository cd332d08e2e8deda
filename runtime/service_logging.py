"""Structured JSON logs for the appliance service (one object a line, for journald and log shippers)."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

__all__ = ["configure_json_logging"]

_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s %(threadName)s"


def configure_json_logging(level: int = logging.INFO, stream=None) -> logging.Handler:  # type: ignore[no-untyped-def]
    """Send every medge log record to ``stream`` (stderr) as JSON; returns the handler.

    ``extra={...}`` fields of a record land as keys of the object. Noisy
    third-party loggers (pynetdicom's per-PDU debug output) stay at WARNING.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(_FIELDS, rename_fields={"levelname": "level", "asctime": "time"}))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("pynetdicom", "nncf", "openvino"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    return handler
