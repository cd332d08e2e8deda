"""Apply the Basic Application Level Confidentiality Profile (PS3.15 Annex E) to one dataset.

The table (:mod:`runtime.deid.annex_e`) says what happens to each listed attribute, at every level of
nesting. medge adds four rules of its own where the table is silent, each reported with rule
``medge``:

* a Person Name (PN) attribute the table does not list is emptied (Z): a name is identifying
  wherever it appears;
* a date, time or date-time (DA, TM, DT) attribute the table does not list gets a dummy value (D),
  unless dates are retained: the table lists the usual ones, but Instance Creation Date, calibration
  dates and the frame date-times of enhanced objects also date a study;
* an overlay (60xx) or curve (50xx) group is removed whole: the table removes Overlay Data and
  Overlay Comments, and an overlay plane without its data is not valid;
* group length elements are dropped (the writer does not need them and they would be wrong).

UIDs marked U become ``2.25.<integer>``, the integer being the first 128 bits of
HMAC-SHA256(key, "medge-deid-uid/1" + NUL + original UID): the same original UID maps to the same new
one in every file and every run with the same key, so series still group and references inside
sequences (Referenced SOP Instance UID, Frame of Reference UID ...) still resolve. The prefix keeps the
mapping apart from the site key's finding pseudonyms should the same key be used for both. UIDs of
the DICOM root (``1.2.840.10008.*``: well-known frames of reference, SOP classes) are left alone.

Pixel data is not scrubbed. An image that says (BurnedInAnnotation = YES), or probably has, burned-in
text is refused with :class:`~runtime.deid.errors.BurnedInAnnotationError` unless the options allow it,
in which case the report flags it.
"""

from __future__ import annotations

import copy
import hmac
import logging
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from hashlib import sha256
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from runtime.deid.annex_e import Action, ProfileEntry, lookup, resolve
from runtime.deid.descriptors import clean_descriptor
from runtime.deid.errors import BurnedInAnnotationError, DeidError

__all__ = [
    "AttributeAction",
    "AttributeGroup",
    "DeidOptions",
    "DeidReport",
    "DeidResult",
    "Deidentifier",
    "SafePrivateTag",
    "burned_in_reason",
]

logger = logging.getLogger(__name__)

MIN_KEY_BYTES = 16
_UID_DOMAIN = b"medge-deid-uid/1\x00"
_DICOM_ROOT = "1.2.840.10008."
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
# Modalities whose images often carry burned-in text (ultrasound, screen captures, photographs, endoscopy).
BURNED_IN_LIKELY_MODALITIES = frozenset({"US", "SC", "OT", "XC", "ES"})
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_TEXT_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC", "AE"})
_DATE_VRS = frozenset({"DA", "TM", "DT"})
_DUMMY_TEXT = "ANONYMOUS"
_DUMMY = {"DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000D", "DS": "0", "IS": "0"}
_INT_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "AT", "FL", "FD"})
_BYTES_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})
_CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "clean": ("113105", "Clean Descriptors Option"),
}
_METHODS = {
    "basic": "PS3.15 E.1 Basic Application Confidentiality Profile",
    "dates": "Retain Longitudinal Temporal Info Full Dates Option",
    "clean": "Clean Descriptors Option",
}
_PATIENT_KEYWORDS = frozenset(
    {
        "AccessionNumber",
        "StudyID",
        "PlacerOrderNumberImagingServiceRequest",
        "FillerOrderNumberImagingServiceRequest",
        "RequestedProcedureID",
        "PerformedProcedureStepID",
        "ScheduledProcedureStepID",
    }
)
_DEVICE = re.compile(
    r"Device|Station|Serial|Detector|Generator|Gantry|Plate|Cassette|Lens|Machine|Transducer|UDI|"
    r"SourceManufacturer|XRaySource|AETitle|Camera|SourceIdentifier|FlowIdentifier"
)
_STAFF = re.compile(
    r"Physician|Operator|Institution|Address|Telephone|Telecom|Person|Observer|Performer|Organization|"
    r"Author|Reviewer|Creator|Recorder|Transcriber|Approver|Interpreter|Location|Recipient|Custodial|"
    r"Participant|Distribution|Residence|Verbal|Sponsor|Coordinating|Ethics|Requesting|OrderEnter|Site"
)
_DESCRIPTION = re.compile(r"Description|Comments|Label|Text|Notes|Narrative|Impressions|Reason|Diagnos|History")


