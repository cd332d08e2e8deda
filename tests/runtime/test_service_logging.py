"""JSON logs (runtime/service_logging.py)."""

from __future__ import annotations

import io
import json
import logging

from runtime.service_logging import configure_json_logging


def test_records_are_json_objects_with_extra_fields() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    try:
        configure_json_logging(logging.INFO, stream)
        logging.getLogger("runtime.test").info("instance stored", extra={"sop": "1.2.3", "bytes": 42})
        logging.getLogger("pynetdicom.dul").info("PDU chatter")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        logging.getLogger("pynetdicom").setLevel(logging.NOTSET)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 1
    assert lines[0]["message"] == "instance stored" and lines[0]["sop"] == "1.2.3" and lines[0]["level"] == "INFO"
    assert "time" in lines[0] and lines[0]["name"] == "runtime.test"
