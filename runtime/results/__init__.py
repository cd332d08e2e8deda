"""Results back to the hospital's PACS: each finding as a DICOM SR in the source study, sent with C-STORE.

Typical wiring (the appliance does this when ``[pacs] enabled``)::

    results = sr_results(ds, findings, package.manifest, package.sha256, config.pacs)
    queue.record_findings_batch([(sop, findings)], results={sop: results})   # same durable transaction
    delivery = PacsDelivery(queue, config.pacs, calling_ae, on_event=emit)
    while running:
        wait(delivery.step())

See docs/conformance.md for what is sent and how.
"""

from __future__ import annotations

from runtime.results.pacs import PacsDelivery, PacsError, PacsSender, SendOutcome, StoreResponse
from runtime.results.sr import (
    CODING_SCHEME,
    SR_SERIES_NUMBER,
    SR_SOP_CLASSES,
    SrTemplate,
    StructuredReportError,
    build_sr,
    device_uid,
    encode_sr,
    result_uid,
    sr_results,
)

__all__ = [
    "CODING_SCHEME",
    "SR_SERIES_NUMBER",
    "SR_SOP_CLASSES",
    "PacsDelivery",
    "PacsError",
    "PacsSender",
    "SendOutcome",
    "SrTemplate",
    "StoreResponse",
    "StructuredReportError",
    "build_sr",
    "device_uid",
    "encode_sr",
    "result_uid",
    "sr_results",
]