class AttributeGroup(StrEnum):
    """The families of Table E.1-1 the report counts actions by."""

    PATIENT = "patient identity"
    DATES = "dates and times"
    UIDS = "UIDs"
    STAFF = "institution, addresses, physicians, operators"
    DESCRIPTIONS = "descriptions and free text"
    DEVICE = "device identifiers"
    PRIVATE = "private tags"
    OVERLAYS = "overlays and curves"
    OTHER = "other"


def attribute_group(tag: int, keyword: str, vr: str) -> AttributeGroup:
    """The family an attribute belongs to, for the report (a reporting aid: the table decides the action)."""
    group = tag >> 16
    if group % 2:
        return AttributeGroup.PRIVATE
    if 0x5000 <= group <= 0x60FF:
        return AttributeGroup.OVERLAYS
    if group in (0x0010, 0x0012, 0x0038) or keyword in _PATIENT_KEYWORDS:
        return AttributeGroup.PATIENT
    if vr == "UI":
        return AttributeGroup.UIDS
    if vr in _DATE_VRS or keyword == "TimezoneOffsetFromUTC":
        return AttributeGroup.DATES
    if _DEVICE.search(keyword):
        return AttributeGroup.DEVICE
    if _DESCRIPTION.search(keyword) or keyword in ("ContrastBolusAgent", "ProtocolName", "TreatmentSite"):
        return AttributeGroup.DESCRIPTIONS
    if _STAFF.search(keyword) or vr == "PN":
        return AttributeGroup.STAFF
    return AttributeGroup.OTHER


@dataclass(frozen=True, slots=True)
class SafePrivateTag:
    """A private attribute to keep: its private creator and its element within the creator's block.

    Attributes:
        creator: the Private Creator value (``"SIEMENS CSA HEADER"``), compared without surrounding blanks.
        element: the last two hex digits of the element number (``0x10`` for ``(0029,xx10)``).
        group: the odd group, or ``None`` for any group.
    """

    creator: str
    element: int
    group: int | None = None

    @classmethod
    def parse(cls, text: str) -> SafePrivateTag:
        """Read ``CREATOR:EE`` or ``CREATOR:GGGG,xxEE`` (hex), as given to ``--keep-private``.

        Raises:
            DeidError: the text is not of that form.
        """
        creator, sep, where = text.rpartition(":")
        creator = creator.strip()
        match = re.fullmatch(r"(?:([0-9A-Fa-f]{4}),)?(?:[xX]{2})?([0-9A-Fa-f]{2})", where.strip())
        if not sep or not creator or match is None:
            raise DeidError(f"{text!r} is not CREATOR:EE or CREATOR:GGGG,xxEE (hex)", field="--keep-private")
        group = int(match.group(1), 16) if match.group(1) else None
        if group is not None and group % 2 == 0:
            raise DeidError(f"{text!r}: group {group:04X} is not a private (odd) group", field="--keep-private")
        return cls(creator=creator, element=int(match.group(2), 16), group=group)

    def matches(self, creator: str, group: int, element: int) -> bool:
        """Whether the private element ``(group, xx element)`` of ``creator`` is this one."""
        return (
            creator.strip() == self.creator
            and (element & 0xFF) == self.element
            and (self.group is None or group == self.group)
        )

    def __str__(self) -> str:
        where = f"{self.group:04X},xx{self.element:02X}" if self.group is not None else f"{self.element:02X}"
        return f"{self.creator}:{where}"


