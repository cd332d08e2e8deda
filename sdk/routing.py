"""Which package(s) analyse a series or an instance: selection and routing rules.

Rules come from the appliance config (``[[routing.rules]]``) or from MONAI
Deploy's series-selector JSON (:func:`load_monai_selector`), and both become
the same :class:`RoutingRule`, so existing MONAI apps move over with their
rules. Several packages can be live; a subject goes to every package with a
matching rule, in rule order.

A native rule::

    [[routing.rules]]
    package = "chest-ct-nodule"
    unit = "series"                      # or "instance" (the default)
    modality = ["CT"]                    # any of, case-insensitive
    body_part = ["CHEST"]                # any of, case-insensitive
    series_description = "lung|chest"    # regex search, case-insensitive
    min_slices = 20                      # frames of the series (or of the instance)
    max_slices = 2000
    orientation = "axial"                # axial/coronal/sagittal/oblique, or a list
    [routing.rules.conditions]           # MONAI-style conditions on any DICOM keyword
    ImageType = ["ORIGINAL", "!LOCALIZER"]
    SliceThickness = [0.5, 5]

MONAI condition semantics (as in the App SDK's ``DICOMSeriesSelectorOperator``):
a condition whose value is empty, 0 or null is ignored; a missing attribute
never matches; a string attribute matches a string condition if equal
ignoring case, else if the condition, as a regex, is found in it ignoring
case; a numeric attribute matches ``[min, max]`` inclusively, ``[value, op]``
with op one of ``> >= < <= !=``, a regex on its text (full match) or an equal
number; a multi-valued attribute (``ImageType``) must contain every listed
value and none of those written ``!VALUE``; ``ImageOrientationPatient``
matches ``Axial``/``Coronal``/``Sagittal`` by the slice normal's dominant axis.

Where medge differs from MONAI, on purpose:

* Rules are evaluated per series (or instance) as it completes, and every
  matching selection routes: MONAI's first-match-per-study default and
  ``sort_by_sop_instance_count`` have no equivalent (``all_matched=True``).
* Multi-valued attributes are matched value by value, ignoring case; MONAI
  looks for each term as a substring of the list's text, so ``"PRIMARY"``
  would also match ``"PRIMARY_RECON"`` there and does not here.
* ``ImageOrientationPatient`` does not require ``PatientPosition`` (patient
  coordinates do not depend on it; MONAI refuses to match without it).
* A numeric attribute equal to 0 is a value, not a missing attribute.
* A string attribute that reads as a number (a DS/IS read as text) is
  compared numerically against a numeric condition; MONAI fails there.
* Rules are checked when loaded: unknown DICOM keywords, invalid regexes,
  unknown operators or orientations are refused with the field named,
  instead of failing or never matching at run time.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydicom.datadict import keyword_dict

from sdk.config_files import config_error_from_validation
from sdk.errors import ConfigError

__all__ = [
    "DEFAULT_KEYWORDS",
    "ConditionValue",
    "MonaiSelectorSource",
    "Orientation",
    "Router",
    "RoutingRule",
    "RoutingSection",
    "RoutingSubject",
    "Unit",
    "build_router",
    "classify_orientation",
    "dicom_attributes",
    "image_geometry",
    "load_monai_selector",
    "slice_normal",
]

log = logging.getLogger(__name__)

Unit = Literal["instance", "series"]
Orientation = Literal["axial", "coronal", "sagittal", "oblique"]
ConditionValue = str | int | float | bool | list[str | int | float] | None

DEFAULT_KEYWORDS: tuple[str, ...] = (
    "Modality",
    "BodyPartExamined",
    "SeriesDescription",
    "StudyDescription",
    "ProtocolName",
    "SeriesNumber",
    "ImageType",
    "SOPClassUID",
    "Manufacturer",
    "ManufacturerModelName",
    "StationName",
    "SliceThickness",
    "SpacingBetweenSlices",
    "PixelSpacing",
    "ImageOrientationPatient",
    "PatientPosition",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "PhotometricInterpretation",
    "BitsStored",
    "ConvolutionKernel",
    "KVP",
    "ContrastBolusAgent",
    "ScanningSequence",
    "SequenceName",
    "MagneticFieldStrength",
    "Laterality",
    "ImageLaterality",
    "ViewPosition",
)
"""The attributes kept for routing besides those the rules name (never patient names or pixels)."""

_OPERATORS = (">", ">=", "<", "<=", "!=")
_AXES = ("sagittal", "coronal", "axial")  # the patient axis (x, y, z) a slice normal runs along
_ORIENTATION_KEY = "ImageOrientationPatient"


# -- geometry ------------------------------------------------------------------------------------------------------


def slice_normal(orientation: Sequence[float] | None) -> tuple[float, float, float] | None:
    """The unit slice normal (row cosines cross column cosines) of an ImageOrientationPatient; None if unusable."""
    if orientation is None or len(orientation) != 6:
        return None
    try:
        r = [float(v) for v in orientation[:3]]
        c = [float(v) for v in orientation[3:]]
    except (TypeError, ValueError):
        return None
    n = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    norm = math.sqrt(sum(v * v for v in n))
    if not math.isfinite(norm) or norm < 1e-6:
        return None
    return (n[0] / norm, n[1] / norm, n[2] / norm)


def _dominant_axis(orientation: Sequence[float] | None) -> tuple[str, float] | None:
    normal = slice_normal(orientation)
    if normal is None:
        return None
    magnitudes = [abs(v) for v in normal]
    axis = max(range(3), key=lambda i: magnitudes[i])
    return _AXES[axis], magnitudes[axis]


def classify_orientation(
    orientation: Sequence[float] | None, *, oblique_tolerance_deg: float = 15.0
) -> Orientation | None:
    """Axial, coronal or sagittal by the slice normal's dominant axis; oblique if it is further than the tolerance.

    Returns None when the orientation is missing or degenerate (projection
    radiographs have none).
    """
    dominant = _dominant_axis(orientation)
    if dominant is None:
        return None
    axis, cosine = dominant
    if cosine < math.cos(math.radians(oblique_tolerance_deg)):
        return "oblique"
    return axis  # type: ignore[return-value]


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    if value is None or isinstance(value, str | bytes):
        return None
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count and all(math.isfinite(v) for v in numbers) else None


def image_geometry(ds: Any) -> tuple[tuple[float, float, float] | None, tuple[float, ...] | None]:
    """ImagePositionPatient and ImageOrientationPatient of a dataset (of its first frame when multi-frame).

    Enhanced multi-frame objects keep them in the functional groups; the
    shared group is read for the orientation, the first per-frame group for
    the position.
    """
    position = _floats(ds.get("ImagePositionPatient"), 3)
    orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    for group_keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(group_keyword)
        if not groups:
            continue
        group = groups[0]
        if orientation is None and group.get("PlaneOrientationSequence"):
            orientation = _floats(group.PlaneOrientationSequence[0].get("ImageOrientationPatient"), 6)
        if position is None and group.get("PlanePositionSequence"):
            position = _floats(group.PlanePositionSequence[0].get("ImagePositionPatient"), 3)
    return position, orientation  # type: ignore[return-value]


def _plain(value: Any) -> Any:
    """A DICOM value as JSON (str, int, float, list); None for what routing must not keep (bytes, names, sequences)."""
    if value is None or isinstance(value, bytes | bytearray):
        return None
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Sequence):
        items = [_plain(item) for item in value]
        return None if any(item is None for item in items) else items
    return None  # PersonName, Dataset and anything else that is not a plain value


def dicom_attributes(ds: Any, keywords: Iterable[str] = ()) -> dict[str, Any]:
    """The routing attributes of a dataset: :data:`DEFAULT_KEYWORDS` plus ``keywords``, as plain JSON values.

    Missing or empty attributes are left out. ``ImageOrientationPatient``
    and ``SOPClassUID`` are filled from the functional groups and the file
    meta when the dataset itself lacks them.
    """
    attributes: dict[str, Any] = {}
    for keyword in dict.fromkeys((*DEFAULT_KEYWORDS, *keywords)):
        try:
            value = _plain(ds.get(keyword))
        except Exception as exc:  # a malformed element must not stop routing on the others
            log.debug("attribute %s unreadable: %s", keyword, exc)
            continue
        if value not in (None, "", []):
            attributes[keyword] = value
    if _ORIENTATION_KEY not in attributes:
        _, orientation = image_geometry(ds)
        if orientation is not None:
            attributes[_ORIENTATION_KEY] = list(orientation)
    if "SOPClassUID" not in attributes:
        meta = getattr(ds, "file_meta", None)
        sop_class = meta.get("MediaStorageSOPClassUID") if meta is not None else None
        if sop_class:
            attributes["SOPClassUID"] = str(sop_class)
    return attributes


# -- subjects and rules --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoutingSubject:
    """What is routed: an instance or a complete series, by its DICOM attributes.

    Attributes:
        unit: ``instance`` or ``series``; a rule only routes its own unit.
        attributes: DICOM keyword → plain value (str, int, float, list).
        slice_count: frames in the series (or in the instance).
    """

    unit: Unit
    attributes: Mapping[str, Any] = field(default_factory=dict)
    slice_count: int = 1

    @classmethod
    def from_dataset(cls, ds: Any, *, keywords: Iterable[str] = ()) -> RoutingSubject:
        """An instance as a routing subject (its frame count is its slice count)."""
        frames = _plain(ds.get("NumberOfFrames"))
        try:
            count = max(1, int(frames)) if frames not in (None, "") else 1
        except (TypeError, ValueError):
            count = 1
        return cls("instance", dicom_attributes(ds, keywords), count)


def _regex(value: str, what: str) -> str:
    try:
        re.compile(value, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"{what} is not a valid regular expression: {exc}") from exc
    return value


def _check_condition(keyword: str, value: ConditionValue) -> None:
    if keyword not in keyword_dict:
        raise ValueError(f"{keyword!r} is not a DICOM attribute keyword")
    if isinstance(value, bool):
        raise ValueError(f"condition {keyword!r}: true/false is not a condition value")
    if not value:
        return  # ignored, as MONAI does
    if keyword == _ORIENTATION_KEY:
        if not isinstance(value, str) or value.strip().lower() not in _AXES:
            raise ValueError(f"condition {keyword!r} must be 'Axial', 'Coronal' or 'Sagittal', got {value!r}")
        return
    if isinstance(value, str):
        _regex(value, f"condition {keyword!r}")
        return
    if isinstance(value, list) and len(value) == 2 and isinstance(value[1], str) and value[1] in _OPERATORS:
        try:
            float(value[0])
        except (TypeError, ValueError):
            raise ValueError(f"condition {keyword!r}: {value[1]!r} needs a number before it") from None
        return
    if isinstance(value, list) and len(value) == 2 and _is_number(value[0]) and isinstance(value[1], str):
        raise ValueError(f"condition {keyword!r}: unknown operator {value[1]!r} (use one of {', '.join(_OPERATORS)})")
    if isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value):
        low, high = float(value[0]), float(value[1])
        if low > high:
            raise ValueError(f"condition {keyword!r}: range [{value[0]}, {value[1]}] is empty")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number_text(value: float) -> str:
    # DS/IS values are kept as numbers; write whole ones without ".0" so a regex sees "5", as in the DICOM file.
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _match_numeric(expected: Any, actual: float) -> bool:
    if isinstance(expected, list) and len(expected) == 2:
        if isinstance(expected[1], str) and expected[1] in _OPERATORS:
            bound = float(expected[0])
            return {
                ">": actual > bound,
                ">=": actual >= bound,
                "<": actual < bound,
                "<=": actual <= bound,
                "!=": actual != bound,
            }[expected[1]]
        if _is_number(expected[0]) and _is_number(expected[1]):
            return float(expected[0]) <= actual <= float(expected[1])
        return False
    if isinstance(expected, str):
        return re.fullmatch(expected, _number_text(actual)) is not None
    if _is_number(expected):
        return float(expected) == actual
    return False


def _match_values(expected: ConditionValue, actual: Sequence[Any]) -> bool:
    values = {str(v).lower() for v in actual}
    terms = [str(v).lower() for v in (expected if isinstance(expected, list) else [expected])]
    return all(t[1:] not in values if t.startswith("!") else t in values for t in terms)


def _match_condition(keyword: str, expected: ConditionValue, actual: Any) -> bool:
    """MONAI's matching of one condition (see the module docstring for where it differs)."""
    if not expected:
        return True
    if actual is None or actual == "" or actual == []:
        return False
    if keyword == _ORIENTATION_KEY:
        dominant = _dominant_axis(actual if isinstance(actual, list | tuple) else None)
        return dominant is not None and dominant[0] == str(expected).strip().lower()
    if _is_number(actual):
        return _match_numeric(expected, actual)
    if isinstance(actual, str):
        if isinstance(expected, str):
            return actual.casefold() == expected.casefold() or re.search(expected, actual, re.IGNORECASE) is not None
        try:
            return _match_numeric(expected, float(actual))
        except ValueError:
            return _match_values(expected, [actual])  # a multi-valued attribute that holds one value
    if isinstance(actual, list | tuple):
        return _match_values(expected, actual)
    return False


