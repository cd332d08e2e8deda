"""Synthetic chest-CT series with known lung nodules, written as valid DICOM.

Tests, benchmarks, the demo and the reference model's training all need CT
studies whose answer is known. Real scans cannot ship with the repository, so
this module draws a chest phantom (body, fat, muscle, ribs, spine, heart,
aorta, lungs with branching vessels) with CT-like correlated noise, drops
spherical or slightly lobulated nodules (solid and ground-glass) into the lungs
and records, slice by slice, where they are. Vessels seen end-on are small
bright dots, so telling a nodule from a vessel is not trivial.

Everything is deterministic from a seed: pixel data, UIDs, dates and truth.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
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

logger = logging.getLogger(__name__)

RESCALE_INTERCEPT = -1024.0
_BITS_STORED = 12
_MAX_STORED = (1 << _BITS_STORED) - 1
_AIR_HU = -1000.0
_UID_NAMESPACE = "medge-chest-ct-phantom/1"


class PhantomSpec(BaseModel):
    """What the phantom series look like.

    Ranges are ``(low, high)`` and sampled uniformly per series or per nodule.

    Attributes:
        rows: image rows.
        columns: image columns.
        slices: slices per series (contiguous: spacing equals thickness).
        slice_thickness_mm: reconstructed slice thickness and spacing.
        pixel_spacing_mm: in-plane pixel size; 1.40625 mm gives a 360 mm field of view at 256 px.
        noise_hu: standard deviation of the (spatially correlated) noise.
        nodules_per_series: how many nodules a series with nodules gets.
        nodule_radius_mm: mean radius of a nodule.
        solid_hu: attenuation of solid nodules.
        ground_glass_hu: attenuation of ground-glass nodules.
        ground_glass_fraction: share of nodules that are ground-glass.
        empty_series_fraction: share of series without any nodule.
        visible_radius_mm: a slice counts as showing a nodule when the nodule's
            cross-section at the slice centre has at least this radius.
        vessel_trees_per_lung: how many vessel trees start at each hilum.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rows: int = Field(default=256, ge=64, le=1024)
    columns: int = Field(default=256, ge=64, le=1024)
    slices: int = Field(default=32, ge=1, le=512)
    slice_thickness_mm: float = Field(default=2.5, gt=0, le=10)
    pixel_spacing_mm: float = Field(default=1.40625, gt=0.2, le=5)
    noise_hu: float = Field(default=25.0, ge=0, le=200)
    nodules_per_series: tuple[int, int] = (1, 3)
    nodule_radius_mm: tuple[float, float] = (2.5, 12.0)
    solid_hu: tuple[float, float] = (-100.0, 60.0)
    ground_glass_hu: tuple[float, float] = (-450.0, -250.0)
    ground_glass_fraction: float = Field(default=0.25, ge=0, le=1)
    empty_series_fraction: float = Field(default=0.3, ge=0, le=1)
    visible_radius_mm: float = Field(default=1.5, ge=0)
    vessel_trees_per_lung: tuple[int, int] = (10, 16)

    @model_validator(mode="after")
    def _ordered_ranges(self) -> PhantomSpec:
        for name in (
            "nodules_per_series",
            "nodule_radius_mm",
            "solid_hu",
            "ground_glass_hu",
            "vessel_trees_per_lung",
        ):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name} must be (low, high), got ({low}, {high})")
        if self.nodules_per_series[0] < 0 or self.vessel_trees_per_lung[0] < 0:
            raise ValueError("counts must not be negative")
        if self.nodule_radius_mm[0] <= 0:
            raise ValueError("nodule_radius_mm must be positive")
        return self


class NoduleTruth(BaseModel):
    """One nodule of a series, in patient (LPS, mm) and voxel coordinates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int
    kind: Literal["solid", "ground_glass"]
    center_mm: tuple[float, float, float]
    center_voxel: tuple[float, float, float] = Field(description="(slice index, row, column), fractional")
    radius_mm: float = Field(description="mean of the three semi-axes")
    semi_axes_mm: tuple[float, float, float]
    hu: float


class SliceNodule(BaseModel):
    """A nodule as it appears in one slice."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int = Field(description="index into SeriesTruth.nodules")
    row: float
    column: float
    x_mm: float
    y_mm: float
    radius_mm: float = Field(description="radius of the cross-section at the slice centre")
    hu: float


class SliceTruth(BaseModel):
    """What one slice shows.

    Attributes:
        has_nodule: a nodule crosses the slice with a cross-section radius of at
            least ``PhantomSpec.visible_radius_mm``.
        grazing: a nodule touches the slice but below that radius (an honestly
            ambiguous slice; it is labelled negative).
        nodules: the visible nodules, largest cross-section first.
        file: path of the written file relative to the study folder, if written.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    instance_number: int
    sop_instance_uid: str
    z_mm: float
    has_nodule: bool
    grazing: bool
    nodules: list[SliceNodule]
    file: str | None = None


class SeriesTruth(BaseModel):
    """Ground truth of one series."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int
    series_instance_uid: str
    series_number: int
    frame_of_reference_uid: str
    rows: int
    columns: int
    pixel_spacing_mm: float
    slice_thickness_mm: float
    origin_mm: tuple[float, float, float] = Field(description="ImagePositionPatient of the first slice")
    nodules: list[NoduleTruth]
    slices: list[SliceTruth]
    folder: str | None = None


