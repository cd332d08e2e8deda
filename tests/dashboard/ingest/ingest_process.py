"""Runs an IngestService in its own process, for tests that kill it with SIGKILL.

Usage: ``python -m tests.dashboard.ingest.ingest_process CONFIG_JSON STATS_JSON``.
Writes its stats to STATS_JSON every 20 ms; stops cleanly on SIGTERM.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
from pathlib import Path

from dashboard.ingest import IngestService
from dashboard.settings import DashboardConfig


def main() -> None:
    config = DashboardConfig.model_validate_json(Path(sys.argv[1]).read_text())
    stats_file = Path(sys.argv[2])
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    service = IngestService(config)
    service.start()
    service.wait_ready(10)
    while not done.wait(0.02):
        partial = stats_file.with_suffix(".tmp")
        partial.write_text(json.dumps(dataclasses.asdict(service.stats())))
        os.replace(partial, stats_file)
    service.stop()


if __name__ == "__main__":
    main()