class RoutingRule(BaseModel):
    """One selection rule: every field given must match; the subject then goes to ``package``.

    Raises:
        ValidationError: (as :class:`~sdk.errors.ConfigError` through the
            loaders) a bad regex, keyword, operator, orientation or range.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    package: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=64)
    name: str = Field(default="", description="a label for logs (a MONAI selection's name)")
    unit: Unit = "instance"
    modality: list[str] | None = None
    body_part: list[str] | None = None
    series_description: str | None = None
    min_slices: int | None = Field(default=None, ge=1)
    max_slices: int | None = Field(default=None, ge=1)
    orientation: list[Orientation] | None = None
    oblique_tolerance_deg: float = Field(default=15.0, gt=0, lt=45)
    conditions: dict[str, ConditionValue] = {}

    @field_validator("modality", "body_part", "orientation", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("modality", "body_part")
    @classmethod
    def _upper(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("list is empty: leave the field out to accept any value")
        return None if value is None else [v.strip().upper() for v in value]

    @field_validator("series_description")
    @classmethod
    def _description_regex(cls, value: str | None) -> str | None:
        return None if value is None else _regex(value, "series_description")

    @field_validator("conditions")
    @classmethod
    def _valid_conditions(cls, value: dict[str, ConditionValue]) -> dict[str, ConditionValue]:
        for keyword, expected in value.items():
            _check_condition(keyword, expected)
        return value

    @model_validator(mode="after")
    def _slice_range(self) -> RoutingRule:
        if self.min_slices is not None and self.max_slices is not None and self.min_slices > self.max_slices:
            raise ValueError(f"min_slices {self.min_slices} is above max_slices {self.max_slices}")
        return self

    @property
    def keywords(self) -> frozenset[str]:
        """The DICOM attributes this rule reads."""
        return frozenset(self.conditions)

    def mismatch(self, subject: RoutingSubject) -> str | None:
        """Why the subject does not match this rule, or None if it does (for logs and ``explain``)."""
        attrs = subject.attributes
        if subject.unit != self.unit:
            return f"rule is for a {self.unit}, not a {subject.unit}"
        if self.modality is not None and str(attrs.get("Modality", "")).upper() not in self.modality:
            return f"modality {attrs.get('Modality')!r} not in {self.modality}"
        if self.body_part is not None and str(attrs.get("BodyPartExamined", "")).upper() not in self.body_part:
            return f"body part {attrs.get('BodyPartExamined')!r} not in {self.body_part}"
        if self.series_description is not None:
            description = str(attrs.get("SeriesDescription", ""))
            if re.search(self.series_description, description, re.IGNORECASE) is None:
                return f"series description {description!r} does not match {self.series_description!r}"
        if self.min_slices is not None and subject.slice_count < self.min_slices:
            return f"{subject.slice_count} slices, fewer than {self.min_slices}"
        if self.max_slices is not None and subject.slice_count > self.max_slices:
            return f"{subject.slice_count} slices, more than {self.max_slices}"
        if self.orientation is not None:
            iop = attrs.get(_ORIENTATION_KEY)
            found = classify_orientation(
                iop if isinstance(iop, list | tuple) else None, oblique_tolerance_deg=self.oblique_tolerance_deg
            )
            if found not in self.orientation:
                return f"orientation {found} not in {self.orientation}"
        for keyword, expected in self.conditions.items():
            if not _match_condition(keyword, expected, attrs.get(keyword)):
                return f"{keyword} {attrs.get(keyword)!r} does not match {expected!r}"
        return None

    def matches(self, subject: RoutingSubject) -> bool:
        """Whether the subject goes to this rule's package."""
        return self.mismatch(subject) is None


