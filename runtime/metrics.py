"""The appliance's Prometheus metrics, in a registry of its own (no module globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["RuntimeMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RuntimeMetrics:
    """Counters, gauges and histograms the runtime updates and ``/metrics`` exposes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter(
            "medge_instances_received", "DICOM instances stored in the spool", ["source"], registry=r
        )
        self.quarantined = Counter(
            "medge_instances_quarantined", "Instances refused or quarantined", ["reason"], registry=r
        )
        self.findings = Counter(
            "medge_findings", "Findings written to the outbox", ["package", "label", "positive"], registry=r
        )
        self.drift = Counter(
            "medge_drift_flags", "Studies outside the calibrated input range", ["scanner", "package"], registry=r
        )
        self.queue_depth = Gauge("medge_queue_depth", "Work-queue items per state", ["state"], registry=r)
        self.outbox_depth = Gauge("medge_outbox_depth", "Findings not yet acknowledged by the dashboard", registry=r)
        self.spool_bytes = Gauge("medge_spool_bytes", "Bytes held in the spool", registry=r)
        self.engine_degraded = Gauge(
            "medge_engine_degraded", "1 when a package runs on a fall-back device", ["package"], registry=r
        )
        self.nodes = Gauge(
            "medge_engine_nodes", "Model nodes per execution provider", ["package", "provider"], registry=r
        )
        self.pacs_pending = Gauge("medge_pacs_pending", "DICOM SRs waiting to be sent to the PACS", registry=r)
        self.pacs_sent = Counter("medge_pacs_sent", "DICOM SRs the PACS accepted", registry=r)
        self.pacs_failures = Counter(
            "medge_pacs_send_failures", "Failed SR sends (each is retried from the outbox)", registry=r
        )
        self.latency = Histogram(
            "medge_stage_seconds", "Per-instance time by stage", ["stage"], buckets=_LATENCY_BUCKETS, registry=r
        )
