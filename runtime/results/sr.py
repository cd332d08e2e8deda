"""A finding as a DICOM Structured Report that goes back into the source study on the hospital's PACS.

The report is a TID 1500 Measurement Report (highdicom), the structure that
IHE AI Results (AIR) and PACS viewers expect for AI results:

* the observation context names the model as the observing device (its
  Device UID, name and manufacturer);
* one measurement group per finding: a tracking identifier, the finding type
  (the model's label), TID 4019 Algorithm Identification (model name and
  version), the decision as a qualitative evaluation (Present / Absent), the
  score and the decision threshold as measurements, and the source image
  (with its frame); a positive finding with a location is a planar ROI group
  whose region is a point on the source image;
* the source instance is referenced from the content tree and listed in the
  Current Requested Procedure Evidence Sequence;
* the Contributing Equipment Sequence names the model (manufacturer, model
  name, software versions, Device UID) with Purpose of Reference
  (DCM, 109102, "Processing Equipment"): equipment that processed instances
  to create a new one. (109103 "Modifying Equipment" is for equipment that
  changed an existing instance without creating a new one.)

The SR sits in the source study (same Study Instance UID, patient and study
modules copied from the source: it goes to the hospital's own PACS, never off
site) in a series of its own. Its UIDs are derived from the finding id and
the package, so rebuilding it after a crash gives the same SOP Instance UID
and the PACS stores it once. Text is UTF-8 (``ISO_IR 192``).

``template = "comprehensive"`` writes the same content tree as a
Comprehensive SR (no 3D coordinates are used) for PACSs that do not know the
Comprehensive 3D SR storage SOP class.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Literal

import highdicom as hd
import numpy as np
from pydicom import DataElement, Dataset
from pydicom.filewriter import dcmwrite
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian

from runtime.work_queue import PacsResult
from sdk.appliance_config import PacsSection
from sdk.errors import MedgeError
from sdk.manifest import Manifest
from sdk.messages import Finding

__all__ = [
    "CODING_SCHEME",
    "SR_SERIES_NUMBER",
    "SR_SOP_CLASSES",
    "SrTemplate",
    "StructuredReportError",
    "build_sr",
    "device_uid",
    "encode_sr",
    "result_uid",
    "sr_results",
]

log = logging.getLogger(__name__)

SrTemplate = Literal["tid1500", "comprehensive"]

SR_SOP_CLASSES: dict[str, str] = {
    "tid1500": "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR Storage
    "comprehensive": "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR Storage
}
"""The storage SOP class of each template: what the sender proposes to the PACS."""

SR_SERIES_NUMBER = 9_100
"""The Series Number of medge's SR series (high, so viewers list it after the images)."""

CODING_SCHEME = "99MEDGE"
"""The private coding scheme of model labels (a model's labels are free text, not SNOMED codes)."""

_PERSON_NAMES = ("PatientName", "ReferringPhysicianName")
_UID_NAMESPACE = uuid.UUID("6f1c3a52-6d1e-4a57-9a43-2f0f3d8b7c11")  # medge's; never change it: UIDs derive from it
_LO_MAX = 64


class StructuredReportError(MedgeError):
    """A finding cannot be written as an SR (its source instance lacks what the SR must copy or reference)."""