class Router:
    """Sends each subject to the packages whose rules it matches.

    Args:
        rules: in priority order; a package named by several matching rules
            appears once, at its first rule's place.
    """

    def __init__(self, rules: Iterable[RoutingRule]) -> None:
        self._rules = tuple(rules)

    @property
    def rules(self) -> tuple[RoutingRule, ...]:
        return self._rules

    @property
    def packages(self) -> list[str]:
        """Every package a rule names, in rule order."""
        return list(dict.fromkeys(rule.package for rule in self._rules))

    @property
    def units(self) -> frozenset[Unit]:
        """The units rules route: whether the runtime must wait for complete series, route instances, or both."""
        return frozenset(rule.unit for rule in self._rules)

    @property
    def keywords(self) -> tuple[str, ...]:
        """The attributes to collect from datasets: the defaults plus whatever a rule's conditions name."""
        extra = sorted(set().union(*(rule.keywords for rule in self._rules)) - set(DEFAULT_KEYWORDS))
        return (*DEFAULT_KEYWORDS, *extra)

    def route(self, subject: RoutingSubject, *, live: Collection[str] | None = None) -> list[str]:
        """The packages that should analyse ``subject`` (only those in ``live``, if given); may be empty."""
        chosen: list[str] = []
        for rule in self._rules:
            if rule.package in chosen or (live is not None and rule.package not in live):
                continue
            reason = rule.mismatch(subject)
            if reason is None:
                chosen.append(rule.package)
            else:
                log.debug("rule %s → %s: no match (%s)", rule.name or "#", rule.package, reason)
        return chosen

    def explain(self, subject: RoutingSubject) -> list[tuple[RoutingRule, str | None]]:
        """Every rule with the reason it does not match (None where it does), for a field tech's "why not?"."""
        return [(rule, rule.mismatch(subject)) for rule in self._rules]


