"""Turning an analysis into finding messages: identity, pseudonyms, decision, location, drift, latency.

A finding's id is stable for instance + package (+ frame) on one appliance,
so re-analysing the same instance after a crash produces the same id and the
dashboard stores it once. Study references leave the appliance as keyed pseudonyms; the accession
number only where the site's PHI policy allows it and the broker link is TLS.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom import Dataset

from runtime.analyzer import Analysis
from sdk.appliance_config import PhiSection
from sdk.input_statistics import DRIFT_THRESHOLD
from sdk.manifest import Manifest
from sdk.messages import Finding, FindingLocation, PackageRef, finding_id, pseudonym

__all__ = ["OUTSIDE_CALIBRATED_RANGE", "build_findings", "package_ref"]

OUTSIDE_CALIBRATED_RANGE = "outside calibrated range"


def package_ref(manifest: Manifest, sha256: str) -> PackageRef:
    """How findings and status messages name a package."""
    return PackageRef(
        name=manifest.model.name,
        version=manifest.model.version,
        precision=manifest.engine.precision,
        profile=manifest.engine.profile,
        sha256=sha256,
    )


def build_findings(
    ds: Dataset,
    analyses: Sequence[Analysis],
    manifest: Manifest,
    package_sha256: str,
    *,
    site: str,
    device: str,
    site_key: bytes,
    phi: PhiSection,
    broker_tls: bool,
    stage_ms: dict[str, float] | None = None,
    drift_threshold: float = DRIFT_THRESHOLD,
    series: bool = False,
) -> list[Finding]:
    """One finding per analysed image of ``ds`` (sequence numbers are assigned by the outbox).

    Args:
        ds: the instance (its UIDs, modality and accession number).
        analyses: what :meth:`runtime.analyzer.Analyzer.analyze` returned for it.
        manifest: the live package's manifest.
        package_sha256: the package's identity.
        site: this appliance's site.
        device: this appliance's device name.
        site_key: the key of the site's pseudonyms.
        phi: the site's PHI policy.
        broker_tls: whether the broker connection is TLS (PHI never travels in clear).
        stage_ms: per-instance stage times measured before analysis (``receive``, ``decode``).
        drift_threshold: drift above which a finding is flagged ``outside calibrated range``.
        series: the finding is a whole series' (``ds`` is its deciding image): its id is
            stable for series + package, its instance reference names the deciding image.
    """
    instance_uid = str(ds.SOPInstanceUID)
    ref = package_ref(manifest, package_sha256)
    accession = patient_id = None
    if phi.policy != "pseudonymous" and broker_tls:
        accession = str(ds.get("AccessionNumber", "") or "") or None
        if phi.policy == "accession-and-patient-id":
            patient_id = str(ds.get("PatientID", "") or "") or None
    findings = []
    for analysis in analyses:
        result = analysis.result
        location = None
        if result.row is not None and result.column is not None:
            location = FindingLocation(row=result.row, column=result.column, patient_mm=result.patient_mm)
        flags = []
        if analysis.drift is not None and analysis.drift > drift_threshold:
            flags.append(OUTSIDE_CALIBRATED_RANGE)
        latency = {**(stage_ms or {}), **analysis.latency_ms}
        latency["total"] = round(sum(latency.values()), 3)
        findings.append(
            Finding(
                id=(
                    finding_id(str(ds.get("SeriesInstanceUID", "")), package_sha256, origin=f"{site}/{device}")
                    if series
                    else finding_id(instance_uid, package_sha256, analysis.frame, origin=f"{site}/{device}")
                ),
                site=site,
                device=device,
                seq=0,
                package=ref,
                study_ref=pseudonym(site_key, str(ds.get("StudyInstanceUID", ""))),
                series_ref=pseudonym(site_key, str(ds.get("SeriesInstanceUID", ""))),
                instance_ref=pseudonym(site_key, instance_uid),
                accession_number=accession,
                patient_id=patient_id,
                modality=str(ds.get("Modality", "")),
                frame=analysis.frame,
                label=result.label,
                score=min(max(result.score, 0.0), 1.0),
                scores={label: min(max(value, 0.0), 1.0) for label, value in result.scores.items()},
                threshold=result.threshold,
                positive=result.positive,
                location=location,
                flags=flags,
                latency_ms=latency,
            )
        )
    return findings
