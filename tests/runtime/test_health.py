"""``/healthz``, ``/readyz``, ``/metrics`` over real HTTP on loopback (runtime/health.py, runtime/metrics.py)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from runtime.health import HealthServer
from runtime.metrics import RuntimeMetrics


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture
def server():
    metrics = RuntimeMetrics()
    problems: list[str] = []
    health = HealthServer(metrics.registry, lambda: [], lambda: list(problems))
    health.start()
    yield health, metrics, problems
    health.stop()


def test_probes_and_metrics(server) -> None:
    health, metrics, problems = server
    assert _get(health.port, "/healthz")[0] == 200
    assert _get(health.port, "/readyz")[0] == 200
    problems.append("no package is live")
    status, body = _get(health.port, "/readyz")
    assert status == 503
    assert json.loads(body) == {"ok": False, "problems": ["no package is live"]}
    metrics.received.labels(source="scp").inc(3)
    metrics.queue_depth.labels(state="received").set(2)
    status, body = _get(health.port, "/metrics")
    assert status == 200
    assert b'medge_instances_received_total{source="scp"} 3.0' in body
    assert b'medge_queue_depth{state="received"} 2.0' in body
    assert _get(health.port, "/nope")[0] == 404


def test_a_crashing_probe_is_reported_not_fatal() -> None:
    def broken() -> list[str]:
        raise RuntimeError("queue database is locked")

    health = HealthServer(RuntimeMetrics().registry, broken, broken)
    health.start()
    try:
        status, body = _get(health.port, "/healthz")
        assert status == 503 and b"queue database is locked" in body
        assert _get(health.port, "/metrics")[0] == 200
    finally:
        health.stop()