# -- loading -------------------------------------------------------------------------------------------------------


def load_monai_selector(
    rules: str | bytes | Mapping[str, Any],
    *,
    package: str,
    unit: Unit = "series",
    source: str | Path | None = None,
) -> list[RoutingRule]:
    """Turn MONAI Deploy series-selector rules (JSON text or the parsed object) into routing rules for ``package``.

    Each selection with conditions becomes one rule named after it; a
    selection without conditions is skipped, as MONAI does.

    Raises:
        ConfigError: not JSON, no ``selections``, or a condition is invalid
            (names ``source`` and the field, e.g. ``selections.2.conditions``).
    """
    if isinstance(rules, str | bytes):
        try:
            data = json.loads(rules)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"MONAI selection rules are not valid JSON: {exc}", path=source) from exc
    else:
        data = rules
    if not isinstance(data, Mapping):
        raise ConfigError("MONAI selection rules must be a JSON object", path=source)
    selections = data.get("selections")
    if not selections or not isinstance(selections, list):
        raise ConfigError("expected a non-empty list of selections", path=source, field="selections")
    out: list[RoutingRule] = []
    for index, selection in enumerate(selections):
        where = f"selections.{index}"
        if not isinstance(selection, Mapping):
            raise ConfigError("a selection must be an object", path=source, field=where)
        name = str(selection.get("name", "")).strip()
        conditions = selection.get("conditions")
        if not conditions:
            log.warning("MONAI selection %r has no conditions: skipped, as MONAI does", name or where)
            continue
        if not isinstance(conditions, Mapping):
            raise ConfigError("conditions must be an object", path=source, field=f"{where}.conditions")
        try:
            out.append(RoutingRule(package=package, name=name, unit=unit, conditions=dict(conditions)))
        except ValidationError as exc:
            error: ConfigError = config_error_from_validation(exc, source)
            error.field = f"{where}.{error.field}" if error.field else where
            raise error from exc
    return out


class MonaiSelectorSource(BaseModel):
    """A MONAI selector JSON file routing to one package (``[[routing.monai]]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    package: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=64)
    file: Path
    unit: Unit = "series"


class RoutingSection(BaseModel):
    """The ``[routing]`` section of ``appliance.toml``: native rules first, then MONAI selector files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[RoutingRule] = []
    monai: list[MonaiSelectorSource] = []


def build_router(section: RoutingSection, *, base_dir: str | Path | None = None) -> Router:
    """A router from the config section, reading MONAI files relative to ``base_dir``.

    Raises:
        ConfigError: a MONAI file is missing, unreadable or invalid.
    """
    rules = list(section.rules)
    for source in section.monai:
        path = source.file if base_dir is None or source.file.is_absolute() else Path(base_dir) / source.file
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read MONAI selection rules: {exc}", path=path) from exc
        rules.extend(load_monai_selector(text, package=source.package, unit=source.unit, source=path))
    return Router(rules)
