"""Routing rules: native TOML rules field by field, MONAI series-selector JSON, orientation, several live packages."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pydicom
import pytest
from pydantic import BaseModel, ConfigDict
from pydicom.data import get_testdata_file

from sdk.config_files import load_toml_model
from sdk.errors import ConfigError
from sdk.routing import (
    MonaiSelectorSource,
    Router,
    RoutingRule,
    RoutingSection,
    RoutingSubject,
    build_router,
    classify_orientation,
    dicom_attributes,
    load_monai_selector,
)

AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
CORONAL = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
SAGITTAL = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]


def tilted(degrees: float) -> list[float]:
    """An axial plane tilted about the x axis (a gantry tilt)."""
    a = math.radians(degrees)
    return [1.0, 0.0, 0.0, 0.0, math.cos(a), math.sin(a)]


def chest_ct(**overrides: object) -> dict[str, object]:
    attributes: dict[str, object] = {
        "Modality": "CT",
        "BodyPartExamined": "CHEST",
        "SeriesDescription": "Thorax 1.0 Lung",
        "StudyDescription": "CT Chest w/o contrast",
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "SliceThickness": 1.0,
        "ImageOrientationPatient": AXIAL,
        "PatientPosition": "HFS",
    }
    attributes.update(overrides)
    return attributes


def series(slices: int = 120, **overrides: object) -> RoutingSubject:
    return RoutingSubject("series", chest_ct(**overrides), slices)


class ApplianceFile(BaseModel):
    """The part of appliance.toml this module owns."""

    model_config = ConfigDict(extra="ignore")
    routing: RoutingSection


def test_native_rule_from_toml_matches_field_by_field(tmp_path: Path) -> None:
    toml = tmp_path / "appliance.toml"
    toml.write_text(
        """