class StudyTruth(BaseModel):
    """Ground truth of one study, as dumped to ``truth.json`` in its folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int
    patient_id: str
    study_instance_uid: str
    folder: str | None = None
    spec: PhantomSpec
    series: list[SeriesTruth]


@dataclass
class PhantomSeries:
    """One generated series held in memory.

    Attributes:
        datasets: one CT Image Storage dataset per slice, with file meta, ordered by z.
        truth: where the nodules are.
        hu: the rendered volume in HU, shape ``(slices, rows, columns)``, before
            quantisation to stored values.
    """

    datasets: list[Dataset]
    truth: SeriesTruth
    hu: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class _Patient:
    patient_id: str
    name: str
    birth_date: str
    sex: str
    study_uid: str
    study_date: dt.date
    accession: str
    study_id: str


@dataclass(frozen=True)
class _Nodule:
    kind: Literal["solid", "ground_glass"]
    center: tuple[float, float, float]
    axes: tuple[float, float, float]
    hu: float
    lobes: int
    lobe_amplitude: float
    lobe_phase: float


@dataclass(frozen=True)
class _Segment:
    start: tuple[float, float, float]
    end: tuple[float, float, float]
    radius: float


@dataclass(frozen=True)
class _Grid:
    """Pixel-centre coordinates (mm, LPS) of a series."""

    x: np.ndarray  # (1, W)
    y: np.ndarray  # (H, 1)
    z: np.ndarray  # (Z,)
    spacing: float
    thickness: float

    @property
    def x0(self) -> float:
        return float(self.x[0, 0])

    @property
    def y0(self) -> float:
        return float(self.y[0, 0])


def _child_seed(seed: int, *parts: int) -> int:
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0])


def _uid(seed: int, *parts: object) -> str:
    return str(generate_uid(entropy_srcs=[_UID_NAMESPACE, str(seed), *map(str, parts)]))


# ----------------------------------------------------------------------------- drawing


def _blend(img: np.ndarray, occ: np.ndarray, value: float | np.ndarray) -> None:
    """Partial-volume mix: ``img = img * (1 - occ) + value * occ``, in place."""
    img += occ * (value - img)


def _ellipse(
    grid: _Grid,
    cx: float,
    cy: float,
    a: float,
    b: float,
    *,
    angle: float = 0.0,
    power: float = 2.0,
    shape: tuple[int, int],
) -> tuple[tuple[slice, slice], np.ndarray]:
    """Occupancy (0..1, one-pixel soft edge) of a rotated super-ellipse, on its bounding box only."""
    ps = grid.spacing
    reach = max(a, b) + 2 * ps
    c0 = max(math.floor((cx - reach - grid.x0) / ps), 0)
    c1 = min(math.ceil((cx + reach - grid.x0) / ps) + 1, shape[1])
    r0 = max(math.floor((cy - reach - grid.y0) / ps), 0)
    r1 = min(math.ceil((cy + reach - grid.y0) / ps) + 1, shape[0])
    window = (slice(r0, max(r1, r0)), slice(c0, max(c1, c0)))
    if r1 <= r0 or c1 <= c0:
        return window, np.zeros((0, 0), np.float32)
    u = grid.x[:, c0:c1] - cx
    v = grid.y[r0:r1, :] - cy
    if angle:
        ca, sa = math.cos(angle), math.sin(angle)
        u, v = u * ca + v * sa, -u * sa + v * ca
    rho = (np.abs(u / a) ** power + np.abs(v / b) ** power) ** (1.0 / power)
    occ = np.clip(0.5 + (1.0 - rho) * (min(a, b) / ps), 0.0, 1.0).astype(np.float32)
    return window, occ


def _paint(
    img: np.ndarray,
    grid: _Grid,
    value: float,
    cx: float,
    cy: float,
    a: float,
    b: float,
    *,
    angle: float = 0.0,
    power: float = 2.0,
    weight: float = 1.0,
) -> None:
    window, occ = _ellipse(grid, cx, cy, a, b, angle=angle, power=power, shape=img.shape)
    if occ.size:
        _blend(img[window], occ * weight, value)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(math.ceil(3 * sigma), 1)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return (taps / taps.sum()).astype(np.float32)


def _blur_inplane(volume: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over rows and columns of a ``(Z, H, W)`` volume (edge padding)."""
    kernel = _gaussian_kernel(sigma)
    radius = len(kernel) // 2
    height, width = volume.shape[1:]
    padded = np.pad(volume, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    rows = sum(k * padded[:, i : i + height, :] for i, k in enumerate(kernel))
    padded = np.pad(rows, ((0, 0), (0, 0), (radius, radius)), mode="edge")
    return sum(k * padded[:, :, i : i + width] for i, k in enumerate(kernel)).astype(np.float32)


# ----------------------------------------------------------------------------- anatomy


@dataclass(frozen=True)
class _Anatomy:
    """Per-series body layout; every length in mm."""

    cx: float
    cy: float
    body_a: float
    body_b: float
    fat: float
    wall: float
    mediastinum: float
    lung_power: float
    lung_phase: tuple[float, float, float]
    lung_hu: float
    lung_gradient: float
    texture: tuple[tuple[float, float, float, float, float], ...]  # (kx, ky, kz, phase, amplitude)
    heart: tuple[float, float, float, float, float]  # cx, cy, a, b, angle
    heart_phase: float
    aorta: tuple[float, float, float]  # cx, cy, r
    trachea: tuple[float, float, float] | None
    spine_y: float
    vertebra_r: float
    disc_phase: float
    ribs: tuple[tuple[float, float, float], ...]  # (angle at z=0, drift per mm, gate phase)
    muscle_hu: float
    fat_hu: float
    blood_hu: float
    cortical_hu: float
    cancellous_hu: float

    @property
    def inner_a(self) -> float:
        return self.body_a - self.fat

    @property
    def inner_b(self) -> float:
        return self.body_b - self.fat

    def lung(self, side: int, z: float) -> tuple[float, float, float, float]:
        """Centre and semi-axes of the lung on ``side`` (-1 right, +1 left) at height ``z``."""
        p1, p2, p3 = self.lung_phase
        half_width = (self.inner_a - self.wall - self.mediastinum) / 2
        a = half_width * (1 + 0.07 * math.sin(2 * math.pi * z / 170 + p1 + side))
        b = (self.inner_b - self.wall) * 0.86 * (1 + 0.05 * math.sin(2 * math.pi * z / 140 + p2))
        cx = self.cx + side * (self.mediastinum + half_width) + 3 * math.sin(2 * math.pi * z / 200 + p3)
        cy = self.cy - 0.04 * self.inner_b
        return cx, cy, a, b

    def heart_at(self, z: float) -> tuple[float, float, float, float, float]:
        scale = 0.72 + 0.28 * math.sin(2 * math.pi * z / 220 + self.heart_phase)
        hx, hy, ha, hb, angle = self.heart
        return hx, hy, ha * scale, hb * scale, angle


def _sample_anatomy(rng: np.random.Generator, spec: PhantomSpec) -> _Anatomy:
    half_fov_x = spec.columns * spec.pixel_spacing_mm / 2
    half_fov_y = spec.rows * spec.pixel_spacing_mm / 2
    cx = float(rng.uniform(-12, 12))
    cy = float(rng.uniform(-10, 6))
    body_a = min(float(rng.uniform(135, 168)), half_fov_x - abs(cx) - 6)
    body_b = min(body_a * float(rng.uniform(0.62, 0.76)), half_fov_y - abs(cy) - 6)
    fat = float(rng.uniform(6, 22))
    wall = float(rng.uniform(11, 18))
    inner_b = body_b - fat
    spine_y = cy + inner_b - wall - float(rng.uniform(14, 20))
    heart = (
        cx + float(rng.uniform(12, 28)),
        cy - inner_b * float(rng.uniform(0.12, 0.28)),
        float(rng.uniform(42, 58)),
        float(rng.uniform(34, 46)),
        float(rng.uniform(-0.6, -0.2)),
    )
    textures = []
    for _ in range(6):
        direction = rng.normal(size=3)
        wave = direction / np.linalg.norm(direction) * (2 * math.pi / float(rng.uniform(25, 90)))
        textures.append((*map(float, wave), float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(3, 8))))
    rib_angles = np.concatenate([np.linspace(0.25, 1.25, 4), np.linspace(1.9, 2.9, 4), np.linspace(3.4, 4.55, 4)])
    rib_angles = np.concatenate([rib_angles, np.linspace(4.9, 6.05, 4)])
    ribs = tuple(
        (float(angle + rng.normal(0, 0.06)), float(rng.uniform(-0.004, 0.004)), float(rng.uniform(0, 2 * math.pi)))
        for angle in rib_angles
    )
    trachea = None
    if rng.random() < 0.5:
        trachea = (cx + float(rng.uniform(-5, 5)), spine_y - float(rng.uniform(30, 40)), float(rng.uniform(7, 10)))
    return _Anatomy(
        cx=cx,
        cy=cy,
        body_a=body_a,
        body_b=body_b,
        fat=fat,
        wall=wall,
        mediastinum=float(rng.uniform(22, 34)),
        lung_power=float(rng.uniform(2.2, 3.0)),
        lung_phase=(float(rng.uniform(0, 6.3)), float(rng.uniform(0, 6.3)), float(rng.uniform(0, 6.3))),
        lung_hu=float(rng.uniform(-880, -820)),
        lung_gradient=float(rng.uniform(20, 60)),
        texture=tuple(textures),  # type: ignore[arg-type]
        heart=heart,
        heart_phase=float(rng.uniform(0, 6.3)),
        aorta=(cx + float(rng.uniform(14, 24)), spine_y - float(rng.uniform(20, 28)), float(rng.uniform(10, 14))),
        trachea=trachea,
        spine_y=spine_y,
        vertebra_r=float(rng.uniform(14, 19)),
        disc_phase=float(rng.uniform(0, 26)),
        ribs=ribs,
        muscle_hu=float(rng.uniform(35, 55)),
        fat_hu=float(rng.uniform(-115, -85)),
        blood_hu=float(rng.uniform(35, 50)),
        cortical_hu=float(rng.uniform(750, 1000)),
        cancellous_hu=float(rng.uniform(380, 480)),
    )


