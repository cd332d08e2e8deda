"""PS3.15 Table E.1-1 as data: the attributes the Basic Application Level Confidentiality Profile acts on.

Source: the machine-readable transcription of Table E.1-1 kept by innolitics/dicom-standard
(``standard/confidentiality_profile_attributes.json`` at commit
``0d01bf11dfc1d0b73b6df85bbf6e1764d3c558a3``, MIT licence), which is parsed from the DocBook source of
DICOM PS3.15 published by NEMA. That file does not record which edition it was parsed from; its rows
(Source Start DateTime, Device Label, Flow Identifier, Treatment Tolerance Violation ...) place it at
the 2020 editions or later. Each row here carries the row's tag, the Basic Profile action and the two
option columns medge implements; the keyword comes from pydicom's data dictionary. Compare against the
edition you must conform to before relying on an attribute that was added or changed later.

Action codes (PS3.15 Table E.1-1a):

====== =================================================================================
``D``  replace with a non-zero-length dummy value consistent with the VR
``Z``  replace with a zero-length value (or a dummy value consistent with the VR)
``X``  remove
``K``  keep
``C``  clean: replace values that could identify with values of similar meaning
``U``  replace the UID with a non-zero-length UID, consistently within the set of instances
====== =================================================================================

Compound codes let the de-identifier pick per IOD: ``X/Z`` (X for a Type 3, Z for a Type 2
attribute), ``X/D``, ``Z/D``, ``X/Z/D`` and ``X/Z/U*`` (for sequences of UID references).
medge does not carry the IOD tables, so :func:`resolve` always takes the least destructive choice,
the one that keeps every IOD valid: ``X/Z`` -> ``Z``, ``X/D`` -> ``D``, ``Z/D`` -> ``D``,
``X/Z/D`` -> ``D``, ``X/Z/U*`` -> ``U`` (keep the sequence, replace the UIDs inside it). None of
those choices keeps an identifying value: a dummy or an empty value stands where the value was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

__all__ = ["PROFILE", "Action", "ProfileEntry", "lookup", "resolve"]


class Action(StrEnum):
    """What the profile does to one attribute."""

    DUMMY = "D"
    ZERO = "Z"
    REMOVE = "X"
    KEEP = "K"
    CLEAN = "C"
    UID = "U"


_COMPOUND = {
    "D": Action.DUMMY,
    "Z": Action.ZERO,
    "X": Action.REMOVE,
    "K": Action.KEEP,
    "C": Action.CLEAN,
    "U": Action.UID,
    "X/Z": Action.ZERO,
    "X/D": Action.DUMMY,
    "Z/D": Action.DUMMY,
    "X/Z/D": Action.DUMMY,
    "X/Z/U*": Action.UID,
}


def resolve(code: str) -> Action:
    """The single action medge takes for a (possibly compound) code of the table.

    Raises:
        ValueError: the code is not one of Table E.1-1a's.
    """
    try:
        return _COMPOUND[code]
    except KeyError:
        raise ValueError(f"unknown Table E.1-1 action code {code!r}") from None


@dataclass(frozen=True, slots=True)
class ProfileEntry:
    """One row of Table E.1-1.

    Attributes:
        tag: the attribute's tag; for the repeating groups (curves 50xx, overlays 60xx) the tag of group
            5000 or 6000.
        keyword: the DICOM keyword.
        basic: the Basic Profile's code as printed in the table (``X/Z/D`` etc.).
        retain_full_dates: the Retain Longitudinal Temporal Information with Full Dates Option's code
            (``K``), or ``None`` when the option does not change the row.
        clean_descriptors: the Clean Descriptors Option's code (``C``), or ``None``.
    """

    tag: int
    keyword: str
    basic: str
    retain_full_dates: str | None
    clean_descriptors: str | None

    @property
    def action(self) -> Action:
        """The Basic Profile's action with compound codes resolved (see :func:`resolve`)."""
        return resolve(self.basic)


