"""Findings from analyses: stable ids, no PHI by default, drift flags (runtime/findings.py)."""

from __future__ import annotations

import pytest

from runtime.analyzer import Analyzer
from runtime.findings import OUTSIDE_CALIBRATED_RANGE, build_findings
from sdk.appliance_config import PhiSection
from sdk.package import verify_package
from sdk.testing import PhantomSpec, generate_series

SITE_KEY = b"site-key-for-tests"


@pytest.fixture(scope="module")
def analyzer(reference_packages, tmp_path_factory: pytest.TempPathFactory):
    out = reference_packages.build(tmp_path_factory.mktemp("findings") / "p.medge")
    analyzer = Analyzer(verify_package(out, reference_packages.trusted), ["CPUExecutionProvider"])
    yield analyzer
    analyzer.close()


def _findings(analyzer: Analyzer, ds, **kwargs):
    return build_findings(
        ds,
        analyzer.analyze(ds),
        analyzer.manifest,
        analyzer.package.sha256,
        site="st-marys",
        device="ct-1",
        site_key=SITE_KEY,
        **{"phi": PhiSection(), "broker_tls": False, **kwargs},
    )


def test_default_policy_leaks_no_patient_identifiers(analyzer: Analyzer) -> None:
    ds = generate_series(PhantomSpec(slices=4), seed=9).datasets[2]
    ds.AccessionNumber = "ACC-123"
    (finding,) = _findings(analyzer, ds)
    wire = finding.to_json().decode()
    for secret in (str(ds.PatientID), str(ds.PatientName), "ACC-123", str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)):
        assert secret not in wire
    assert finding.accession_number is None and finding.patient_id is None
    assert set(finding.latency_ms) >= {"preprocess", "infer", "postprocess", "total"}


def test_accession_and_patient_id_only_when_policy_allows_and_tls(analyzer: Analyzer) -> None:
    ds = generate_series(PhantomSpec(slices=4), seed=9).datasets[2]
    ds.AccessionNumber = "ACC-123"
    ds.PatientID = "PID-456"
    accession = PhiSection(policy="accession")
    both = PhiSection(policy="accession-and-patient-id")
    for policy in (accession, both):
        clear = _findings(analyzer, ds, phi=policy, broker_tls=False)[0]
        assert clear.accession_number is None and clear.patient_id is None, "never over a plain connection"
    only_accession = _findings(analyzer, ds, phi=accession, broker_tls=True)[0]
    assert (only_accession.accession_number, only_accession.patient_id) == ("ACC-123", None)
    full = _findings(analyzer, ds, phi=both, broker_tls=True)[0]
    assert (full.accession_number, full.patient_id) == ("ACC-123", "PID-456")
    assert str(ds.PatientName) not in full.to_json().decode()


def test_ids_are_stable_for_instance_and_package(analyzer: Analyzer) -> None:
    ds = generate_series(PhantomSpec(slices=4), seed=11).datasets[1]
    assert _findings(analyzer, ds)[0].id == _findings(analyzer, ds)[0].id
    other = generate_series(PhantomSpec(slices=4), seed=11).datasets[2]
    assert _findings(analyzer, other)[0].id != _findings(analyzer, ds)[0].id


def test_a_protocol_change_is_flagged_outside_the_calibrated_range(analyzer: Analyzer) -> None:
    series = generate_series(PhantomSpec(slices=4), seed=12)
    normal = _findings(analyzer, series.datasets[1])[0]
    assert OUTSIDE_CALIBRATED_RANGE not in normal.flags
    # The scanner starts sending a soft-tissue reconstruction: intensities shift far from the calibration set.
    shifted = series.datasets[1]
    shifted.RescaleIntercept = 400
    flagged = _findings(analyzer, shifted)[0]
    assert OUTSIDE_CALIBRATED_RANGE in flagged.flags
