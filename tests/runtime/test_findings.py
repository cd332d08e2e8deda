"""Findings from analyses: stable ids, no PHI by default, drift flags (runtime/findings.py)."""

from __future__ import annotations

import pytest

from device_profiles import get_profile
from quantization.compile import CompileOptions, compile_package
from runtime.analyzer import Analyzer
from runtime.findings import OUTSIDE_CALIBRATED_RANGE, build_findings
from sdk.appliance_config import PhiSection
from sdk.model_config import load_model_config
from sdk.package import verify_package
from sdk.reference_model import config_path, onnx_path
from sdk.signing import generate_keypair, load_private_key, load_public_key
from sdk.testing import PhantomSpec, generate_series, generate_studies
from sdk.trust import TrustStore

SITE_KEY = b"site-key-for-tests"


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("findings")
    generate_studies(root / "calib", 3, PhantomSpec(slices=12), seed=5)
    pair = generate_keypair(root / "keys")
    out = root / "p.medge"
    compile_package(
        onnx_path(),
        load_model_config(config_path()),
        get_profile("generic-x86_64-cpu"),
        root / "calib",
        load_private_key(pair.private_path),
        out,
        CompileOptions(precision="fp32"),
    )
    package = verify_package(out, TrustStore.from_keys([load_public_key(pair.public_path)]))
    analyzer = Analyzer(package, ["CPUExecutionProvider"])
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
    assert finding.accession_number is None
    assert set(finding.latency_ms) >= {"preprocess", "infer", "postprocess", "total"}


def test_accession_only_when_policy_allows_and_tls(analyzer: Analyzer) -> None:
    ds = generate_series(PhantomSpec(slices=4), seed=9).datasets[2]
    ds.AccessionNumber = "ACC-123"
    allowed = PhiSection(policy="accession")
    assert _findings(analyzer, ds, phi=allowed, broker_tls=False)[0].accession_number is None
    assert _findings(analyzer, ds, phi=allowed, broker_tls=True)[0].accession_number == "ACC-123"


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