class DeidOptions(BaseModel):
    """The profile's options medge implements, and what to do with risky input.

    Attributes:
        retain_dates: the Retain Longitudinal Temporal Information with Full Dates Option (keep dates and times).
        clean_descriptors: the Clean Descriptors Option (keep the imaging words of descriptions; see
            :mod:`runtime.deid.descriptors`).
        allow_burned_in: write images with burned-in annotation anyway (flagged in the report).
        keep_private: private attributes to keep; every other private attribute is removed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    retain_dates: bool = False
    clean_descriptors: bool = False
    allow_burned_in: bool = False
    keep_private: tuple[SafePrivateTag, ...] = ()


@dataclass(frozen=True, slots=True)
class AttributeAction:
    """What was done to one attribute.

    Attributes:
        path: where it was, e.g. ``(0008,1140)[0].(0008,1155)`` for an attribute inside a sequence item.
        keyword: its keyword (empty for private attributes).
        action: the action taken.
        group: its family in the report.
        rule: why: ``table`` (Basic Profile), ``retain dates``, ``clean descriptors``, ``private``,
            ``safe-listed private`` or ``medge`` (the rules this module adds).
    """

    path: str
    keyword: str
    action: Action
    group: AttributeGroup
    rule: str


@dataclass
class DeidReport:
    """What the de-identifier did to one dataset.

    Attributes:
        actions: one entry per attribute acted on (attributes left alone are not listed).
        burned_in: why the image was judged to carry burned-in text, when it was written anyway.
    """

    actions: list[AttributeAction] = field(default_factory=list)
    burned_in: str | None = None

    def by_group(self) -> dict[AttributeGroup, Counter[Action]]:
        """How many attributes of each family got each action."""
        out: dict[AttributeGroup, Counter[Action]] = {}
        for item in self.actions:
            out.setdefault(item.group, Counter())[item.action] += 1
        return out

    def actions_for(self, keyword: str) -> list[Action]:
        """The actions taken on every occurrence of ``keyword`` (top level and nested)."""
        return [item.action for item in self.actions if item.keyword == keyword]


@dataclass(frozen=True, slots=True)
class DeidResult:
    """A de-identified copy of a dataset and the report of what was done."""

    dataset: Dataset
    report: DeidReport


def burned_in_reason(ds: Dataset) -> str | None:
    """Why ``ds`` probably carries identifying text in its pixels, or ``None``.

    An image says so with Burned In Annotation (0028,0301) = YES. When the attribute is missing, a
    secondary capture or an image of a modality where burned-in text is common
    (:data:`BURNED_IN_LIKELY_MODALITIES`: ultrasound, screen captures, photographs, endoscopy) is
    presumed to carry it. Objects without pixel data never do.
    """
    if not any(tag in ds for tag in _PIXEL_TAGS):
        return None
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag == "YES":
        return "BurnedInAnnotation is YES"
    if flag == "NO":
        return None
    modality = str(ds.get("Modality", "") or "").strip().upper()
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if sop_class == _SECONDARY_CAPTURE or sop_class.startswith(_SECONDARY_CAPTURE + "."):
        return "BurnedInAnnotation missing on a secondary capture image, where burned-in text is common"
    if modality in BURNED_IN_LIKELY_MODALITIES:
        return f"BurnedInAnnotation missing on a {modality} image, where burned-in text is common"
    return None


class Deidentifier:
    """De-identifies datasets with one key and one set of options; reuse it for a whole export.

    Args:
        key: the secret the new UIDs derive from (at least 16 bytes). The same key gives the same UIDs,
            so exports made at different times still link up; keep it secret, or the mapping can be
            tested against known UIDs.
        options: the profile's options; the Basic Profile alone by default.

    Raises:
        DeidError: the key is too short.
    """

    def __init__(self, key: bytes, options: DeidOptions | None = None) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise DeidError(f"the de-identification key has {len(key)} bytes, at least {MIN_KEY_BYTES} are needed")
        self._key = bytes(key)
        self.options = options or DeidOptions()
        self._uids: dict[str, str] = {}

    def map_uid(self, uid: str) -> str:
        """The replacement of ``uid`` under this key (DICOM-root and empty UIDs map to themselves)."""
        uid = uid.strip("\x00 ")
        if not uid or uid.startswith(_DICOM_ROOT):
            return uid
        new = self._uids.get(uid)
        if new is None:
            digest = hmac.new(self._key, _UID_DOMAIN + uid.encode("ascii", "replace"), sha256).digest()
            new = f"2.25.{int.from_bytes(digest[:16], 'big')}"
            self._uids[uid] = new
        return new

    def apply(self, ds: Dataset) -> Dataset:
        """A de-identified copy of ``ds`` (``ds`` itself is not changed).

        Raises:
            BurnedInAnnotationError: the image probably has burned-in text and the options do not allow it.
            DeidError: an attribute's value cannot be read.
        """
        return self.deidentify(ds).dataset

    def deidentify(self, ds: Dataset) -> DeidResult:
        """Like :meth:`apply`, with the report of what was done per attribute."""
        reason = burned_in_reason(ds)
        if reason is not None and not self.options.allow_burned_in:
            raise BurnedInAnnotationError(reason)
        out = copy.deepcopy(ds)
        report = DeidReport(burned_in=reason)
        self._walk(out, report, "", dummy=False)
        self._mark(out)
        meta = self._file_meta(out, getattr(ds, "file_meta", None))
        if meta is not None:
            out.file_meta = meta
        if reason is not None:
            logger.warning("writing an image with burned-in annotation (%s) as allowed", reason)
        return DeidResult(dataset=out, report=report)

    # -- the walk ---------------------------------------------------------------------------------

    def _walk(self, ds: Dataset, report: DeidReport, path: str, *, dummy: bool) -> None:
        private = False
        for tag in list(ds.keys()):
            if tag.is_private:
                private = True
                continue
            elem = self._element(ds, tag, path)
            where = f"{path}{_tag_text(tag)}"
            if tag.element == 0:
                del ds[tag]
                continue
            group = tag.group
            if 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:
                entry = lookup(int(tag))
                del ds[tag]
                keyword = elem.keyword or (entry.keyword if entry else "")
                self._record(report, where, tag, keyword, elem.VR, Action.REMOVE, "table" if entry else "medge")
                continue
            entry = lookup(int(tag))
            action, rule = self._decide(entry, elem)
            if dummy and action is Action.KEEP and self._dummy_in_sequence(elem.VR):
                action, rule = Action.DUMMY, "medge"
            self._act(ds, elem, entry, action, rule, report, where, dummy=dummy)
        if private:
            self._private(ds, report, path)

    def _dummy_in_sequence(self, vr: str) -> bool:
        if vr in _DATE_VRS:
            return not self.options.retain_dates
        return vr in _TEXT_VRS

    def _element(self, ds: Dataset, tag: BaseTag, path: str) -> DataElement:
        # Scanners write invalid values (a UID component with a leading zero, "1A" as an IS); the value is
        # about to be replaced or kept as it is, so pydicom's complaints about it are noise here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return ds[tag]
            except Exception as exc:  # pydicom raises many kinds on a value it cannot convert
                raise DeidError(f"cannot read {path}{_tag_text(tag)}: {exc}") from exc

    def _decide(self, entry: ProfileEntry | None, elem: DataElement) -> tuple[Action, str]:
        if entry is not None:
            if self.options.retain_dates and entry.retain_full_dates:
                return resolve(entry.retain_full_dates), "retain dates"
            if self.options.clean_descriptors and entry.clean_descriptors:
                return resolve(entry.clean_descriptors), "clean descriptors"
            return entry.action, "table"
        if elem.VR == "PN":
            return Action.ZERO, "medge"
        if elem.VR in _DATE_VRS:
            return (Action.KEEP, "retain dates") if self.options.retain_dates else (Action.DUMMY, "medge")
        return Action.KEEP, ""

    def _act(
        self,
        ds: Dataset,
        elem: DataElement,
        entry: ProfileEntry | None,
        action: Action,
        rule: str,
        report: DeidReport,
        where: str,
        *,
        dummy: bool,
    ) -> None:
        vr = elem.VR
        if action is Action.CLEAN:
            cleaned = None if vr == "SQ" or vr not in _TEXT_VRS else _map_values(elem.value, clean_descriptor)
            if cleaned is None or not _has_value(cleaned):
                # Nothing safe is left (or it is a coded sequence): do what the Basic Profile does.
                action, rule = (entry.action if entry else Action.REMOVE), "clean descriptors (nothing kept)"
            else:
                elem.value = cleaned
        if action is Action.KEEP:
            if vr == "SQ":
                self._items(elem, report, where, dummy=dummy)
            if rule:
                self._record(report, where, elem.tag, elem.keyword, vr, action, rule)
            return
        if action is Action.REMOVE:
            del ds[elem.tag]
        elif action is Action.ZERO:
            elem.value = Sequence() if vr == "SQ" else empty_value_for_VR(vr)
        elif action is Action.DUMMY:
            if vr == "SQ":
                # A dummy sequence keeps its items' structure; every text and date inside becomes a dummy.
                self._items(elem, report, where, dummy=True)
            elif vr == "UI":
                elem.value = _map_values(elem.value, self.map_uid)
            else:
                elem.value = _dummy_value(vr)
        elif action is Action.UID:
            if vr == "SQ":
                self._items(elem, report, where, dummy=dummy)
            elif vr == "UI":
                elem.value = _map_values(elem.value, self.map_uid)
            else:
                elem.value = _dummy_value(vr)
        self._record(report, where, elem.tag, elem.keyword or (entry.keyword if entry else ""), vr, action, rule)

    def _items(self, elem: DataElement, report: DeidReport, where: str, *, dummy: bool) -> None:
        for index, item in enumerate(elem.value or ()):
            self._walk(item, report, f"{where}[{index}].", dummy=dummy)

    def _private(self, ds: Dataset, report: DeidReport, path: str) -> None:
        creators = {
            (tag.group, tag.element): str(ds[tag].value or "").strip()
            for tag in list(ds.keys())
            if tag.is_private and 0x10 <= tag.element <= 0xFF
        }
        kept_blocks: set[tuple[int, int]] = set()
        for tag in list(ds.keys()):
            if not tag.is_private or 0x10 <= tag.element <= 0xFF:
                continue
            where = f"{path}{_tag_text(tag)}"
            creator = creators.get((tag.group, tag.element >> 8)) if tag.element > 0xFF else None
            if creator is not None and any(
                rule.matches(creator, tag.group, tag.element) for rule in self.options.keep_private
            ):
                kept_blocks.add((tag.group, tag.element >> 8))
                elem = ds[tag]
                if elem.VR == "SQ":
                    self._items(elem, report, where, dummy=False)
                self._record(report, where, tag, "", elem.VR, Action.KEEP, "safe-listed private")
                continue
            del ds[tag]
            self._record(report, where, tag, "", "", Action.REMOVE, "private")
        for group, block in creators:
            if (group, block) not in kept_blocks:
                del ds[Tag(group, block)]
                self._record(
                    report,
                    f"{path}{_tag_text(Tag(group, block))}",
                    Tag(group, block),
                    "",
                    "LO",
                    Action.REMOVE,
                    "private",
                )

    @staticmethod
    def _record(report: DeidReport, where: str, tag: BaseTag, keyword: str, vr: str, action: Action, rule: str) -> None:
        report.actions.append(
            AttributeAction(
                path=where, keyword=keyword, action=action, group=attribute_group(int(tag), keyword, vr), rule=rule
            )
        )

    # -- markers and file meta --------------------------------------------------------------------

    def _mark(self, ds: Dataset) -> None:
        used = ["basic"]
        if self.options.retain_dates:
            used.append("dates")
        if self.options.clean_descriptors:
            used.append("clean")
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = [_METHODS[name] for name in used]
        codes = []
        for name in used:
            item = Dataset()
            item.CodeValue, item.CodeMeaning = _CODES[name]
            item.CodingSchemeDesignator = "DCM"
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(codes)
        ds.LongitudinalTemporalInformationModified = "UNMODIFIED" if self.options.retain_dates else "REMOVED"

    @staticmethod
    def _file_meta(ds: Dataset, original: FileMetaDataset | None) -> FileMetaDataset | None:
        if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
            return None
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(str(ds.SOPClassUID))
        meta.MediaStorageSOPInstanceUID = UID(str(ds.SOPInstanceUID))
        syntax = getattr(original, "TransferSyntaxUID", None) if original is not None else None
        meta.TransferSyntaxUID = UID(str(syntax)) if syntax else ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "MEDGE_DEID"
        return meta


def _tag_text(tag: BaseTag) -> str:
    return f"({tag.group:04X},{tag.element:04X})"


def _map_values(value: Any, fn: Any) -> Any:
    if value is None or value == "":
        return value
    if isinstance(value, str | bytes):
        return fn(value.decode("ascii", "replace") if isinstance(value, bytes) else value)
    return [fn(str(item)) for item in value]


def _has_value(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value)
    return any(bool(item) for item in value)


def _dummy_value(vr: str) -> Any:
    if vr in _TEXT_VRS or vr == "CS":
        return _DUMMY_TEXT
    if vr in _DUMMY:
        return _DUMMY[vr]
    if vr == "UR":
        return "urn:anonymous"
    if vr in _BYTES_VRS:
        return b"\x00\x00"
    if vr in _INT_VRS or vr.startswith(("US", "SS")):
        return 0
    return _DUMMY_TEXT
