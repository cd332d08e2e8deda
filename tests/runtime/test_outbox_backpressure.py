"""A full outbox (the dashboard has not acknowledged for a while) makes the SCP answer 0xA700; nothing is dropped."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from runtime.appliance import Appliance
from runtime.ingest.sockets import nodelay_evt_handlers
from sdk.appliance_config import ApplianceConfig
from sdk.errors import MedgeError
from sdk.testing import PhantomSpec, generate_studies
from sdk.testing.mosquitto import free_port


def test_a_full_outbox_refuses_new_instances_and_keeps_every_finding(reference_packages, tmp_path: Path) -> None:
    packages = tmp_path / "packages"
    reference_packages.build(packages / "chest-ct-nodule.medge")
    truths = generate_studies(tmp_path / "studies", 1, PhantomSpec(slices=6), seed=3)
    files = [tmp_path / "studies" / str(t.folder) / str(s.file) for t in truths for s in t.series[0].slices]
    config = ApplianceConfig(
        appliance={
            "site": "st-marys",
            "device": "ct-1",
            "demo": True,
            "data_dir": tmp_path / "data",
            "profile": "generic-x86_64-cpu",
        },
        dicom={"ae_title": "MEDGE", "host": "127.0.0.1"},
        # No broker listens there: nothing is ever acknowledged, so the outbox only grows.
        mqtt={"host": "127.0.0.1", "port": free_port(), "outbox_limit": 3, "reconnect_max_s": 1.0},
        packages={"dir": packages},
    )
    events: list[str] = []
    with Appliance(
        config, trusted=reference_packages.trusted, dicom_port=0, on_event=lambda k, s, m, d: events.append(k)
    ) as appliance:
        assert appliance.scp is not None and appliance.reporter is not None
        ae = AE(ae_title="SCANNER1")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", appliance.scp.port, ae_title="MEDGE", evt_handlers=nodelay_evt_handlers())
        assert assoc.is_established
        try:
            statuses = []
            for path in files:
                statuses.append(assoc.send_c_store(pydicom.dcmread(path)).Status)
                deadline = time.monotonic() + 10
                while statuses[-1] == 0 and len(appliance.queue.findings()) < len(statuses):
                    assert time.monotonic() < deadline, "finding not recorded"
                    time.sleep(0.02)
                if statuses[-1] == 0 and len(statuses) >= 3:
                    # The reporter notices the bound on its next check.
                    deadline = time.monotonic() + 10
                    while not appliance.reporter.backpressure and time.monotonic() < deadline:
                        time.sleep(0.02)
        finally:
            assoc.release()
        assert statuses[:3] == [0x0000] * 3
        assert statuses[3:] == [0xA700] * (len(files) - 3), [hex(s) for s in statuses]
        assert "outbox-full" in events
        assert len(appliance.queue.findings()) == 3 and appliance.queue.depth() == 3  # nothing dropped
        with pytest.raises(MedgeError, match="outbox"):
            appliance.submit(files[-1])