# tag | Basic Profile | Retain Longitudinal Temporal Information Full Dates | Clean Descriptors | keyword
# "-" means the option leaves the Basic Profile's action. Sorted by tag.
_TABLE = """
(0000,1000) X       -  -  AffectedSOPInstanceUID
(0000,1001) U       -  -  RequestedSOPInstanceUID
(0002,0003) U       -  -  MediaStorageSOPInstanceUID
(0004,1511) U       -  -  ReferencedSOPInstanceUIDInFile
(0008,0014) U       -  -  InstanceCreatorUID
(0008,0015) X       K  -  InstanceCoercionDateTime
(0008,0018) U       -  -  SOPInstanceUID
(0008,0020) Z       K  -  StudyDate
(0008,0021) X/D     K  -  SeriesDate
(0008,0022) X/Z     K  -  AcquisitionDate
(0008,0023) Z/D     K  -  ContentDate
(0008,0024) X       K  -  OverlayDate
(0008,0025) X       K  -  CurveDate
(0008,002A) X/Z/D   K  -  AcquisitionDateTime
(0008,0030) Z       K  -  StudyTime
(0008,0031) X/D     K  -  SeriesTime
(0008,0032) X/Z     K  -  AcquisitionTime
(0008,0033) Z/D     K  -  ContentTime
(0008,0034) X       K  -  OverlayTime
(0008,0035) X       K  -  CurveTime
(0008,0050) Z       -  -  AccessionNumber
(0008,0058) U       -  -  FailedSOPInstanceUIDList
(0008,0080) X/Z/D   -  -  InstitutionName
(0008,0081) X       -  -  InstitutionAddress
(0008,0082) X/Z/D   -  -  InstitutionCodeSequence
(0008,0090) Z       -  -  ReferringPhysicianName
(0008,0092) X       -  -  ReferringPhysicianAddress
(0008,0094) X       -  -  ReferringPhysicianTelephoneNumbers
(0008,0096) X       -  -  ReferringPhysicianIdentificationSequence
(0008,009C) Z       -  -  ConsultingPhysicianName
(0008,009D) X       -  -  ConsultingPhysicianIdentificationSequence
(0008,0201) X       K  -  TimezoneOffsetFromUTC
(0008,1010) X/Z/D   -  -  StationName
(0008,1030) X       -  C  StudyDescription
(0008,103E) X       -  C  SeriesDescription
(0008,1040) X       -  -  InstitutionalDepartmentName
(0008,1041) X       -  -  InstitutionalDepartmentTypeCodeSequence
(0008,1048) X       -  -  PhysiciansOfRecord
(0008,1049) X       -  -  PhysiciansOfRecordIdentificationSequence
(0008,1050) X       -  -  PerformingPhysicianName
(0008,1052) X       -  -  PerformingPhysicianIdentificationSequence
(0008,1060) X       -  -  NameOfPhysiciansReadingStudy
(0008,1062) X       -  -  PhysiciansReadingStudyIdentificationSequence
(0008,1070) X/Z/D   -  -  OperatorsName
(0008,1072) X/D     -  -  OperatorIdentificationSequence
(0008,1080) X       -  C  AdmittingDiagnosesDescription
(0008,1084) X       -  C  AdmittingDiagnosesCodeSequence
(0008,1110) X/Z     -  -  ReferencedStudySequence
(0008,1111) X/Z/D   -  -  ReferencedPerformedProcedureStepSequence
(0008,1120) X       -  -  ReferencedPatientSequence
(0008,1140) X/Z/U*  -  -  ReferencedImageSequence
(0008,1155) U       -  -  ReferencedSOPInstanceUID
(0008,1195) U       -  -  TransactionUID
(0008,2111) X       -  C  DerivationDescription
(0008,2112) X/Z/U*  -  -  SourceImageSequence
(0008,3010) U       -  -  IrradiationEventUID
(0008,4000) X       -  C  IdentifyingComments
(0010,0010) Z       -  -  PatientName
(0010,0020) Z       -  -  PatientID
(0010,0021) X       -  -  IssuerOfPatientID
(0010,0030) Z       -  -  PatientBirthDate
(0010,0032) X       -  -  PatientBirthTime
(0010,0040) Z       -  -  PatientSex
(0010,0050) X       -  -  PatientInsurancePlanCodeSequence
(0010,0101) X       -  -  PatientPrimaryLanguageCodeSequence
(0010,0102) X       -  -  PatientPrimaryLanguageModifierCodeSequence
(0010,1000) X       -  -  OtherPatientIDs
(0010,1001) X       -  -  OtherPatientNames
(0010,1002) X       -  -  OtherPatientIDsSequence
(0010,1005) X       -  -  PatientBirthName
(0010,1010) X       -  -  PatientAge
(0010,1020) X       -  -  PatientSize
(0010,1030) X       -  -  PatientWeight
(0010,1040) X       -  -  PatientAddress
(0010,1050) X       -  -  InsurancePlanIdentification
(0010,1060) X       -  -  PatientMotherBirthName
(0010,1080) X       -  -  MilitaryRank
(0010,1081) X       -  -  BranchOfService
(0010,1090) X       -  -  MedicalRecordLocator
(0010,1100) X       -  -  ReferencedPatientPhotoSequence
(0010,2000) X       -  C  MedicalAlerts
(0010,2110) X       -  C  Allergies
(0010,2150) X       -  -  CountryOfResidence
(0010,2152) X       -  -  RegionOfResidence
(0010,2154) X       -  -  PatientTelephoneNumbers
(0010,2155) X       -  -  PatientTelecomInformation
(0010,2160) X       -  -  EthnicGroup
(0010,2180) X       -  C  Occupation
(0010,21A0) X       -  -  SmokingStatus
(0010,21B0) X       -  C  AdditionalPatientHistory
(0010,21C0) X       -  -  PregnancyStatus
(0010,21D0) X       K  -  LastMenstrualDate
(0010,21F0) X       -  -  PatientReligiousPreference
(0010,2203) X/Z     -  -  PatientSexNeutered
(0010,2297) X       -  -  ResponsiblePerson
(0010,2299) X       -  -  ResponsibleOrganization
(0010,4000) X       -  C  PatientComments
(0012,0010) D       -  -  ClinicalTrialSponsorName
(0012,0020) D       -  -  ClinicalTrialProtocolID
(0012,0021) Z       -  -  ClinicalTrialProtocolName
(0012,0030) Z       -  -  ClinicalTrialSiteID
(0012,0031) Z       -  -  ClinicalTrialSiteName
(0012,0040) D       -  -  ClinicalTrialSubjectID
(0012,0042) D       -  -  ClinicalTrialSubjectReadingID
(0012,0050) Z       -  -  ClinicalTrialTimePointID
(0012,0051) X       -  C  ClinicalTrialTimePointDescription
(0012,0060) Z       -  -  ClinicalTrialCoordinatingCenterName
(0012,0071) X       -  -  ClinicalTrialSeriesID
(0012,0072) X       -  C  ClinicalTrialSeriesDescription
(0012,0081) D       -  -  ClinicalTrialProtocolEthicsCommitteeName
(0012,0082) X       -  -  ClinicalTrialProtocolEthicsCommitteeApprovalNumber
(0016,002B) X       -  C  MakerNote
(0016,004B) X       -  C  DeviceSettingDescription
(0016,004D) X       -  -  CameraOwnerName
(0016,004E) X       -  -  LensSpecification
(0016,004F) X       -  -  LensMake
(0016,0050) X       -  -  LensModel
(0016,0051) X       -  -  LensSerialNumber
(0016,0070) X       -  -  GPSVersionID
(0016,0071) X       -  -  GPSLatitudeRef
(0016,0072) X       -  -  GPSLatitude
(0016,0073) X       -  -  GPSLongitudeRef
(0016,0074) X       -  -  GPSLongitude
(0016,0075) X       -  -  GPSAltitudeRef
(0016,0076) X       -  -  GPSAltitude
(0016,0077) X       -  -  GPSTimeStamp
(0016,0078) X       -  -  GPSSatellites
(0016,0079) X       -  -  GPSStatus
(0016,007A) X       -  -  GPSMeasureMode
(0016,007B) X       -  -  GPSDOP
(0016,007C) X       -  -  GPSSpeedRef
(0016,007D) X       -  -  GPSSpeed
(0016,007E) X       -  -  GPSTrackRef
(0016,007F) X       -  -  GPSTrack
(0016,0080) X       -  -  GPSImgDirectionRef
(0016,0081) X       -  -  GPSImgDirection
(0016,0082) X       -  -  GPSMapDatum
(0016,0083) X       -  -  GPSDestLatitudeRef
(0016,0084) X       -  -  GPSDestLatitude
(0016,0085) X       -  -  GPSDestLongitudeRef
(0016,0086) X       -  -  GPSDestLongitude
(0016,0087) X       -  -  GPSDestBearingRef
(0016,0088) X       -  -  GPSDestBearing
(0016,0089) X       -  -  GPSDestDistanceRef
(0016,008A) X       -  -  GPSDestDistance
(0016,008B) X       -  -  GPSProcessingMethod
(0016,008C) X       -  -  GPSAreaInformation
(0016,008D) X       K  -  GPSDateStamp
(0016,008E) X       -  -  GPSDifferential
(0018,0010) Z/D     -  C  ContrastBolusAgent
(0018,1000) X/Z/D   -  -  DeviceSerialNumber
(0018,1002) U       -  -  DeviceUID
(0018,1004) X       -  -  PlateID
(0018,1005) X       -  -  GeneratorID
(0018,1007) X       -  -  CassetteID
(0018,1008) X       -  -  GantryID
(0018,1009) X       -  -  UniqueDeviceIdentifier
(0018,100A) X       -  -  UDISequence
(0018,100B) U       -  -  ManufacturerDeviceClassUID
(0018,1030) X/D     -  C  ProtocolName
(0018,11BB) D       -  C  AcquisitionFieldOfViewLabel
(0018,1400) X/D     -  C  AcquisitionDeviceProcessingDescription
(0018,2042) U       -  -  TargetUID
(0018,4000) X       -  C  AcquisitionComments
(0018,5011) X       -  -  TransducerIdentificationSequence
(0018,700A) X/D     -  -  DetectorID
(0018,9185) X       -  C  RespiratoryMotionCompensationTechniqueDescription
(0018,9367) D       -  -  XRaySourceID
(0018,9369) D       K  -  SourceStartDateTime
(0018,936A) D       K  -  SourceEndDateTime
(0018,9371) D       -  -  XRayDetectorID
(0018,9373) X       -  -  XRayDetectorLabel
(0018,937B) X       -  C  MultienergyAcquisitionDescription
(0018,937F) X       -  C  DecompositionDescription
(0018,9424) X       -  C  AcquisitionProtocolDescription
(0018,9516) X/D     K  -  StartAcquisitionDateTime
(0018,9517) X/D     K  -  EndAcquisitionDateTime
(0018,9937) X       -  C  RequestedSeriesDescription
(0018,A003) X       -  C  ContributionDescription
(0020,000D) U       -  -  StudyInstanceUID
(0020,000E) U       -  -  SeriesInstanceUID
(0020,0010) Z       -  -  StudyID
(0020,0052) U       -  -  FrameOfReferenceUID
(0020,0200) U       -  -  SynchronizationFrameOfReferenceUID
(0020,3401) X       -  -  ModifyingDeviceID
(0020,3406) X       -  -  ModifiedImageDescription
(0020,4000) X       -  C  ImageComments
(0020,9158) X       -  C  FrameComments
(0020,9161) U       -  -  ConcatenationUID
(0020,9164) U       -  -  DimensionOrganizationUID
(0028,1199) U       -  -  PaletteColorLookupTableUID
(0028,1214) U       -  -  LargePaletteColorLookupTableUID
(0028,4000) X       -  -  ImagePresentationComments
(0032,0012) X       -  -  StudyIDIssuer
(0032,1020) X       -  -  ScheduledStudyLocation
(0032,1021) X       -  -  ScheduledStudyLocationAETitle
(0032,1030) X       -  C  ReasonForStudy
(0032,1032) X       -  -  RequestingPhysician
(0032,1033) X       -  -  RequestingService
(0032,1060) X/Z     -  C  RequestedProcedureDescription
(0032,1066) X       -  C  ReasonForVisit
(0032,1067) X       -  C  ReasonForVisitCodeSequence
(0032,1070) X       -  C  RequestedContrastAgent
(0032,4000) X       -  C  StudyComments
(0034,0001) D       -  -  FlowIdentifierSequence
(0034,0002) D       -  -  FlowIdentifier
(0034,0005) D       -  -  SourceIdentifier
(0034,0007) D       K  -  FrameOriginTimestamp
(0038,0004) X       -  -  ReferencedPatientAliasSequence
(0038,0010) X       -  -  AdmissionID
(0038,0011) X       -  -  IssuerOfAdmissionID
(0038,0014) X       -  -  IssuerOfAdmissionIDSequence
(0038,001E) X       -  -  ScheduledPatientInstitutionResidence
(0038,0020) X       K  -  AdmittingDate
(0038,0021) X       K  -  AdmittingTime
(0038,0040) X       -  C  DischargeDiagnosisDescription
(0038,0050) X       -  -  SpecialNeeds
(0038,0060) X       -  -  ServiceEpisodeID
(0038,0061) X       -  -  IssuerOfServiceEpisodeID
(0038,0062) X       -  C  ServiceEpisodeDescription
(0038,0064) X       -  -  IssuerOfServiceEpisodeIDSequence
(0038,0300) X       -  -  CurrentPatientLocation
(0038,0400) X       -  -  PatientInstitutionResidence
(0038,0500) X       -  C  PatientState
(0038,4000) X       -  C  VisitComments
(003A,0310) U       -  -  MultiplexGroupUID
(003A,0314) D       K  -  ImpedanceMeasurementDateTime
(0040,0001) X       -  -  ScheduledStationAETitle
(0040,0002) X       K  -  ScheduledProcedureStepStartDate
(0040,0003) X       K  -  ScheduledProcedureStepStartTime
(0040,0004) X       K  -  ScheduledProcedureStepEndDate
(0040,0005) X       K  -  ScheduledProcedureStepEndTime
(0040,0006) X       -  -  ScheduledPerformingPhysicianName
(0040,0007) X       -  C  ScheduledProcedureStepDescription
(0040,0009) X       -  -  ScheduledProcedureStepID
(0040,000B) X       -  -  ScheduledPerformingPhysicianIdentificationSequence
(0040,0010) X       -  -  ScheduledStationName
(0040,0011) X       -  -  ScheduledProcedureStepLocation
(0040,0012) X       -  -  PreMedication
(0040,0241) X       -  -  PerformedStationAETitle
(0040,0242) X       -  -  PerformedStationName
(0040,0243) X       -  -  PerformedLocation
(0040,0244) X       K  -  PerformedProcedureStepStartDate
(0040,0245) X       K  -  PerformedProcedureStepStartTime
(0040,0250) X       K  -  PerformedProcedureStepEndDate
(0040,0251) X       K  -  PerformedProcedureStepEndTime
(0040,0253) X       -  -  PerformedProcedureStepID
(0040,0254) X       -  C  PerformedProcedureStepDescription
(0040,0275) X       -  C  RequestAttributesSequence
(0040,0280) X       -  C  CommentsOnThePerformedProcedureStep
(0040,0310) X       -  C  CommentsOnRadiationDose
(0040,050A) X       -  -  SpecimenAccessionNumber
(0040,0512) D       -  -  ContainerIdentifier
(0040,0513) Z       -  -  IssuerOfTheContainerIdentifierSequence
(0040,051A) X       -  C  ContainerDescription
(0040,0551) D       -  -  SpecimenIdentifier
(0040,0554) U       -  -  SpecimenUID
(0040,0555) X/Z     -  -  AcquisitionContextSequence
(0040,0562) Z       -  -  IssuerOfTheSpecimenIdentifierSequence
(0040,0600) X       -  C  SpecimenShortDescription
(0040,0602) X       -  C  SpecimenDetailedDescription
(0040,0610) Z       -  -  SpecimenPreparationSequence
(0040,06FA) X       -  -  SlideIdentifier
(0040,1001) X       -  -  RequestedProcedureID
(0040,1002) X       -  C  ReasonForTheRequestedProcedure
(0040,1004) X       -  -  PatientTransportArrangements
(0040,1005) X       -  -  RequestedProcedureLocation
(0040,100A) X       -  C  ReasonForRequestedProcedureCodeSequence
(0040,1010) X       -  -  NamesOfIntendedRecipientsOfResults
(0040,1011) X       -  -  IntendedRecipientsOfResultsIdentificationSequence
(0040,1101) D       -  -  PersonIdentificationCodeSequence
(0040,1102) X       -  -  PersonAddress
(0040,1103) X       -  -  PersonTelephoneNumbers
(0040,1104) X       -  -  PersonTelecomInformation
(0040,1400) X       -  C  RequestedProcedureComments
(0040,2001) X       -  C  ReasonForTheImagingServiceRequest
(0040,2008) X       -  -  OrderEnteredBy
(0040,2009) X       -  -  OrderEntererLocation
(0040,2010) X       -  -  OrderCallbackPhoneNumber
(0040,2011) X       -  -  OrderCallbackTelecomInformation
(0040,2016) Z       -  -  PlacerOrderNumberImagingServiceRequest
(0040,2017) Z       -  -  FillerOrderNumberImagingServiceRequest
(0040,2400) X       -  C  ImagingServiceRequestComments
(0040,3001) X       -  -  ConfidentialityConstraintOnPatientDataDescription
(0040,4005) X       K  -  ScheduledProcedureStepStartDateTime
(0040,4008) X       K  -  ScheduledProcedureStepExpirationDateTime
(0040,4010) X       K  -  ScheduledProcedureStepModificationDateTime
(0040,4011) X       K  -  ExpectedCompletionDateTime
(0040,4023) U       -  -  ReferencedGeneralPurposeScheduledProcedureStepTransactionUID
(0040,4025) X       -  -  ScheduledStationNameCodeSequence
(0040,4027) X       -  -  ScheduledStationGeographicLocationCodeSequence
(0040,4028) X       -  -  PerformedStationNameCodeSequence
(0040,4030) X       -  -  PerformedStationGeographicLocationCodeSequence
(0040,4034) X       -  -  ScheduledHumanPerformersSequence
(0040,4035) X       -  -  ActualHumanPerformersSequence
(0040,4036) X       -  -  HumanPerformerOrganization
(0040,4037) X       -  -  HumanPerformerName
(0040,4050) X       K  -  PerformedProcedureStepStartDateTime
(0040,4051) X       K  -  PerformedProcedureStepEndDateTime
(0040,4052) X       K  -  ProcedureStepCancellationDateTime
(0040,A027) D       -  -  VerifyingOrganization
(0040,A073) D       -  -  VerifyingObserverSequence
(0040,A075) D       -  -  VerifyingObserverName
(0040,A078) X       -  -  AuthorObserverSequence
(0040,A07A) X       -  -  ParticipantSequence
(0040,A07C) X       -  -  CustodialOrganizationSequence
(0040,A088) Z       -  -  VerifyingObserverIdentificationCodeSequence
(0040,A123) D       -  -  PersonName
(0040,A124) U       -  -  UID
(0040,A171) U       -  -  ObservationUID
(0040,A172) U       -  -  ReferencedObservationUIDTrial
(0040,A192) X       K  -  ObservationDateTrial
(0040,A193) X       K  -  ObservationTimeTrial
(0040,A307) X       -  -  CurrentObserverTrial
(0040,A352) X       -  -  VerbalSourceTrial
(0040,A353) X       -  -  AddressTrial
(0040,A354) X       -  -  TelephoneNumberTrial
(0040,A358) X       -  -  VerbalSourceIdentifierCodeSequenceTrial
(0040,A402) U       -  -  ObservationSubjectUIDTrial
(0040,A730) D       -  -  ContentSequence
(0040,DB0C) U       -  -  TemplateExtensionOrganizationUID
(0040,DB0D) U       -  -  TemplateExtensionCreatorUID
(0050,001B) X       -  -  ContainerComponentID
(0050,0020) X       -  -  DeviceDescription
(0050,0021) X       -  C  LongDeviceDescription
(0062,0021) U       -  -  TrackingUID
(0070,0001) D       -  -  GraphicAnnotationSequence
(0070,0084) Z/D     -  -  ContentCreatorName
(0070,0086) X       -  -  ContentCreatorIdentificationCodeSequence
(0070,031A) U       -  -  FiducialUID
(0070,1101) U       -  -  PresentationDisplayCollectionUID
(0070,1102) U       -  -  PresentationSequenceCollectionUID
(0088,0140) U       -  -  StorageMediaFileSetUID
(0088,0200) X       -  -  IconImageSequence
(0088,0904) X       -  -  TopicTitle
(0088,0906) X       -  -  TopicSubject
(0088,0910) X       -  -  TopicAuthor
(0088,0912) X       -  -  TopicKeywords
(0400,0100) U       -  -  DigitalSignatureUID
(0400,0402) X       -  -  ReferencedDigitalSignatureSequence
(0400,0403) X       -  -  ReferencedSOPInstanceMACSequence
(0400,0404) X       -  -  MAC
(0400,0550) X       -  -  ModifiedAttributesSequence
(0400,0551) X       -  -  NonconformingModifiedAttributesSequence
(0400,0552) X       -  -  NonconformingDataElementValue
(0400,0561) X       -  -  OriginalAttributesSequence
(0400,0600) X       -  -  InstanceOriginStatus
(2030,0020) X       -  -  TextString
(2200,0002) X/Z     -  C  LabelText
(2200,0005) X/Z     -  -  BarcodeValue
(3006,0002) D       -  C  StructureSetLabel
(3006,0004) X       -  C  StructureSetName
(3006,0006) X       -  C  StructureSetDescription
(3006,0008) Z       K  -  StructureSetDate
(3006,0009) X/D     K  -  StructureSetTime
(3006,0024) U       -  -  ReferencedFrameOfReferenceUID
(3006,0026) Z       -  C  ROIName
(3006,0028) X       -  C  ROIDescription
(3006,0038) X       -  C  ROIGenerationDescription
(3006,0085) X       -  C  ROIObservationLabel
(3006,0088) X       -  C  ROIObservationDescription
(3006,00A6) Z       -  -  ROIInterpreter
(3006,00C2) U       -  -  RelatedFrameOfReferenceUID
(3008,0054) X/D     K  -  FirstTreatmentDate
(3008,0056) X/D     K  -  MostRecentTreatmentDate
(3008,0105) X/Z     -  -  SourceSerialNumber
(3008,0250) X/D     K  -  TreatmentDate
(3008,0251) X/D     K  -  TreatmentTime
(300A,0002) D       -  C  RTPlanLabel
(300A,0003) X       -  C  RTPlanName
(300A,0004) X       -  C  RTPlanDescription
(300A,0006) X/D     K  -  RTPlanDate
(300A,0007) X/D     K  -  RTPlanTime
(300A,000E) X       -  C  PrescriptionDescription
(300A,0013) U       -  -  DoseReferenceUID
(300A,0016) X       -  C  DoseReferenceDescription
(300A,0072) X       -  C  FractionGroupDescription
(300A,0083) U       -  -  ReferencedDoseReferenceUID
(300A,00B2) X       -  -  TreatmentMachineName
(300A,00C3) X       -  C  BeamDescription
(300A,00DD) X       -  C  BolusDescription
(300A,0196) X       -  C  FixationDeviceDescription
(300A,01A6) X       -  C  ShieldingDeviceDescription
(300A,01B2) X       -  C  SetupTechniqueDescription
(300A,0216) X       -  -  SourceManufacturer
(300A,02EB) X       -  C  CompensatorDescription
(300A,0608) D       -  C  TreatmentPositionGroupLabel
(300A,0609) U       -  -  TreatmentPositionGroupUID
(300A,0611) Z       -  -  RTAccessoryHolderSlotID
(300A,0615) Z       -  -  RTAccessoryDeviceSlotID
(300A,0619) D       -  C  RadiationDoseIdentificationLabel
(300A,0623) D       -  C  RadiationDoseInVivoMeasurementLabel
(300A,062A) D       -  C  RTToleranceSetLabel
(300A,0650) U       -  -  PatientSetupUID
(300A,0676) X       -  C  EquipmentFrameOfReferenceDescription
(300A,067C) D       -  C  RadiationGenerationModeLabel
(300A,067D) Z       -  C  RadiationGenerationModeDescription
(300A,0700) U       -  -  TreatmentSessionUID
(300A,0734) D       -  C  TreatmentToleranceViolationDescription
(300A,0736) D       K  -  TreatmentToleranceViolationDateTime
(300A,073A) D       K  -  RecordedRTControlPointDateTime
(300A,0741) D       K  -  InterlockDateTime
(300A,0742) D       -  C  InterlockDescription
(300A,0760) D       K  -  OverrideDateTime
(300A,0783) D       -  C  InterlockOriginDescription
(300C,0113) X       -  C  ReasonForOmissionDescription
(300E,0008) X/Z     -  -  ReviewerName
(3010,0006) U       -  -  ConceptualVolumeUID
(3010,000B) U       -  -  ReferencedConceptualVolumeUID
(3010,000F) Z       -  C  ConceptualVolumeCombinationDescription
(3010,0013) U       -  -  ConstituentConceptualVolumeUID
(3010,0015) U       -  -  SourceConceptualVolumeUID
(3010,0017) Z       -  C  ConceptualVolumeDescription
(3010,001B) Z       -  -  DeviceAlternateIdentifier
(3010,002D) D       -  -  DeviceLabel
(3010,0031) U       -  -  ReferencedFiducialsUID
(3010,0033) D       -  C  UserContentLabel
(3010,0034) D       -  C  UserContentLongLabel
(3010,0035) D       -  C  EntityLabel
(3010,0036) X       -  C  EntityName
(3010,0037) X       -  C  EntityDescription
(3010,0038) D       -  C  EntityLongLabel
(3010,003B) U       -  -  RTTreatmentPhaseUID
(3010,0043) Z       -  -  ManufacturerDeviceIdentifier
(3010,004C) X/D     K  -  IntendedPhaseStartDate
(3010,004D) X/D     K  -  IntendedPhaseEndDate
(3010,0054) D       -  C  RTPrescriptionLabel
(3010,0056) X/D     -  C  RTTreatmentApproachLabel
(3010,005A) Z       -  C  RTPhysicianIntentNarrative
(3010,005C) Z       -  C  ReasonForSuperseding
(3010,0061) X       -  C  PriorTreatmentDoseDescription
(3010,006E) U       -  -  DosimetricObjectiveUID
(3010,006F) U       -  -  ReferencedDosimetricObjectiveUID
(3010,0077) D       -  C  TreatmentSite
(3010,007A) Z       -  C  TreatmentTechniqueNotes
(3010,007B) Z       -  C  PrescriptionNotes
(3010,007F) Z       -  C  FractionationNotes
(3010,0081) Z       -  C  PrescriptionNotesSequence
(4000,0010) X       -  -  Arbitrary
(4000,4000) X       -  -  TextComments
(4008,0042) X       -  -  ResultsIDIssuer
(4008,0102) X       -  -  InterpretationRecorder
(4008,010A) X       -  -  InterpretationTranscriber
(4008,010B) X       -  C  InterpretationText
(4008,010C) X       -  -  InterpretationAuthor
(4008,0111) X       -  -  InterpretationApproverSequence
(4008,0114) X       -  -  PhysicianApprovingInterpretation
(4008,0115) X       -  C  InterpretationDiagnosisDescription
(4008,0118) X       -  -  ResultsDistributionListSequence
(4008,0119) X       -  -  DistributionName
(4008,011A) X       -  -  DistributionAddress
(4008,0202) X       -  -  InterpretationIDIssuer
(4008,0300) X       -  C  Impressions
(4008,4000) X       -  C  ResultsComments
(50xx,xxxx) X       -  -  CurveData
(60xx,3000) X       -  -  OverlayData
(60xx,4000) X       -  -  OverlayComments
(FFFA,FFFA) X       -  -  DigitalSignaturesSequence
(FFFC,FFFC) X       -  -  DataSetTrailingPadding
"""