def _lung_occupancy(anat: _Anatomy, grid: _Grid, z: float, shape: tuple[int, int]) -> np.ndarray:
    """Where the lungs are at height ``z``: both lobes minus the heart, aorta and spine."""
    occ = np.zeros(shape, np.float32)
    for side in (-1, 1):
        cx, cy, a, b = anat.lung(side, z)
        window, part = _ellipse(grid, cx, cy, a, b, power=anat.lung_power, shape=shape)
        if part.size:
            np.maximum(occ[window], part, out=occ[window])
    for cx, cy, a, b, angle in [
        anat.heart_at(z),
        (anat.aorta[0], anat.aorta[1], anat.aorta[2] + 3, anat.aorta[2] + 3, 0.0),
        (anat.cx, anat.spine_y + 6, anat.vertebra_r + 10, anat.vertebra_r + 16, 0.0),
    ]:
        window, part = _ellipse(grid, cx, cy, a + 3, b + 3, angle=angle, shape=shape)
        if part.size:
            occ[window] *= 1.0 - part
    return occ


def _render_slice(anat: _Anatomy, grid: _Grid, z: float, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The noise-free slice at height ``z`` (HU) and its lung occupancy."""
    img = np.full(shape, _AIR_HU, np.float32)
    _paint(img, grid, anat.fat_hu, anat.cx, anat.cy, anat.body_a, anat.body_b)
    _paint(img, grid, anat.muscle_hu, anat.cx, anat.cy, anat.inner_a, anat.inner_b)
    # Ribs: short bony arcs in the chest wall, moving round the ring as the slice moves along z.
    ring_a, ring_b = anat.inner_a - anat.wall * 0.45, anat.inner_b - anat.wall * 0.45
    for angle0, drift, gate in anat.ribs:
        if math.sin(2 * math.pi * z / 38 + gate) < -0.35:
            continue
        angle = angle0 + drift * z
        rx, ry = anat.cx + ring_a * math.cos(angle), anat.cy + ring_b * math.sin(angle)
        tangent = math.atan2(ring_b * math.cos(angle), -ring_a * math.sin(angle))
        _paint(img, grid, anat.cortical_hu, rx, ry, 9.0, 4.2, angle=tangent)
        _paint(img, grid, anat.cancellous_hu - 100, rx, ry, 7.2, 2.4, angle=tangent)
    # Sternum.
    _paint(img, grid, anat.cancellous_hu, anat.cx, anat.cy - anat.inner_b + 7, 13, 5)
    lung = _lung_occupancy(anat, grid, z, shape)
    texture = np.zeros(shape, np.float32)
    for kx, ky, kz, phase, amplitude in anat.texture:
        texture += amplitude * np.sin(kx * grid.x + ky * grid.y + (kz * z + phase)).astype(np.float32)
    depth = (grid.y - (anat.cy - anat.inner_b)) / (2 * anat.inner_b)
    lung_hu = anat.lung_hu + anat.lung_gradient * depth + texture
    _blend(img, lung, lung_hu)
    hx, hy, ha, hb, hangle = anat.heart_at(z)
    _paint(img, grid, anat.blood_hu, hx, hy, ha, hb, angle=hangle)
    _paint(img, grid, anat.fat_hu + 20, hx - 0.25 * ha, hy - 0.2 * hb, ha * 0.35, hb * 0.25, angle=hangle, weight=0.6)
    ax, ay, ar = anat.aorta
    _paint(img, grid, anat.blood_hu + 5, ax, ay, ar, ar)
    if anat.trachea is not None:
        tx, ty, tr = anat.trachea
        _paint(img, grid, -990.0, tx, ty, tr, tr * 0.85)
    # Spine: vertebral body (or disc), canal, posterior arch and spinous process.
    disc = ((z + anat.disc_phase) % 26.0) < 5.5
    vr, sy = anat.vertebra_r, anat.spine_y
    if disc:
        _paint(img, grid, 85.0, anat.cx, sy, vr, vr * 0.9)
    else:
        _paint(img, grid, anat.cortical_hu, anat.cx, sy, vr, vr * 0.9)
        _paint(img, grid, anat.cancellous_hu, anat.cx, sy, vr - 2.2, vr * 0.9 - 2.2)
    canal_y = sy + vr * 0.9 + 9
    _paint(img, grid, anat.cortical_hu * 0.8, anat.cx, canal_y, 13, 12)
    _paint(img, grid, 15.0, anat.cx, canal_y, 8, 7)
    _paint(img, grid, anat.cortical_hu * 0.8, anat.cx, canal_y + 20, 4, 12)
    for side in (-1, 1):
        _paint(img, grid, anat.cortical_hu * 0.8, anat.cx + side * 20, canal_y - 2, 11, 4.5, angle=side * 0.5)
    return img, lung


# ----------------------------------------------------------------------------- vessels and nodules


def _vessel_tree(
    rng: np.random.Generator, start: np.ndarray, direction: np.ndarray, length: float, radius: float, depth: int
) -> list[_Segment]:
    direction = direction / np.linalg.norm(direction)
    end = start + direction * length
    segments = [_Segment(tuple(start.tolist()), tuple(end.tolist()), radius)]  # type: ignore[arg-type]
    if depth == 0 or radius < 0.55:
        return segments
    for turn in (-1, 1):
        angle = turn * float(rng.uniform(0.35, 0.8))
        ca, sa = math.cos(angle), math.sin(angle)
        child = np.array(
            [
                direction[0] * ca - direction[1] * sa,
                direction[0] * sa + direction[1] * ca,
                direction[2] + float(rng.normal(0, 0.35)),
            ]
        )
        segments += _vessel_tree(
            rng,
            end,
            child,
            length * float(rng.uniform(0.65, 0.85)),
            radius * float(rng.uniform(0.7, 0.85)),
            depth - 1,
        )
    return segments


def _sample_vessels(rng: np.random.Generator, spec: PhantomSpec, anat: _Anatomy, grid: _Grid) -> list[_Segment]:
    segments: list[_Segment] = []
    z_lo, z_hi = float(grid.z[0]), float(grid.z[-1])
    for side in (-1, 1):
        trees = int(rng.integers(spec.vessel_trees_per_lung[0], spec.vessel_trees_per_lung[1] + 1))
        for _ in range(trees):
            z = float(rng.uniform(z_lo - 25, z_hi + 25))
            cx, cy, a, b = anat.lung(side, z)
            start = np.array([cx - side * a * float(rng.uniform(0.2, 0.8)), cy + float(rng.uniform(-0.5, 0.5)) * b, z])
            heading = float(rng.uniform(-1.1, 1.1))
            direction = np.array([side * math.cos(heading), math.sin(heading), float(rng.uniform(-1.2, 1.2))])
            segments += _vessel_tree(
                rng, start, direction, float(rng.uniform(20, 40)), float(rng.uniform(1.0, 1.8)), depth=4
            )
    return segments


def _slab_offsets(thickness: float) -> np.ndarray:
    """Sample heights within a slice, so thin structures get partial-volume averaged along z."""
    return (np.array([-1 / 3, 0.0, 1 / 3], np.float32) * thickness).astype(np.float32)


def _z_range(grid: _Grid, lo: float, hi: float) -> tuple[int, int]:
    z0, t = float(grid.z[0]), grid.thickness
    k0 = max(math.floor((lo - z0) / t - 0.5), 0)
    k1 = min(math.ceil((hi - z0) / t + 0.5) + 1, len(grid.z))
    return k0, k1


def _box(grid: _Grid, lo: float, hi: float, axis: Literal["x", "y"], size: int) -> tuple[int, int]:
    origin = grid.x0 if axis == "x" else grid.y0
    i0 = max(math.floor((lo - origin) / grid.spacing), 0)
    i1 = min(math.ceil((hi - origin) / grid.spacing) + 1, size)
    return i0, i1


def _render_vessels(segments: list[_Segment], grid: _Grid, shape: tuple[int, int, int]) -> np.ndarray:
    """Vessel occupancy of the volume: capsules with a one-pixel soft edge, averaged across the slab."""
    occ = np.zeros(shape, np.float32)
    offsets = _slab_offsets(grid.thickness)
    ps = grid.spacing
    for seg in segments:
        p0, p1 = np.array(seg.start, np.float32), np.array(seg.end, np.float32)
        pad = seg.radius + 2 * ps
        lo, hi = np.minimum(p0, p1) - pad, np.maximum(p0, p1) + pad
        k0, k1 = _z_range(grid, float(lo[2]), float(hi[2]))
        r0, r1 = _box(grid, float(lo[1]), float(hi[1]), "y", shape[1])
        c0, c1 = _box(grid, float(lo[0]), float(hi[0]), "x", shape[2])
        if k1 <= k0 or r1 <= r0 or c1 <= c0:
            continue
        xs = grid.x[0, c0:c1][None, None, None, :]
        ys = grid.y[r0:r1, 0][None, None, :, None]
        zs = (grid.z[k0:k1, None] + offsets[None, :])[:, :, None, None]
        d = p1 - p0
        t = ((xs - p0[0]) * d[0] + (ys - p0[1]) * d[1] + (zs - p0[2]) * d[2]) / float(d @ d)
        t = np.clip(t, 0.0, 1.0)
        dist = np.sqrt((xs - p0[0] - t * d[0]) ** 2 + (ys - p0[1] - t * d[1]) ** 2 + (zs - p0[2] - t * d[2]) ** 2)
        part = np.clip(0.5 + (seg.radius - dist) / ps, 0.0, 1.0).mean(axis=1)
        np.maximum(occ[k0:k1, r0:r1, c0:c1], part, out=occ[k0:k1, r0:r1, c0:c1])
    return occ


def _nodule_occupancy(nod: _Nodule, grid: _Grid, shape: tuple[int, int, int]) -> tuple[tuple[slice, ...], np.ndarray]:
    ps = grid.spacing
    cx, cy, cz = nod.center
    ax, ay, az = nod.axes
    edge = 2.5 if nod.kind == "ground_glass" else ps
    pad = max(ax, ay, az) * (1 + nod.lobe_amplitude) + 2 * edge + ps
    k0, k1 = _z_range(grid, cz - pad, cz + pad)
    r0, r1 = _box(grid, cy - pad, cy + pad, "y", shape[1])
    c0, c1 = _box(grid, cx - pad, cx + pad, "x", shape[2])
    window = (slice(k0, k1), slice(r0, r1), slice(c0, c1))
    xs = grid.x[0, c0:c1][None, None, None, :] - cx
    ys = grid.y[r0:r1, 0][None, None, :, None] - cy
    zs = (grid.z[k0:k1, None] + _slab_offsets(grid.thickness)[None, :])[:, :, None, None] - cz
    rho = np.sqrt((xs / ax) ** 2 + (ys / ay) ** 2 + (zs / az) ** 2)
    if nod.lobes:
        theta = np.arctan2(ys, xs)
        rho = rho / (1 + nod.lobe_amplitude * np.sin(nod.lobes * theta + nod.lobe_phase))
    mean_axis = (ax + ay + az) / 3
    part = np.clip(0.5 + (1 - rho) * mean_axis / edge, 0.0, 1.0).mean(axis=1)
    return window, part.astype(np.float32)


def _sample_nodules(
    rng: np.random.Generator, spec: PhantomSpec, anat: _Anatomy, grid: _Grid, shape: tuple[int, int, int]
) -> list[_Nodule]:
    if rng.random() < spec.empty_series_fraction:
        return []
    count = int(rng.integers(spec.nodules_per_series[0], spec.nodules_per_series[1] + 1))
    nodules: list[_Nodule] = []
    for _ in range(count):
        for _attempt in range(60):
            radius = float(rng.uniform(*spec.nodule_radius_mm))
            axes = tuple(radius * float(s) for s in rng.uniform(0.88, 1.12, size=3))
            mean_radius = sum(axes) / 3
            axes = tuple(a * radius / mean_radius for a in axes)
            z = float(rng.uniform(grid.z[0], grid.z[-1]))
            lung = _lung_occupancy(anat, grid, z, shape[1:])
            candidates = np.argwhere(lung >= 1.0)
            if not len(candidates):
                continue
            row, col = candidates[int(rng.integers(len(candidates)))]
            x, y = float(grid.x[0, col]), float(grid.y[row, 0])
            if not _inside_lung(lung, grid, x, y, 0.75 * radius):
                continue
            if any(math.dist((x, y, z), other.center) < radius + sum(other.axes) / 3 + 6 for other in nodules):
                continue
            ground_glass = rng.random() < spec.ground_glass_fraction
            kind: Literal["solid", "ground_glass"] = "ground_glass" if ground_glass else "solid"
            hu = float(rng.uniform(*(spec.ground_glass_hu if ground_glass else spec.solid_hu)))
            lobes = int(rng.integers(3, 7)) if (not ground_glass and rng.random() < 0.5) else 0
            nodules.append(
                _Nodule(
                    kind=kind,
                    center=(x, y, z),
                    axes=axes,  # type: ignore[arg-type]
                    hu=hu,
                    lobes=lobes,
                    lobe_amplitude=float(rng.uniform(0.03, 0.08)) if lobes else 0.0,
                    lobe_phase=float(rng.uniform(0, 2 * math.pi)),
                )
            )
            break
        else:
            logger.debug("could not place a nodule after 60 attempts; series gets one fewer")
    return nodules


def _inside_lung(lung: np.ndarray, grid: _Grid, x: float, y: float, reach: float) -> bool:
    for angle in np.linspace(0, 2 * math.pi, 12, endpoint=False):
        col = round((x + reach * math.cos(angle) - grid.x0) / grid.spacing)
        row = round((y + reach * math.sin(angle) - grid.y0) / grid.spacing)
        if not (0 <= row < lung.shape[0] and 0 <= col < lung.shape[1]) or lung[row, col] < 0.5:
            return False
    return True


# ----------------------------------------------------------------------------- series


def _render(spec: PhantomSpec, rng: np.random.Generator) -> tuple[np.ndarray, list[_Nodule], _Grid]:
    """Render one series volume in HU with its nodules."""
    ps, t = spec.pixel_spacing_mm, spec.slice_thickness_mm
    shape = (spec.slices, spec.rows, spec.columns)
    z0 = round(float(rng.uniform(-260, -120)) * 2) / 2
    grid = _Grid(
        x=((np.arange(spec.columns, dtype=np.float32) - (spec.columns - 1) / 2) * ps)[None, :],
        y=((np.arange(spec.rows, dtype=np.float32) - (spec.rows - 1) / 2) * ps)[:, None],
        z=(z0 + np.arange(spec.slices, dtype=np.float32) * t).astype(np.float32),
        spacing=ps,
        thickness=t,
    )
    anat = _sample_anatomy(rng, spec)
    volume = np.empty(shape, np.float32)
    lungs = np.empty(shape, np.float32)
    for k, z in enumerate(grid.z):
        volume[k], lungs[k] = _render_slice(anat, grid, float(z), shape[1:])
    vessels = _render_vessels(_sample_vessels(rng, spec, anat, grid), grid, shape) * lungs
    _blend(volume, vessels, anat.blood_hu)
    nodules = _sample_nodules(rng, spec, anat, grid, shape)
    for nod in nodules:
        window, occ = _nodule_occupancy(nod, grid, shape)
        _blend(volume[window], occ, nod.hu)
    volume = _blur_inplane(volume, 0.6)
    if spec.noise_hu > 0:
        kernel = _gaussian_kernel(0.9)
        white = rng.standard_normal(shape, dtype=np.float32)
        volume += _blur_inplane(white, 0.9) * (spec.noise_hu / float(np.sum(kernel.astype(np.float64) ** 2)))
    return volume, nodules, grid


def _slice_truths(spec: PhantomSpec, nodules: list[_Nodule], grid: _Grid, sop_uids: list[str]) -> list[SliceTruth]:
    slices = []
    for k, z in enumerate(grid.z):
        visible: list[SliceNodule] = []
        grazing = False
        for index, nod in enumerate(nodules):
            dz = float(z) - nod.center[2]
            ax, ay, az = nod.axes
            if abs(dz) >= az:
                continue
            radius = math.sqrt(ax * ay) * math.sqrt(1 - (dz / az) ** 2)
            if radius < spec.visible_radius_mm:
                grazing = True
                continue
            x, y = nod.center[0], nod.center[1]
            visible.append(
                SliceNodule(
                    index=index,
                    row=(y - grid.y0) / grid.spacing,
                    column=(x - grid.x0) / grid.spacing,
                    x_mm=x,
                    y_mm=y,
                    radius_mm=radius,
                    hu=nod.hu,
                )
            )
        visible.sort(key=lambda n: -n.radius_mm)
        slices.append(
            SliceTruth(
                instance_number=k + 1,
                sop_instance_uid=sop_uids[k],
                z_mm=float(z),
                has_nodule=bool(visible),
                grazing=grazing and not visible,
                nodules=visible,
            )
        )
    return slices


def _default_patient(seed: int, patient_id: str | None) -> _Patient:
    rng = np.random.default_rng(_child_seed(seed, 0xBEEF))
    pid = patient_id or f"PHANTOM-{seed % 1_000_000:06d}"
    birth = dt.date(1940, 1, 1) + dt.timedelta(days=int(rng.integers(0, 40 * 365)))
    study_date = dt.date(2024, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365)))
    return _Patient(
        patient_id=pid,
        name=f"Phantom^Chest^{seed % 10_000:04d}",
        birth_date=birth.strftime("%Y%m%d"),
        sex=str(rng.choice(["F", "M", "O"])),
        study_uid=_uid(seed, "study", pid),
        study_date=study_date,
        accession=f"ACC{seed % 10_000_000:07d}",
        study_id=f"{seed % 100_000}",
    )


def _datasets(
    spec: PhantomSpec,
    stored: np.ndarray,
    grid: _Grid,
    patient: _Patient,
    *,
    series_uid: str,
    frame_uid: str,
    sop_uids: list[str],
    series_number: int,
) -> list[Dataset]:
    date = patient.study_date.strftime("%Y%m%d")
    datasets = []
    for k, z in enumerate(grid.z):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = UID(sop_uids[k])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "MEDGE_PHANTOM"
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceCreationDate = date
        ds.InstanceCreationTime = "093000"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uids[k]
        ds.StudyDate = date
        ds.SeriesDate = date
        ds.AcquisitionDate = date
        ds.ContentDate = date
        ds.StudyTime = "090000"
        ds.SeriesTime = f"0915{series_number % 60:02d}"
        ds.AcquisitionTime = "091500"
        ds.ContentTime = f"0915{k % 60:02d}"
        ds.AccessionNumber = patient.accession
        ds.Modality = "CT"
        ds.Manufacturer = "medge"
        ds.InstitutionName = "medge phantom site"
        ds.ReferringPhysicianName = "Referrer^Phantom"
        ds.StationName = "PHANTOM01"
        ds.StudyDescription = "CT CHEST"
        ds.SeriesDescription = f"Chest {spec.slice_thickness_mm:g}mm phantom"
        ds.ManufacturerModelName = "chest-ct-phantom"
        ds.PatientName = patient.name
        ds.PatientID = patient.patient_id
        ds.PatientBirthDate = patient.birth_date
        ds.PatientSex = patient.sex
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = f"{spec.slice_thickness_mm:g}"
        ds.KVP = "120"
        ds.DataCollectionDiameter = "500"
        ds.SoftwareVersions = "medge-phantom-1"
        ds.ProtocolName = "CHEST ROUTINE"
        ds.ReconstructionDiameter = f"{spec.columns * spec.pixel_spacing_mm:g}"
        ds.GantryDetectorTilt = "0"
        ds.TableHeight = "150"
        ds.RotationDirection = "CW"
        ds.ExposureTime = "500"
        ds.XRayTubeCurrent = 200
        ds.Exposure = 100
        ds.ConvolutionKernel = "STANDARD"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = patient.study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = patient.study_id
        ds.SeriesNumber = series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{grid.x0:.5f}", f"{grid.y0:.5f}", f"{float(z):.3f}"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = "SN"
        ds.SliceLocation = f"{float(z):.3f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = spec.rows
        ds.Columns = spec.columns
        ds.PixelSpacing = [f"{spec.pixel_spacing_mm:g}", f"{spec.pixel_spacing_mm:g}"]
        ds.BitsAllocated = 16
        ds.BitsStored = _BITS_STORED
        ds.HighBit = _BITS_STORED - 1
        ds.PixelRepresentation = 0
        ds.WindowCenter = "-600"
        ds.WindowWidth = "1500"
        ds.WindowCenterWidthExplanation = "LUNG"
        ds.RescaleIntercept = f"{RESCALE_INTERCEPT:g}"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = stored[k].tobytes()
        ds["PixelData"].VR = "OW"
        datasets.append(ds)
    return datasets


def generate_series(
    spec: PhantomSpec | None = None,
    *,
    seed: int,
    patient_id: str | None = None,
    series_number: int = 1,
) -> PhantomSeries:
    """Render one chest-CT series (a study of its own) in memory.

    Args:
        spec: what to draw; the defaults give 32 slices of 256x256 at 2.5 mm.
        seed: makes everything reproducible: pixels, UIDs, dates and truth.
        patient_id: Patient ID to write; derived from the seed when omitted.
        series_number: the Series Number to write.
    """
    return _series(spec or PhantomSpec(), seed, _default_patient(seed, patient_id), series_number)


def _series(spec: PhantomSpec, seed: int, patient: _Patient, series_number: int) -> PhantomSeries:
    rng = np.random.default_rng(seed)
    volume, nodules, grid = _render(spec, rng)
    stored = np.clip(np.rint(volume - RESCALE_INTERCEPT), 0, _MAX_STORED).astype(np.uint16)
    series_uid = _uid(seed, "series", patient.study_uid, series_number)
    frame_uid = _uid(seed, "frame", series_uid)
    sop_uids = [_uid(seed, "instance", series_uid, k) for k in range(spec.slices)]
    datasets = _datasets(
        spec,
        stored,
        grid,
        patient,
        series_uid=series_uid,
        frame_uid=frame_uid,
        sop_uids=sop_uids,
        series_number=series_number,
    )
    truth = SeriesTruth(
        seed=seed,
        series_instance_uid=series_uid,
        series_number=series_number,
        frame_of_reference_uid=frame_uid,
        rows=spec.rows,
        columns=spec.columns,
        pixel_spacing_mm=spec.pixel_spacing_mm,
        slice_thickness_mm=spec.slice_thickness_mm,
        origin_mm=(grid.x0, grid.y0, float(grid.z[0])),
        nodules=[
            NoduleTruth(
                index=index,
                kind=nod.kind,
                center_mm=nod.center,
                center_voxel=(
                    (nod.center[2] - float(grid.z[0])) / grid.thickness,
                    (nod.center[1] - grid.y0) / grid.spacing,
                    (nod.center[0] - grid.x0) / grid.spacing,
                ),
                radius_mm=sum(nod.axes) / 3,
                semi_axes_mm=nod.axes,
                hu=nod.hu,
            )
            for index, nod in enumerate(nodules)
        ],
        slices=_slice_truths(spec, nodules, grid, sop_uids),
    )
    return PhantomSeries(datasets=datasets, truth=truth, hu=volume)


def write_study(
    out_dir: str | Path,
    spec: PhantomSpec | None = None,
    *,
    seed: int,
    patient_id: str | None = None,
    n_series: int = 1,
) -> StudyTruth:
    """Write one study as ``out_dir/<StudyInstanceUID>/<SeriesInstanceUID>/<instance>.dcm``.

    The study folder also gets ``truth.json`` (a :class:`StudyTruth`).

    Returns:
        the truth, with file and folder paths relative to ``out_dir``'s study folder.
    """
    spec = spec or PhantomSpec()
    patient = _default_patient(seed, patient_id)
    study_dir = Path(out_dir) / patient.study_uid
    series_truths = []
    for index in range(n_series):
        series = _series(spec, _child_seed(seed, index), patient, index + 1)
        series_dir = study_dir / series.truth.series_instance_uid
        series_dir.mkdir(parents=True, exist_ok=True)
        slices = []
        for ds, slice_truth in zip(series.datasets, series.truth.slices, strict=True):
            name = f"{slice_truth.instance_number:04d}.dcm"
            ds.save_as(series_dir / name, enforce_file_format=True)
            slices.append(slice_truth.model_copy(update={"file": f"{series_dir.name}/{name}"}))
        series_truths.append(series.truth.model_copy(update={"slices": slices, "folder": series_dir.name}))
    truth = StudyTruth(
        seed=seed,
        patient_id=patient.patient_id,
        study_instance_uid=patient.study_uid,
        folder=study_dir.name,
        spec=spec,
        series=series_truths,
    )
    (study_dir / "truth.json").write_text(truth.model_dump_json(indent=2), encoding="utf-8")
    logger.debug("wrote phantom study %s (%d series)", study_dir, n_series)
    return truth


def generate_studies(
    out_dir: str | Path, n_studies: int, spec: PhantomSpec | None = None, seed: int = 0
) -> list[StudyTruth]:
    """Write ``n_studies`` single-series studies under ``out_dir`` plus an index ``out_dir/truth.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    truths = [
        write_study(out, spec, seed=_child_seed(seed, 1_000_000 + k), patient_id=f"PHANTOM-{seed}-{k:04d}")
        for k in range(n_studies)
    ]
    index = {"seed": seed, "studies": [json.loads(t.model_dump_json()) for t in truths]}
    (out / "truth.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return truths


def load_truth(path: str | Path) -> StudyTruth:
    """Read a study's ``truth.json`` back."""
    return StudyTruth.model_validate_json(Path(path).read_text(encoding="utf-8"))