[[routing.rules]]
package = "chest-ct-nodule"
unit = "series"
modality = ["CT"]
body_part = ["CHEST"]
series_description = "(?i)lung|chest"
min_slices = 20
max_slices = 2000
orientation = "axial"
[routing.rules.conditions]
ImageType = ["ORIGINAL", "!LOCALIZER"]
"""
    )
    router = build_router(load_toml_model(toml, ApplianceFile, "appliance config").routing)
    (rule,) = router.rules
    assert router.route(series()) == ["chest-ct-nodule"]
    mismatches = {
        "modality": series(Modality="MR"),
        "body part": series(BodyPartExamined="ABDOMEN"),
        "series description": series(SeriesDescription="Abdomen soft tissue"),
        "fewer than 20": series(slices=5),
        "more than 2000": series(slices=2500),
        "orientation coronal": series(ImageOrientationPatient=CORONAL),
        "ImageType": series(ImageType=["DERIVED", "SECONDARY", "LOCALIZER"]),
        "rule is for a series": RoutingSubject("instance", chest_ct(), 1),
    }
    for reason, subject in mismatches.items():
        assert router.route(subject) == []
        assert reason in rule.mismatch(subject), reason
    assert router.route(series(Modality="ct", BodyPartExamined="chest", SeriesDescription="LUNG window")) == [
        "chest-ct-nodule"
    ]
    assert router.route(series(slices=20)) == router.route(series(slices=2000)) == ["chest-ct-nodule"]
    assert router.route(series(BodyPartExamined=None)) == []  # missing is not a match


def test_bad_native_rules_name_file_and_field(tmp_path: Path) -> None:
    cases = {
        'series_description = "(unclosed"': "routing.rules.0.series_description",
        "min_slices = 50\nmax_slices = 10": "routing.rules.0",
        'orientation = "diagonal"': "routing.rules.0.orientation.0",
        'unit = "study"': "routing.rules.0.unit",
        "modality = []": "routing.rules.0.modality",
        "[routing.rules.conditions]\nSliceThicknes = [1, 5]": "routing.rules.0.conditions",
        '[routing.rules.conditions]\nSliceThickness = [2, "=>"]': "routing.rules.0.conditions",
        "[routing.rules.conditions]\nSliceThickness = [5, 1]": "routing.rules.0.conditions",
    }
    for body, field in cases.items():
        toml = tmp_path / "appliance.toml"
        toml.write_text(f'[[routing.rules]]\npackage = "p"\n{body}\n')
        with pytest.raises(ConfigError) as info:
            load_toml_model(toml, ApplianceFile, "appliance config")
        assert info.value.path == toml
        assert info.value.field == field, body


@pytest.mark.parametrize(
    ("orientation", "expected"),
    [
        (AXIAL, "axial"),
        (CORONAL, "coronal"),
        (SAGITTAL, "sagittal"),
        (tilted(10), "axial"),
        (tilted(30), "oblique"),
        ([0.0, 0.0, 0.0, 0.0, 0.0, 0.0], None),
        (None, None),
    ],
)
def test_orientation_classification(orientation: list[float] | None, expected: str | None) -> None:
    assert classify_orientation(orientation) == expected


def test_oblique_tolerance_is_per_rule() -> None:
    strict = RoutingRule(package="a", unit="series", orientation="axial", oblique_tolerance_deg=5)
    lenient = RoutingRule(package="b", unit="series", orientation=["axial"], oblique_tolerance_deg=35)
    oblique = RoutingRule(package="c", unit="series", orientation="oblique")
    router = Router([strict, lenient, oblique])
    assert router.route(series(ImageOrientationPatient=tilted(30))) == ["b", "c"]
    assert router.route(series(ImageOrientationPatient=AXIAL)) == ["a", "b"]
    assert router.route(RoutingSubject("series", {"Modality": "CR"}, 1)) == []  # no orientation at all


MONAI_SAMPLE = {
    "selections": [
        {
            "name": "CT Series 1",
            "conditions": {
                "StudyDescription": "(?i)^Spleen",
                "Modality": "(?i)CT",
                "SeriesDescription": "(?i)^No series description|(.*?)",
            },
        },
        {
            "name": "CT Series 3",
            "conditions": {
                "StudyDescription": "(.*?)",
                "Modality": "(?i)CT",
                "ImageType": ["PRIMARY", "ORIGINAL", "AXIAL"],
                "SliceThickness": [3, 5],
            },
        },
        {
            "name": "CT Series 4",
            "conditions": {
                "StudyDescription": "(.*?)",
                "Modality": "(?i)MR",
                "ImageOrientationPatient": "Axial",
                "SliceThickness": [2, ">"],
            },
        },
        {
            "name": "CT Series 5",
            "conditions": {"StudyDescription": "(.*?)", "Modality": "(?i)CT", "ImageType": ["PRIMARY", "!SECONDARY"]},
        },
        {"name": "no conditions: skipped", "conditions": {}},
    ]
}


def selection(name: str) -> RoutingRule:
    rules = {rule.name: rule for rule in load_monai_selector(json.dumps(MONAI_SAMPLE), package="spleen-seg")}
    assert "no conditions: skipped" not in rules
    return rules[name]


def test_monai_selector_regex_is_a_case_insensitive_search() -> None:
    rule = selection("CT Series 1")
    assert (rule.package, rule.unit) == ("spleen-seg", "series")
    assert rule.matches(series(StudyDescription="spleen CT"))
    assert not rule.matches(series(StudyDescription="Liver and spleen"))  # ^ anchors
    assert not rule.matches(series(StudyDescription="Spleen", Modality="MR"))
    assert not rule.matches(series(StudyDescription=None))  # a missing attribute never matches
    # Equality ignoring case is tried before the regex (a literal with regex metacharacters).
    literal = load_monai_selector({"selections": [{"conditions": {"SeriesDescription": "Lung (1mm)"}}]}, package="x")
    assert literal[0].matches(series(SeriesDescription="LUNG (1MM)"))


def test_monai_selector_numeric_range_and_relational() -> None:
    rule = selection("CT Series 3")
    assert rule.matches(series(SliceThickness=3))
    assert rule.matches(series(SliceThickness=5.0))
    assert not rule.matches(series(SliceThickness=5.5))
    assert not rule.matches(series(SliceThickness=1.0))
    assert rule.matches(series(SliceThickness="4.0"))  # a DS read as text is compared as a number

    mr = selection("CT Series 4")
    assert mr.matches(series(Modality="MR", SliceThickness=2.5))
    assert not mr.matches(series(Modality="MR", SliceThickness=2))
    assert not mr.matches(series(Modality="MR", SliceThickness=3, ImageOrientationPatient=SAGITTAL))
    assert mr.matches(series(Modality="MR", SliceThickness=3, ImageOrientationPatient=tilted(40)))  # dominant axis
    assert mr.matches(series(Modality="MR", SliceThickness=3, PatientPosition=None))  # MONAI would refuse here

    others = load_monai_selector(
        {
            "selections": [
                {"name": "regex", "conditions": {"SeriesNumber": "[1-3]"}},
                {"name": "exact", "conditions": {"SeriesNumber": 7}},
                {"name": "not", "conditions": {"SliceThickness": [1, "!="]}},
                {"name": "ignored", "conditions": {"SeriesNumber": 0, "Modality": "CT"}},
            ]
        },
        package="x",
        unit="instance",
    )
    regex, exact, differs, ignored = others
    instance = RoutingSubject("instance", chest_ct(SeriesNumber=2), 1)
    assert regex.matches(instance) and not exact.matches(instance)
    assert not regex.matches(RoutingSubject("instance", chest_ct(SeriesNumber=12), 1))  # a full match
    assert exact.matches(RoutingSubject("instance", chest_ct(SeriesNumber=7), 1))
    assert not differs.matches(instance)
    assert differs.matches(RoutingSubject("instance", chest_ct(SliceThickness=1.25), 1))
    assert ignored.matches(RoutingSubject("instance", chest_ct(SeriesNumber=12), 1))  # 0 means "no condition"


def test_monai_selector_sets_include_and_exclude() -> None:
    include = selection("CT Series 3")
    assert include.matches(series(SliceThickness=3, ImageType=["original", "primary", "axial", "helix"]))
    assert not include.matches(series(SliceThickness=3, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    assert not include.matches(series(SliceThickness=3, ImageType=["ORIGINAL", "PRIMARY_RECON", "AXIAL"]))
    exclude = selection("CT Series 5")
    assert exclude.matches(series(ImageType=["ORIGINAL", "PRIMARY", "AXIAL"]))
    assert not exclude.matches(series(ImageType=["DERIVED", "PRIMARY", "SECONDARY"]))
    assert exclude.matches(series(ImageType="PRIMARY"))  # one value read as a string


def test_bad_monai_selectors_are_refused_with_the_field() -> None:
    cases = {
        "{not json": (None, "not valid JSON"),
        "[]": (None, "JSON object"),
        "{}": ("selections", "selections"),
        '{"selections": [42]}': ("selections.0", "object"),
        '{"selections": [{"conditions": ["Modality"]}]}': ("selections.0.conditions", "object"),
        '{"selections": [{"conditions": {"Modality": "CT"}}, {"conditions": {"Modalty": "CT"}}]}': (
            "selections.1.conditions",
            "'Modalty' is not a DICOM attribute keyword",
        ),
        '{"selections": [{"conditions": {"SliceThickness": [2, "=>"]}}]}': ("selections.0.conditions", "operator"),
        '{"selections": [{"conditions": {"SeriesDescription": "(?<bad"}}]}': ("selections.0.conditions", "regular"),
        '{"selections": [{"conditions": {"ImageOrientationPatient": "Oblique"}}]}': (
            "selections.0.conditions",
            "Axial",
        ),
    }
    for text, (field, words) in cases.items():
        with pytest.raises(ConfigError, match=words) as info:
            load_monai_selector(text, package="x", source="rules.json")
        assert info.value.field == field, text
        assert info.value.path == Path("rules.json")


def test_no_match_routes_nowhere() -> None:
    router = Router(load_monai_selector(json.dumps(MONAI_SAMPLE), package="spleen-seg"))
    assert router.route(series(Modality="US", StudyDescription="Obstetric")) == []
    assert Router([]).route(series()) == []


def test_two_live_packages_and_build_router(tmp_path: Path) -> None:
    (tmp_path / "spleen.json").write_text(json.dumps(MONAI_SAMPLE))
    section = RoutingSection(
        rules=[
            RoutingRule(package="chest-ct-nodule", unit="series", modality="CT", body_part="CHEST", min_slices=20),
            RoutingRule(package="chest-ct-nodule", unit="series", modality="CT", series_description="lung"),
            RoutingRule(package="ct-triage", unit="instance", modality=["CT", "CR"]),
        ],
        monai=[MonaiSelectorSource(package="spleen-seg", file=Path("spleen.json"))],
    )
    router = build_router(section, base_dir=tmp_path)
    assert router.packages == ["chest-ct-nodule", "ct-triage", "spleen-seg"]
    assert router.units == {"series", "instance"}
    subject = series(StudyDescription="Spleen and chest", SliceThickness=1)
    assert router.route(subject) == ["chest-ct-nodule", "spleen-seg"]  # the package appears once
    assert router.route(subject, live={"spleen-seg", "ct-triage"}) == ["spleen-seg"]
    assert router.route(RoutingSubject("instance", chest_ct(), 1)) == ["ct-triage"]
    assert [reason is None for _, reason in router.explain(subject)] == [True, True, False, True, False, False, True]

    missing = RoutingSection(monai=[MonaiSelectorSource(package="x", file=Path("absent.json"))])
    with pytest.raises(ConfigError, match="cannot read") as info:
        build_router(missing, base_dir=tmp_path)
    assert info.value.path == tmp_path / "absent.json"


def test_router_collects_the_keywords_its_conditions_need() -> None:
    rule = RoutingRule(package="x", conditions={"ContrastBolusRoute": "IV", "Modality": "CT"})
    keywords = Router([rule]).keywords
    assert "ContrastBolusRoute" in keywords and keywords.count("Modality") == 1


def test_routing_subject_from_a_real_dataset() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    subject = RoutingSubject.from_dataset(ds, keywords=["PatientName", "PixelData"])
    assert subject.unit == "instance" and subject.slice_count == 1
    assert subject.attributes["Modality"] == "CT"
    assert subject.attributes["ImageOrientationPatient"] == AXIAL
    assert subject.attributes["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.2"
    # Names and pixels are never copied, even when asked for.
    assert "PatientName" not in subject.attributes and "PixelData" not in subject.attributes
    json.dumps(subject.attributes)  # plain JSON values only
    rule = RoutingRule(package="x", modality="CT", orientation="axial", conditions={"ImageType": ["ORIGINAL"]})
    assert Router([rule]).route(subject) == ["x"]


def test_enhanced_multiframe_orientation_comes_from_the_functional_groups() -> None:
    ds = pydicom.Dataset()
    ds.Modality = "CT"
    ds.NumberOfFrames = 40
    plane = pydicom.Dataset()
    plane.ImageOrientationPatient = CORONAL
    shared = pydicom.Dataset()
    shared.PlaneOrientationSequence = [plane]
    ds.SharedFunctionalGroupsSequence = [shared]
    attributes = dicom_attributes(ds)
    assert attributes["ImageOrientationPatient"] == CORONAL
    assert "SharedFunctionalGroupsSequence" not in attributes
    subject = RoutingSubject.from_dataset(ds)
    assert subject.slice_count == 40
    rule = RoutingRule(package="x", unit="instance", orientation="coronal", min_slices=20)
    assert rule.matches(subject)
