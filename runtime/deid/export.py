"""De-identify a file or a folder of DICOM files into an output folder.

Output files are named after their new UIDs, ``OUT/<study>/<series>/<instance>.dcm``, never after
anything of the input: input folder and file names often hold patient names, dates or the original
UIDs (the phantom studies' folders are their original UIDs). ``keep_folder_names`` mirrors the input's
folders instead, for sets whose folders carry meaning (``positives/``, ``negatives/``); the names
are then copied as they are, so check them first.

Each input ends up in exactly one outcome: ``written``, ``refused`` (burned-in annotation),
``unreadable`` (truncated, corrupt or unwritable after de-identification) or ``skipped`` (not a
DICOM Part 10 file, a DICOMDIR, or a second copy of an instance already written).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pydicom
from pydicom.errors import InvalidDicomError

from runtime.deid.deidentifier import Deidentifier, DeidReport
from runtime.deid.errors import BurnedInAnnotationError, DeidError
from runtime.ingest.part10 import read_header
from sdk.durable_files import write_atomic
from sdk.errors import DicomInputError

__all__ = ["DeidExport", "ExportSummary", "FileOutcome", "Outcome"]

logger = logging.getLogger(__name__)

Outcome = Literal["written", "refused", "unreadable", "skipped"]


@dataclass(frozen=True, slots=True)
class FileOutcome:
    """What became of one input file.

    Attributes:
        source: the input file.
        outcome: written, refused, unreadable or skipped.
        output: the file written, if any.
        reason: why it was refused, unreadable or skipped (or the burned-in flag of a written file).
        report: what the de-identifier did, for a written file.
    """

    source: Path
    outcome: Outcome
    output: Path | None = None
    reason: str = ""
    report: DeidReport | None = None


@dataclass
class ExportSummary:
    """Every input's outcome, in input order."""

    files: list[FileOutcome] = field(default_factory=list)

    def of(self, outcome: Outcome) -> list[FileOutcome]:
        """The inputs that ended in ``outcome``."""
        return [item for item in self.files if item.outcome == outcome]

    @property
    def flagged(self) -> list[FileOutcome]:
        """Written files with burned-in annotation (written only because it was allowed)."""
        return [item for item in self.of("written") if item.report is not None and item.report.burned_in]


class DeidExport:
    """One export: checks the folders, lists the inputs, writes de-identified copies.

    Args:
        source: a DICOM file or a folder (searched recursively; DICOMDIR files are skipped).
        target: the output folder; made if missing. It may not be the source or lie inside it.
        deidentifier: the key and options to apply.
        keep_folder_names: mirror the input's folder names instead of naming folders by new UIDs.

    Raises:
        DeidError: the source does not exist, or the target is the source or inside it.
    """

    def __init__(
        self, source: Path, target: Path, deidentifier: Deidentifier, *, keep_folder_names: bool = False
    ) -> None:
        if not source.exists():
            raise DeidError("no such file or folder", path=source)
        src, dst = source.resolve(), target.resolve()
        root = src if src.is_dir() else src.parent
        if dst == src or (src.is_dir() and dst.is_relative_to(src)):
            raise DeidError(f"the output folder {target} is inside the input: choose a folder outside it", path=source)
        if dst.exists() and not dst.is_dir():
            raise DeidError("the output exists and is not a folder", path=target)
        self.source = src
        self.target = dst
        self._root = root
        self.deidentifier = deidentifier
        self.keep_folder_names = keep_folder_names
        self.inputs = self._list_inputs()

    def _list_inputs(self) -> list[Path]:
        if self.source.is_file():
            return [self.source]
        return sorted(
            path
            for path in self.source.rglob("*")
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(self.source).parts)
        )

    def run(self, on_file: Callable[[FileOutcome], None] | None = None) -> ExportSummary:
        """De-identify every input; ``on_file`` hears of each outcome as it happens (for progress bars)."""
        summary = ExportSummary()
        inputs = {path.resolve() for path in self.inputs}
        written: dict[Path, Path] = {}
        for path in self.inputs:
            outcome = self._one(path, inputs, written)
            summary.files.append(outcome)
            if on_file is not None:
                on_file(outcome)
        return summary

    def _one(self, path: Path, inputs: set[Path], written: dict[Path, Path]) -> FileOutcome:
        if path.name.upper() == "DICOMDIR":
            return FileOutcome(path, "skipped", reason="DICOMDIR (a media index, not an instance)")
        try:
            data = path.read_bytes()
        except OSError as exc:
            return FileOutcome(path, "unreadable", reason=exc.strerror or str(exc))
        try:
            read_header(data)
        except DicomInputError as exc:
            if "no 'DICM' marker" in str(exc):
                return FileOutcome(path, "skipped", reason="not a DICOM Part 10 file")
            return FileOutcome(path, "unreadable", reason=str(exc))
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except (InvalidDicomError, ValueError, KeyError, EOFError) as exc:
            return FileOutcome(path, "unreadable", reason=f"pydicom cannot read it: {exc}")
        if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
            return FileOutcome(path, "unreadable", reason="no SOP Class or SOP Instance UID")
        try:
            result = self.deidentifier.deidentify(ds)
        except BurnedInAnnotationError as exc:
            return FileOutcome(path, "refused", reason=exc.reason)
        except DeidError as exc:
            return FileOutcome(path, "unreadable", reason=str(exc))
        out_path = self._output_path(path, result.dataset)
        if out_path in inputs:
            return FileOutcome(path, "skipped", reason=f"its output {out_path} is an input file: not overwritten")
        if out_path in written:
            return FileOutcome(path, "skipped", reason=f"same instance as {written[out_path]}")
        try:
            buffer = io.BytesIO()
            pydicom.dcmwrite(buffer, result.dataset, enforce_file_format=True)
        except Exception as exc:  # an odd value that reads but does not encode must not stop the export
            logger.warning("cannot encode the de-identified %s: %s", path, exc)
            return FileOutcome(path, "unreadable", reason=f"cannot encode the de-identified dataset: {exc}")
        try:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(out_path, buffer.getvalue(), mode=0o644)
        except OSError as exc:
            raise DeidError(f"cannot write: {exc.strerror}", path=out_path) from exc
        written[out_path] = path
        reason = f"burned-in annotation: {result.report.burned_in}" if result.report.burned_in else ""
        return FileOutcome(path, "written", output=out_path, reason=reason, report=result.report)

    def _output_path(self, source: Path, ds: pydicom.Dataset) -> Path:
        name = f"{ds.SOPInstanceUID}.dcm"
        if self.keep_folder_names:
            return self.target / source.parent.relative_to(self._root) / name
        study = str(ds.get("StudyInstanceUID", "") or "no-study")
        series = str(ds.get("SeriesInstanceUID", "") or "no-series")
        return self.target / study / series / name