def _parse(text: str) -> dict[int, ProfileEntry]:
    rows: dict[int, ProfileEntry] = {}
    for line in text.strip().splitlines():
        tag_text, basic, full_dates, clean, keyword = line.split()
        group, element = tag_text.strip("()").replace("xx", "00").split(",")
        tag = int(group, 16) << 16 | int(element, 16)
        resolve(basic)  # every code must be known: fail at import, not mid-export
        rows[tag] = ProfileEntry(
            tag=tag,
            keyword=keyword,
            basic=basic,
            retain_full_dates=None if full_dates == "-" else full_dates,
            clean_descriptors=None if clean == "-" else clean,
        )
    return rows


PROFILE: Mapping[int, ProfileEntry] = MappingProxyType(_parse(_TABLE))
"""Every row of Table E.1-1 except "private attributes" (handled by the de-identifier's safe-list), by tag."""

_CURVE = PROFILE[0x50000000]
_OVERLAY_DATA = PROFILE[0x60003000]
_OVERLAY_COMMENTS = PROFILE[0x60004000]


def lookup(tag: int) -> ProfileEntry | None:
    """The row of Table E.1-1 that covers ``tag``, including the repeating curve and overlay groups."""
    entry = PROFILE.get(tag)
    if entry is not None:
        return entry
    group, element = tag >> 16, tag & 0xFFFF
    if 0x5000 <= group <= 0x50FF and group % 2 == 0:
        return _CURVE
    if 0x6000 <= group <= 0x60FF and group % 2 == 0:
        if element == 0x3000:
            return _OVERLAY_DATA
        if element == 0x4000:
            return _OVERLAY_COMMENTS
    return None
