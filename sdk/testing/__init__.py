"""Test helpers for medge and for device makers: synthetic chest-CT studies with known answers.

``generate_series`` renders a series in memory; ``write_study`` and
``generate_studies`` write valid DICOM files plus a ``truth.json``.
"""

from __future__ import annotations

from sdk.testing.phantom import (
    NoduleTruth,
    PhantomSeries,
    PhantomSpec,
    SeriesTruth,
    SliceNodule,
    SliceTruth,
    StudyTruth,
    generate_series,
    generate_studies,
    load_truth,
    write_study,
)

__all__ = [
    "NoduleTruth",
    "PhantomSeries",
    "PhantomSpec",
    "SeriesTruth",
    "SliceNodule",
    "SliceTruth",
    "StudyTruth",
    "generate_series",
    "generate_studies",
    "load_truth",
    "write_study",
]
