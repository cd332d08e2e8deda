"""Calibration and held-back evaluation slices from a folder of the device maker's DICOM studies.

Every slice goes through :func:`sdk.preprocessing.preprocess`, the function the
runtime calls, so the model is quantized and judged on exactly the tensors it
will see on the appliance.

The set is chosen and split so that the result depends on the studies, not on
how they are laid out on disk:

- instances are ordered by series and instance number, never by file name;
- when the folder holds more slices than wanted, the slices taken are spread
  over every series (round robin over a seeded series order, evenly spaced
  within each series), so a big first study does not crowd out the others;
- the evaluation slices are whole series (neighbouring slices of one series
  are nearly identical: one on each side would flatter the accuracy gate);
- the content hash covers each slice's id, role and tensor bytes, sorted.

Beside the tensors, :func:`input_statistics` records what calibration inputs
look like, so that the runtime can flag studies that look different
(:func:`drift_score`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
import pydicom
from pydantic import ValidationError
from pydicom.dataset import Dataset

from quantization.errors import CalibrationError
from sdk.config_files import config_error_from_validation
from sdk.errors import ConfigError, PreprocessingError
from sdk.input_statistics import InputStatistics, input_statistics
from sdk.manifest import CalibrationRecord
from sdk.model_config import ModelConfig
from sdk.preprocess_spec import PreprocessSpec
from sdk.preprocessing import preprocess

__all__ = [
    "CalibrationSet",
    "DicomScan",
    "ProgressCallback",
    "SkipReason",
    "find_instances",
    "labels_from_phantom_truth",
    "load_calibration",
    "read_labels_csv",
    "scan_folder",
    "write_labels_csv",
]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], object]
"""Called as ``progress(done, total)`` in slices; with rich: ``lambda d, t: bar.update(task, completed=d, total=t)``."""


_HASH_VERSION = b"medge-calibration/1\n"
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "InstanceNumber",
    "NumberOfFrames",
    "ImageType",
]
_UID_COLUMN = "sop_instance_uid"


class SkipReason(StrEnum):
    """Why a file or slice was left out (keys of ``skipped``; besides these, ``modality <X>``)."""

    NOT_DICOM = "not DICOM"
    UNREADABLE_FILE = "unreadable file"
    DICOMDIR = "DICOMDIR"
    UNREADABLE = "unreadable DICOM"
    NO_MODALITY = "no Modality"
    NO_UID = "no SOPInstanceUID"
    DUPLICATE = "duplicate SOPInstanceUID"
    LOCALIZER = "localizer image"
    CANNOT_PREPROCESS = "cannot preprocess"
    BEYOND_MAX = "beyond max_instances"


# --- finding DICOM files --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DicomScan:
    """The DICOM files under a folder and what else was there.

    Attributes:
        folder: the folder scanned.
        instances: DICOM files (128-byte preamble + ``DICM``), sorted by relative path.
        skipped: other files by reason (``not DICOM``, ``DICOMDIR``, ``unreadable file``).
    """

    folder: Path
    instances: list[Path]
    skipped: dict[str, int]


def scan_folder(folder: str | Path) -> DicomScan:
    """Find every DICOM file under ``folder``, whatever its name or extension.

    Raises:
        CalibrationError: ``folder`` does not exist or is not a folder.
    """
    folder = Path(folder)
    if not folder.exists():
        raise CalibrationError("calibration folder not found", path=folder)
    if not folder.is_dir():
        raise CalibrationError("the calibration path is not a folder", path=folder)
    instances: list[Path] = []
    skipped: Counter[str] = Counter()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if name.upper() == "DICOMDIR":
                skipped[SkipReason.DICOMDIR] += 1
                continue
            try:
                with path.open("rb") as handle:
                    head = handle.read(132)
            except OSError:
                skipped[SkipReason.UNREADABLE_FILE] += 1
                continue
            if len(head) == 132 and head[128:] == b"DICM":
                instances.append(path)
            else:
                skipped[SkipReason.NOT_DICOM] += 1
    instances.sort(key=lambda path: path.relative_to(folder).parts)
    log.debug("%s: %d DICOM file(s), skipped %s", folder, len(instances), dict(skipped))
    return DicomScan(folder=folder, instances=instances, skipped=dict(skipped))


def find_instances(folder: str | Path) -> list[Path]:
    """Every DICOM file under ``folder`` (recursively, any extension), DICOMDIR and other files left out."""
    return scan_folder(folder).instances


# --- labels ---------------------------------------------------------------------------------------------------------


def read_labels_csv(path: str | Path) -> dict[str, dict[str, int]]:
    """Read ``sop_instance_uid,<label>[,<label>...]`` rows of 0/1 (an empty cell: not known).

    Raises:
        ConfigError: the file is missing, has no ``sop_instance_uid`` column first,
            a value is not 0 or 1, or an instance is listed twice.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except OSError as exc:
        raise ConfigError(f"cannot read the labels file: {exc}", path=path) from exc
    if not rows or not rows[0] or rows[0][0].strip() != _UID_COLUMN or len(rows[0]) < 2:
        raise ConfigError(f"the labels file must start with a header '{_UID_COLUMN},<label>[,<label>...]'", path=path)
    names = [name.strip() for name in rows[0][1:]]
    labels: dict[str, dict[str, int]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        uid = row[0].strip()
        if uid in labels:
            raise ConfigError(f"line {line}: instance {uid} is listed twice", path=path, field=_UID_COLUMN)
        values: dict[str, int] = {}
        for name, cell in zip(names, row[1:], strict=False):
            cell = cell.strip()
            if cell == "":
                continue
            if cell not in ("0", "1"):
                raise ConfigError(f"line {line}: label values are 0 or 1, got {cell!r}", path=path, field=name)
            values[name] = int(cell)
        labels[uid] = values
    return labels


def write_labels_csv(labels: Mapping[str, Mapping[str, int]], path: str | Path) -> Path:
    """Write labels as :func:`read_labels_csv` reads them, rows sorted by instance UID."""
    path = Path(path)
    names = sorted({name for values in labels.values() for name in values})
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow([_UID_COLUMN, *names])
        for uid in sorted(labels):
            writer.writerow([uid, *(labels[uid].get(name, "") for name in names)])
    return path


def labels_from_phantom_truth(folder: str | Path, *, label: str = "nodule") -> dict[str, dict[str, int]]:
    """Per-slice labels from the ``truth.json`` files :mod:`sdk.testing` writes with phantom studies.

    A slice is 1 when a nodule is visible in it (``has_nodule``), else 0.

    Returns:
        instance UID -> ``{label: 0 or 1}``; empty when the folder holds no phantom truth.

    Raises:
        ConfigError: a ``truth.json`` is not valid JSON or not phantom truth.
    """
    from sdk.testing.phantom import StudyTruth  # test tooling: imported only when asked for

    labels: dict[str, dict[str, int]] = {}
    for path in sorted(Path(folder).rglob("truth.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            studies = data["studies"] if isinstance(data, dict) and "studies" in data else [data]
            truths = [StudyTruth.model_validate(study) for study in studies]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read phantom truth: {exc}", path=path) from exc
        except ValidationError as exc:
            raise config_error_from_validation(exc, path) from exc
        for truth in truths:
            for series in truth.series:
                for slice_truth in series.slices:
                    labels[slice_truth.sop_instance_uid] = {label: int(slice_truth.has_nodule)}
    return labels


# --- the calibration set --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationSet:
    """Preprocessed slices for calibration and for the held-back accuracy check.

    Attributes:
        folder: the folder the slices came from.
        calibration: calibration slices, float32 ``(N, C, H, W)`` (or NHWC), spread over series first.
        evaluation: held-back slices, from series none of whose slices are in ``calibration``.
        calibration_ids: one id per calibration slice: the SOPInstanceUID, with
            ``#<frame number>`` appended for frames of a multi-frame instance.
        evaluation_ids: the same for the evaluation slices.
        calibration_series: SeriesInstanceUIDs of the calibration slices.
        evaluation_series: SeriesInstanceUIDs of the evaluation slices.
        label_names: the model's labels, the columns of the label arrays.
        calibration_labels: ``(N, len(label_names))`` float32 of 0/1, NaN where
            not known; ``None`` when no labels were given.
        evaluation_labels: the same for the evaluation slices.
        sha256: content hash of the set (see :func:`load_calibration`).
        instances: DICOM instances that gave slices.
        files: files looked at under the folder.
        skipped: files or slices left out, by reason.
        failures: the first failure message for each reason that is a failure.
        modalities: DICOM instances by Modality (all of them, accepted or not).
        statistics: input statistics of the calibration slices.
        notes: what a reader of the compile record should know.
    """

    folder: Path
    calibration: np.ndarray = field(repr=False)
    evaluation: np.ndarray = field(repr=False)
    calibration_ids: list[str] = field(repr=False)
    evaluation_ids: list[str] = field(repr=False)
    calibration_series: list[str] = field(repr=False)
    evaluation_series: list[str] = field(repr=False)
    label_names: list[str]
    calibration_labels: np.ndarray | None = field(repr=False)
    evaluation_labels: np.ndarray | None = field(repr=False)
    sha256: str
    instances: int
    files: int
    skipped: dict[str, int]
    failures: dict[str, str]
    modalities: dict[str, int]
    statistics: InputStatistics = field(repr=False)
    notes: list[str]

    @property
    def size(self) -> int:
        """Slices in both parts."""
        return len(self.calibration) + len(self.evaluation)

    def record(self, method: str) -> CalibrationRecord:
        """The manifest's calibration record: calibration slice count, the set's hash and ``method``."""
        return CalibrationRecord(size=len(self.calibration), sha256=self.sha256, method=method)


@dataclass
class _Header:
    path: Path
    sop_uid: str
    series_uid: str
    instance_number: float
    frames: int


@dataclass
class _Slice:
    id: str
    series_uid: str
    position: tuple[float, str, int]
    tensor: np.ndarray


@dataclass
class _Tally:
    skipped: Counter[str] = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)

    def skip(self, reason: str, count: int = 1, *, failure: str | None = None) -> None:
        self.skipped[reason] += count
        if failure is not None:
            self.failures.setdefault(reason, failure)


def load_calibration(
    folder: str | Path,
    config: ModelConfig,
    *,
    min_instances: int = 20,
    max_instances: int = 300,
    eval_fraction: float = 0.25,
    seed: int = 0,
    labels: Mapping[str, Mapping[str, int]] | None = None,
    progress: ProgressCallback | None = None,
) -> CalibrationSet:
    """Read, preprocess and split the DICOM slices under ``folder`` for ``config``'s model.

    Instances of a modality the model does not take, localizer images,
    duplicates and files that cannot be read or preprocessed are skipped and
    counted by reason. Multi-frame instances give one slice per frame.

    The content hash is the sha256 of ``medge-calibration/1`` followed by one
    line ``<role> <id> <shape> <sha256 of the float32 tensor bytes>`` per slice,
    sorted: the same studies give the same hash wherever their files lie.

    Args:
        folder: the folder of DICOM studies (searched recursively).
        config: the model config (its preprocessing spec and labels).
        min_instances: fewest usable slices accepted.
        max_instances: most slices read (calibration and evaluation together).
        eval_fraction: share of slices held back for evaluation, taken as whole series.
        seed: seeds the order of series for selection and split.
        labels: instance UID (or ``UID#frame``) -> ``{label: 0/1}``, e.g. from
            :func:`read_labels_csv` or :func:`labels_from_phantom_truth`.
        progress: called as ``progress(done, total)`` in slices while preprocessing.

    Raises:
        CalibrationError: the folder is missing, holds no DICOM or none of the
            model's modality, or fewer than ``min_instances`` usable slices.
        ConfigError: the limits or the fraction are out of range.
    """
    _check_arguments(min_instances, max_instances, eval_fraction)
    spec = config.preprocessing
    scan = scan_folder(folder)
    tally = _Tally()
    for reason, count in scan.skipped.items():
        tally.skip(reason, count)
    where = scan.folder
    if not scan.instances:
        other = sum(scan.skipped.values())
        raise CalibrationError(
            f"no DICOM files found in {where} ({other} other file(s) skipped)", path=where, skipped=tally.skipped
        )

    headers, modalities = _read_headers(scan.instances, spec, tally)
    if not headers:
        raise _no_usable_modality(where, spec, modalities, tally)

    candidates = _reading_order(headers, seed)
    total = min(max_instances, sum(header.frames for header in candidates))
    slices: list[_Slice] = []
    used_instances = 0
    for header in candidates:
        room = max_instances - len(slices)
        if room <= 0:
            tally.skip(SkipReason.BEYOND_MAX, header.frames)
            continue
        frames = list(range(header.frames))
        if header.frames > room:
            frames = sorted(_spread_order(header.frames)[:room])
            tally.skip(SkipReason.BEYOND_MAX, header.frames - room)
        produced = _preprocess(header, frames, spec, tally)
        if produced:
            used_instances += 1
            slices.extend(produced)
        if progress is not None:
            progress(len(slices), total)
    if progress is not None:
        progress(len(slices), len(slices))

    if len(slices) < min_instances:
        raise _too_few(where, len(slices), min_instances, tally)

    notes: list[str] = []
    calibration, evaluation = _split(slices, eval_fraction, seed, notes)
    calibration_array = np.stack([s.tensor for s in calibration])
    evaluation_array = np.stack([s.tensor for s in evaluation])
    names = list(config.labels)
    label_arrays = (
        (_label_array(calibration, labels, names), _label_array(evaluation, labels, names))
        if labels is not None
        else (None, None)
    )
    if label_arrays[1] is not None:
        known = int(np.isfinite(label_arrays[1]).all(axis=1).sum())
        notes.append(f"labels known for {known} of {len(evaluation)} evaluation slices")
    result = CalibrationSet(
        folder=where,
        calibration=calibration_array,
        evaluation=evaluation_array,
        calibration_ids=[s.id for s in calibration],
        evaluation_ids=[s.id for s in evaluation],
        calibration_series=sorted({s.series_uid for s in calibration}),
        evaluation_series=sorted({s.series_uid for s in evaluation}),
        label_names=names,
        calibration_labels=label_arrays[0],
        evaluation_labels=label_arrays[1],
        sha256=_content_hash(calibration, evaluation),
        instances=used_instances,
        files=len(scan.instances) + sum(scan.skipped.values()),
        skipped=dict(tally.skipped),
        failures=dict(tally.failures),
        modalities=dict(sorted(modalities.items())),
        statistics=input_statistics(calibration_array, spec),
        notes=notes,
    )
    log.info(
        "calibration set from %s: %d calibration + %d evaluation slices from %d instance(s); skipped %s; sha256 %s",
        where,
        len(calibration),
        len(evaluation),
        used_instances,
        result.skipped,
        result.sha256[:16],
    )
    return result


def _check_arguments(min_instances: int, max_instances: int, eval_fraction: float) -> None:
    if min_instances < 2:
        raise ConfigError(f"min_instances must be at least 2 (one slice each side), got {min_instances}")
    if max_instances < min_instances:
        raise ConfigError(f"max_instances ({max_instances}) must not be below min_instances ({min_instances})")
    if not 0.0 < eval_fraction < 1.0:
        raise ConfigError(f"eval_fraction must be between 0 and 1 (exclusive), got {eval_fraction}")


def _read_headers(paths: Iterable[Path], spec: PreprocessSpec, tally: _Tally) -> tuple[list[_Header], Counter[str]]:
    """Read every header (no pixels); keep the instances the model takes."""
    modalities: Counter[str] = Counter()
    headers: list[_Header] = []
    seen: set[str] = set()
    for path in paths:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
            _log_warnings(path, caught)
        except Exception as exc:  # pydicom raises many types on malformed input
            tally.skip(SkipReason.UNREADABLE, failure=f"{path}: {exc}")
            continue
        if len(ds) == 0:
            tally.skip(SkipReason.UNREADABLE, failure=f"{path}: no data elements after the file meta (truncated?)")
            continue
        sop_class = str(ds.get("SOPClassUID") or getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", "") or "")
        if sop_class == _DICOMDIR_SOP_CLASS:
            tally.skip(SkipReason.DICOMDIR)
            continue
        modality = str(ds.get("Modality") or "")
        modalities[modality or "no Modality"] += 1
        if modality not in spec.modalities:
            tally.skip(f"modality {modality}" if modality else SkipReason.NO_MODALITY)
            continue
        if "LOCALIZER" in [str(value).upper() for value in (ds.get("ImageType") or [])]:
            tally.skip(SkipReason.LOCALIZER)
            continue
        sop_uid = str(ds.get("SOPInstanceUID") or "")
        if not sop_uid:
            tally.skip(SkipReason.NO_UID, failure=f"{path}: has no SOPInstanceUID")
            continue
        if sop_uid in seen:
            tally.skip(SkipReason.DUPLICATE)
            continue
        seen.add(sop_uid)
        headers.append(
            _Header(
                path=path,
                sop_uid=sop_uid,
                series_uid=str(ds.get("SeriesInstanceUID") or f"(no series) {sop_uid}"),
                instance_number=_number(ds.get("InstanceNumber"), math.inf),
                frames=max(1, int(_number(ds.get("NumberOfFrames"), 1))),
            )
        )
    return headers, modalities


def _number(value: object, default: float) -> float:
    try:
        return float(value) if value not in (None, "") else default  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default


def _reading_order(headers: list[_Header], seed: int) -> list[_Header]:
    """Instances in the order they are read: round robin over a seeded series order, each series evenly spread.

    Reading stops at ``max_instances`` slices, so any prefix of this order is a
    sample spread over every series; an instance that fails is replaced by the next.
    """
    by_series: dict[str, list[_Header]] = defaultdict(list)
    for header in headers:
        by_series[header.series_uid].append(header)
    ranked = []
    for series_rank, series_uid in enumerate(_seeded_order(sorted(by_series), seed)):
        members = sorted(by_series[series_uid], key=lambda h: (h.instance_number, h.sop_uid))
        for spread_rank, index in enumerate(_spread_order(len(members))):
            ranked.append((spread_rank, series_rank, members[index]))
    ranked.sort(key=lambda item: (item[0], item[1]))
    return [header for _, _, header in ranked]


def _seeded_order(items: list[str], seed: int) -> list[str]:
    order = np.random.default_rng(seed).permutation(len(items))
    return [items[i] for i in order]


def _spread_order(n: int) -> list[int]:
    """Indices 0..n-1 ordered so that every prefix is spread evenly (van der Corput over the positions)."""
    order: list[int] = []
    seen: set[int] = set()
    k = 0
    while len(order) < n and k < 64 * n:
        value, denominator, i = 0.0, 1.0, k
        while i:
            denominator *= 2
            i, bit = divmod(i, 2)
            value += bit / denominator
        index = int(value * n)
        if index not in seen:
            seen.add(index)
            order.append(index)
        k += 1
    order.extend(i for i in range(n) if i not in seen)
    return order


def _preprocess(header: _Header, frames: list[int], spec: PreprocessSpec, tally: _Tally) -> list[_Slice]:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds: Dataset = pydicom.dcmread(header.path)
            tensors = preprocess(ds, spec, frames=None if len(frames) == header.frames else frames)
        _log_warnings(header.path, caught)
    except PreprocessingError as exc:
        tally.skip(SkipReason.CANNOT_PREPROCESS, len(frames), failure=f"{header.path}: {exc.message}")
        return []
    except Exception as exc:  # pydicom raises many types on malformed input
        tally.skip(SkipReason.UNREADABLE, len(frames), failure=f"{header.path}: {exc}")
        return []
    multi = header.frames > 1
    return [
        _Slice(
            id=f"{header.sop_uid}#{frame + 1}" if multi else header.sop_uid,
            series_uid=header.series_uid,
            position=(header.instance_number, header.sop_uid, frame),
            tensor=tensor,
        )
        for frame, tensor in zip(frames, tensors, strict=True)
    ]


def _log_warnings(path: Path, caught: list[warnings.WarningMessage]) -> None:
    for warning in caught:
        log.debug("%s: %s", path, warning.message)


def _split(
    slices: list[_Slice], eval_fraction: float, seed: int, notes: list[str]
) -> tuple[list[_Slice], list[_Slice]]:
    """Hold back whole series for evaluation, about ``eval_fraction`` of the slices, both sides non-empty."""
    sizes = Counter(s.series_uid for s in slices)
    target = max(1, round(eval_fraction * len(slices)))
    if len(sizes) < 2:
        # One series only: hold back its last slices, so the two sides meet at one boundary only.
        cut = sorted(s.position for s in slices)[-min(target, len(slices) - 1)]
        notes.append("the calibration folder holds one series: its last slices are held back for evaluation")
        return [s for s in slices if s.position < cut], sorted((s for s in slices if s.position >= cut), key=_order)
    held_series: set[str] = set()
    count = 0
    for series_uid in _seeded_order(sorted(sizes), seed + 1):
        if len(held_series) == len(sizes) - 1:
            break
        size = sizes[series_uid]
        if held_series and abs(count + size - target) >= abs(count - target):
            continue
        held_series.add(series_uid)
        count += size
    calibration = [s for s in slices if s.series_uid not in held_series]
    evaluation = sorted((s for s in slices if s.series_uid in held_series), key=_order)
    return calibration, evaluation


def _order(s: _Slice) -> tuple[str, tuple[float, str, int]]:
    return s.series_uid, s.position


def _label_array(slices: list[_Slice], labels: Mapping[str, Mapping[str, int]], names: list[str]) -> np.ndarray:
    array = np.full((len(slices), len(names)), np.nan, dtype=np.float32)
    for row, s in enumerate(slices):
        values = labels.get(s.id) or labels.get(s.id.split("#", 1)[0]) or {}
        for column, name in enumerate(names):
            if name in values:
                array[row, column] = float(values[name])
    return array


def _content_hash(calibration: list[_Slice], evaluation: list[_Slice]) -> str:
    lines = []
    for role, part in (("calibration", calibration), ("evaluation", evaluation)):
        for s in part:
            tensor = np.ascontiguousarray(s.tensor, dtype=np.float32)
            shape = "x".join(map(str, tensor.shape))
            lines.append(f"{role} {s.id} {shape} {hashlib.sha256(tensor.tobytes()).hexdigest()}\n")
    digest = hashlib.sha256(_HASH_VERSION)
    for line in sorted(lines):
        digest.update(line.encode())
    return digest.hexdigest()


# --- errors ---------------------------------------------------------------------------------------------------------


def _no_usable_modality(
    folder: Path, spec: PreprocessSpec, modalities: Counter[str], tally: _Tally
) -> CalibrationError:
    takes = " or ".join(spec.modalities)
    if modalities:
        held = ", ".join(f"{count} {modality}" for modality, count in sorted(modalities.items()))
        accepted = sum(modalities[m] for m in spec.modalities)
        why = (
            f"{folder} holds {held} instance(s) but the model takes {takes}"
            if not accepted
            else f"{folder} holds {held} instance(s), but none of the {takes} ones is usable ({_skips(tally)})"
        )
    else:
        first = next(iter(tally.failures.values()), "")
        why = f"none of the DICOM files in {folder} can be read (first: {first})"
    return CalibrationError(why, path=folder, skipped=tally.skipped)


def _too_few(folder: Path, usable: int, minimum: int, tally: _Tally) -> CalibrationError:
    failed = tally.skipped[SkipReason.CANNOT_PREPROCESS] + tally.skipped[SkipReason.UNREADABLE]
    first = next(iter(tally.failures.values()), None)
    reason = f"; first failure: {first}" if first else ""
    return CalibrationError(
        f"only {usable} usable slice(s) in {folder}, at least {minimum} are needed; {failed} failed{reason} "
        f"(skipped: {_skips(tally)})",
        path=folder,
        skipped=tally.skipped,
    )


def _skips(tally: _Tally) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in sorted(tally.skipped.items())) or "none"