def result_uid(kind: str, key: str) -> str:
    """A stable DICOM UID (``2.25.<uuid5>``) for ``kind`` of thing keyed by ``key``: the same key, the same UID."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, f'{kind}:{key}').int}"


def device_uid(package_sha256: str) -> str:
    """The Device UID of a model package (stable for the package: its identity is its hash)."""
    return result_uid("device", package_sha256)


def _medge_version() -> str:
    try:
        return version("medge")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "0+unknown"


def _lo(text: str) -> str:
    """A value that fits LO (64 characters, no backslash)."""
    return text.replace("\\", "/")[:_LO_MAX]


def _label_code(label: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=label, scheme_designator=CODING_SCHEME, meaning=_lo(label))


def build_sr(
    source: Dataset,
    finding: Finding,
    manifest: Manifest,
    package_sha256: str,
    *,
    template: SrTemplate = "tid1500",
    manufacturer: str = "medge",
    device: str | None = None,
) -> hd.sr.Comprehensive3DSR | hd.sr.ComprehensiveSR:
    """The SR of one finding on ``source`` (the analysed instance, or a series' deciding image).

    Args:
        source: the source instance (its header is enough: pixels are not read).
        finding: the finding, as it went into the outbox.
        manifest: the package's manifest (model name, version, task).
        package_sha256: the package's identity (the default Device UID derives from it).
        template: ``tid1500`` (Comprehensive 3D SR) or ``comprehensive`` (Comprehensive SR).
        manufacturer: the Manufacturer named for the model in the Contributing Equipment.
        device: the model's Device UID (default: :func:`device_uid` of the package).

    Raises:
        StructuredReportError: the source lacks a UID or patient attribute the SR needs, or
            highdicom refuses a value.
    """
    model = manifest.model
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID") if k not in source]
    if missing:
        raise StructuredReportError(f"the source instance has no {', '.join(missing)}")
    the_device = device or device_uid(package_sha256)
    software = [_lo(model.version), _lo(f"medge {_medge_version()}")]
    frames = None if finding.frame is None else [finding.frame + 1]
    try:
        algorithm = hd.sr.AlgorithmIdentification(name=_lo(model.name), version=_lo(model.version))
        finding_type = _label_code(finding.label)
        decision = hd.sr.QualitativeEvaluation(
            name=finding_type, value=codes.SCT.Present if finding.positive else codes.SCT.Absent
        )
        measurements = [
            hd.sr.Measurement(
                name=codes.DCM.Probability, value=float(finding.score), unit=codes.UCUM.NoUnits, algorithm_id=algorithm
            ),
            hd.sr.Measurement(
                name=hd.sr.CodedConcept("threshold", CODING_SCHEME, "Decision threshold"),
                value=float(finding.threshold),
                unit=codes.UCUM.NoUnits,
            ),
        ]
        tracking = hd.sr.TrackingIdentifier(
            uid=result_uid("tracking", finding.id), identifier=_lo(f"{model.name} {finding.label}")
        )
        group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations
        if finding.positive and finding.location is not None:
            # Finding pixel coordinates count from the centre of the first pixel; SCOORD's from its corner.
            point = np.array([[finding.location.column + 0.5, finding.location.row + 0.5]], dtype=float)
            region = hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POINT,
                graphic_data=point,
                source_image=hd.sr.SourceImageForRegion.from_source_image(source, frames),
            )
            group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_region=region,
                finding_type=finding_type,
                algorithm_id=algorithm,
                measurements=measurements,
                qualitative_evaluations=[decision],
            )
        else:
            group = hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                finding_type=finding_type,
                algorithm_id=algorithm,
                measurements=measurements,
                qualitative_evaluations=[decision],
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source, frames)],
            )
        observer = hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=the_device,
                name=_lo(model.name),
                manufacturer_name=_lo(manufacturer),
                model_name=_lo(model.name),
            ),
        )
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=codes.SCT.ImagingProcedure,
            imaging_measurements=[group],
            title=codes.DCM.ImagingMeasurementReport,
        )
        equipment = hd.ContributingEquipment(
            manufacturer=_lo(manufacturer),
            purpose_of_reference=codes.DCM.ProcessingEquipment,
            manufacturer_model_name=_lo(model.name),
            software_versions=software,
            contribution_description=_lo(f"{model.task} by {model.name} {model.version}"),
        )
        # IHE AIR asks for the model's Device UID here too; highdicom has no argument for it.
        equipment.DeviceUID = the_device
        sr_class = hd.sr.Comprehensive3DSR if template == "tid1500" else hd.sr.ComprehensiveSR
        sr = sr_class(
            evidence=[_evidence(source)],
            content=report,
            series_instance_uid=result_uid("series", f"{source.StudyInstanceUID}/{package_sha256}"),
            series_number=SR_SERIES_NUMBER,
            sop_instance_uid=result_uid("sr", finding.id),
            instance_number=_instance_number(source, finding),
            manufacturer=_lo(manufacturer),
            is_complete=True,
            series_description=_lo(f"AI results: {model.name} {model.version}"),
            specific_character_set="ISO_IR 192",
            contributing_equipment=[equipment],
            manufacturer_model_name=_lo(model.name),
            coding_schemes=[
                hd.coding_schemes.CodingSchemeIdentificationItem(
                    designator=CODING_SCHEME,
                    name="medge model labels",
                    responsible_organization="medge",
                )
            ],
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise StructuredReportError(f"finding {finding.id}: no SR could be made: {exc}") from exc
    # General Equipment: set here, since highdicom takes a str or a tuple (which pydicom warns about), not a list.
    sr.add_new(0x00181020, "LO", software)  # Software Versions
    for keyword in _PERSON_NAMES:  # as the source has them (see _evidence)
        if keyword in source:
            sr[keyword] = DataElement(Tag(keyword), "PN", source[keyword].value)
    _copy_patient_extras(source, sr)
    return sr


def _evidence(source: Dataset) -> Dataset:
    """The source as highdicom is given it: single-component person names get a trailing ``^``.

    highdicom warns about a name without ``^`` (``ANONYMOUS``, ``PHANTOM``: common in real studies) as a
    probable mistake; the SR copies the source's names exactly afterwards. The source itself is not
    changed (its elements are replaced in a shallow copy, not edited).
    """
    copy = Dataset()
    for element in source:  # the same element objects, in a dict of the copy's own
        copy.add(element)
    copy.file_meta = source.get("file_meta", Dataset())
    for keyword in _PERSON_NAMES:
        value = source.get(keyword)
        if value is not None and str(value) and "^" not in str(value):
            copy[keyword] = DataElement(Tag(keyword), "PN", f"{value}^")
    return copy


def _instance_number(source: Dataset, finding: Finding) -> int:
    """The source's Instance Number (so the SRs of a series list in the images' order), else 1."""
    try:
        number = int(source.get("InstanceNumber") or 1)
    except (TypeError, ValueError):
        number = 1
    frame = finding.frame or 0
    return max(1, number) * 1000 + frame if finding.frame is not None else max(1, number)


def _copy_patient_extras(source: Dataset, sr: Dataset) -> None:
    """Patient identification highdicom leaves out, so the PACS files the SR with the right patient."""
    for keyword in ("IssuerOfPatientID", "PatientAge", "OtherPatientIDsSequence"):
        if keyword in source and keyword not in sr:
            sr[keyword] = source[keyword]


def encode_sr(sr: Dataset) -> bytes:
    """The SR as DICOM Part 10 bytes (Explicit VR Little Endian): what the outbox keeps and the sender sends."""
    buffer = io.BytesIO()
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dcmwrite(buffer, sr, enforce_file_format=True)
    return buffer.getvalue()


def sr_results(
    source: Dataset,
    findings: Sequence[Finding],
    manifest: Manifest,
    package_sha256: str,
    section: PacsSection,
) -> list[PacsResult]:
    """The SRs of one package's findings on ``source``, ready for the PACS outbox (none if the package is not
    one ``[pacs] packages`` names, or the section is off).

    Raises:
        StructuredReportError: an SR cannot be made (see :func:`build_sr`).
    """
    if not findings or not section.wants(manifest.model.name):
        return []
    destination = f"{section.ae_title}@{section.host}:{section.port}"
    results = []
    for finding in findings:
        sr = build_sr(
            source,
            finding,
            manifest,
            package_sha256,
            template=section.template,
            manufacturer=section.manufacturer,
            device=section.device_uid,
        )
        results.append(
            PacsResult(
                finding_id=finding.id,
                sop_instance_uid=str(sr.SOPInstanceUID),
                sop_class_uid=str(sr.SOPClassUID),
                study_instance_uid=str(sr.StudyInstanceUID),
                destination=destination,
                data=encode_sr(sr),
            )
        )
    return results
