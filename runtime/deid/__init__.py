"""De-identification of DICOM instances by PS3.15 Annex E's Basic Application Level Confidentiality Profile.

For device makers exporting calibration and validation sets off an appliance::

    key, _ = load_or_create_key(default_key_path())
    deid = Deidentifier(key, DeidOptions(retain_dates=True))
    clean = deid.apply(pydicom.dcmread(path))          # a de-identified copy
    summary = DeidExport(Path("in"), Path("out"), deid).run()  # a whole folder

The action table is :data:`PROFILE` (:mod:`runtime.deid.annex_e`); what medge adds where the table is
silent, and how UIDs are replaced, is in :mod:`runtime.deid.deidentifier`. Pixel data is not scrubbed:
images with burned-in annotation are refused unless allowed.
"""

from __future__ import annotations

from runtime.deid.annex_e import PROFILE, Action, ProfileEntry, lookup, resolve
from runtime.deid.deidentifier import (
    AttributeAction,
    AttributeGroup,
    Deidentifier,
    DeidOptions,
    DeidReport,
    DeidResult,
    SafePrivateTag,
    burned_in_reason,
)
from runtime.deid.descriptors import clean_descriptor
from runtime.deid.errors import BurnedInAnnotationError, DeidError
from runtime.deid.export import DeidExport, ExportSummary, FileOutcome
from runtime.deid.keys import default_key_path, load_key, load_or_create_key

__all__ = [
    "PROFILE",
    "Action",
    "AttributeAction",
    "AttributeGroup",
    "BurnedInAnnotationError",
    "DeidError",
    "DeidExport",
    "DeidOptions",
    "DeidReport",
    "DeidResult",
    "Deidentifier",
    "ExportSummary",
    "FileOutcome",
    "ProfileEntry",
    "SafePrivateTag",
    "burned_in_reason",
    "clean_descriptor",
    "default_key_path",
    "load_key",
    "load_or_create_key",
    "lookup",
    "resolve",
]
