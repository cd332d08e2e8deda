"""The runtime benchmark of issue 4: the appliance's latency, throughput, DICOM ingest, cold start and memory.

Run from the repository root::

    python -m benchmarks.runtime_benchmark            # the full benchmark (~2-3 min on 2 cores)
    python -m benchmarks.runtime_benchmark --quick    # a smoke run at small sizes (< 1 min)
    python -m benchmarks.runtime_benchmark --model heavy  # the same on a ResNet-18-class model (~2 min)

It compiles the shipped reference model for ``generic-x86_64-cpu`` (INT8, as
``make demo`` does, signed with a throwaway key) and measures, each figure
next to its reference in the same run:

1. per-instance latency, spooled DICOM → finding in the durable outbox, through
   a real :class:`runtime.appliance.Appliance`, instances sent one at a time,
   against ``pydicom.dcmread`` + the package's preprocessing + a bare engine call
   on the same instances, the two alternating (budget <= 1.15x);
2. pipelined throughput on a stream of instances submitted at once, to the last
   finding, against the bare engine on the already-preprocessed tensors at the
   profile's batch size (budget >= 0.9x);
3. C-STORE ingest from dcmtk's ``storescu`` over one association into medge's
   Storage SCP + spool (fsync'd) + work queue, against dcmtk's ``storescp``
   writing the same instances, alternating rounds (budget >= 300 instances/s of
   128x128 CT and >= 0.25x storescp; 512x512 reported);
4. cold start (imports + verify + engine load + warm-up + golden samples) of the
   reference package in a fresh interpreter (budget < 3 s), and the resident
   memory of an appliance process with it live (budget < 250 MB), against a
   bare ``onnxruntime.InferenceSession`` on the same engine file.

With ``--model heavy`` the package is instead a synthetic ResNet-18-like
model built at run time (:mod:`benchmarks.synthetic_model`: random weights,
the reference model's input and outputs, so its model config, preprocessing
and post-processing apply), whose inference (10-30 ms) dominates the
per-instance work as real imaging models' does. Sections 1, 2 and 4 run on
it; section 3 is skipped (ingest never touches the model).

It prints a table (figure, value, reference, ratio, budget, PASS/FAIL) and
writes the figures as JSON under ``build/benchmarks/``. Absolute times on a
shared machine are noise; the ratios, measured side by side, are what the
budgets judge (the two absolute budgets excepted).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import json
import logging
import math
import os
import random
import select
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from benchmarks.report import BenchmarkReport, Figure, format_markdown, machine_facts
from benchmarks.report import format_table as report_table
from benchmarks.synthetic_model import build_heavy_model
from device_profiles import DeviceProfile, get_profile
from quantization.calibration import labels_from_phantom_truth
from quantization.compile import CompileOptions, CompileResult, compile_package
from quantization.errors import QuantizationGateError
from runtime.analyzer import Analyzer
from runtime.appliance import Appliance
from runtime.benchmark import ColdStart, bare_session_cold_start, package_cold_start
from runtime.ingest import StorageSCP
from runtime.ingest.scp import MAX_PDU_BYTES
from runtime.spool import Spool, StoredInstance
from runtime.work_queue import WorkQueue
from sdk.appliance_config import ApplianceConfig, DicomSection
from sdk.model_config import ModelConfig, load_model_config
from sdk.preprocess_spec import PreprocessSpec
from sdk.preprocessing import preprocess
from sdk.reference_model import config_path, onnx_path
from sdk.signing import generate_keypair, load_private_key
from sdk.testing import PhantomSpec, generate_studies
from sdk.testing.mosquitto import free_port
from sdk.trust import TrustStore

__all__ = ["FULL", "MODELS", "QUICK", "Settings", "format_table", "main", "run_benchmark"]

log = logging.getLogger(__name__)

PROFILE = "generic-x86_64-cpu"
STORESCU = "/usr/bin/storescu"  # the full path: pynetdicom installs its own storescu in the venv's bin
STORESCP = "/usr/bin/storescp"
REPORT_DIR = Path(__file__).resolve().parents[1] / "build" / "benchmarks"

LATENCY_RATIO_MAX = 1.15
THROUGHPUT_RATIO_MIN = 0.9
INGEST_RATE_MIN = 300.0
INGEST_RATIO_MIN = 0.25
COLD_START_MAX_S = 3.0
RSS_MAX_MB = 250.0

CALIBRATION_SEED = 4101
LATENCY_SEED = 4102
STREAM_SEED = 4103
INGEST_SEED = 4104
SCANNER_AE = "SCANNER"
OUR_AE = "MEDGE"

GROUP_PIPELINE = f"chest-ct-nodule on {PROFILE}: latency and throughput"
GROUP_INGEST = "C-STORE ingest (storescu, one association)"
GROUP_START = "cold start and memory"

MODELS = ("reference", "heavy")
"""``reference``: the shipped chest-CT nodule model; ``heavy``: a synthetic ResNet-18-like model built at run time."""
HEAVY_NAME = "synthetic-resnet18"
GROUP_PIPELINE_HEAVY = f"{HEAVY_NAME} (heavy model) on {PROFILE}: latency and throughput"
GROUP_START_HEAVY = "cold start and memory (heavy model)"


@dataclass(frozen=True)
class Settings:
    """How big the run is.

    Attributes:
        name: ``full`` or ``quick``.
        calibration_studies: phantom studies the reference model is calibrated on.
        calibration_slices: slices per calibration study.
        latency_instances: instances timed one at a time (each through both paths).
        warm_up_instances: instances sent through both paths first, untimed.
        stream_instances: instances in one throughput stream.
        stream_rounds: throughput rounds (a fresh stream each; the reference alternates).
        ingest_small: 128x128 instances per storescu run.
        ingest_large: 512x512 instances per storescu run.
        ingest_rounds: rounds over the receivers (order shuffled each round).
        cold_starts: fresh processes per kind (package, bare session).
        memory_instances: instances the appliance in the memory probe analyses before it is measured.
        settle_s: pause before each timed measurement (ONNX Runtime's spinning threads go idle).
        stream_poll_s: how often the throughput probe counts the findings (a slow poll: it must not
            take CPU from the pipeline it measures).
    """

    name: str
    calibration_studies: int
    calibration_slices: int
    latency_instances: int
    warm_up_instances: int
    stream_instances: int
    stream_rounds: int
    ingest_small: int
    ingest_large: int
    ingest_rounds: int
    cold_starts: int
    memory_instances: int
    settle_s: float = 0.05
    stream_poll_s: float = 0.01


FULL = Settings(
    name="full",
    calibration_studies=4,
    calibration_slices=32,
    latency_instances=60,
    warm_up_instances=4,
    stream_instances=300,
    stream_rounds=3,
    ingest_small=1000,
    ingest_large=200,
    ingest_rounds=7,
    cold_starts=3,
    memory_instances=40,
)
QUICK = Settings(
    name="quick",
    calibration_studies=3,
    calibration_slices=12,
    latency_instances=6,
    warm_up_instances=2,
    stream_instances=24,
    stream_rounds=1,
    ingest_small=40,
    ingest_large=8,
    ingest_rounds=1,
    cold_starts=1,
    memory_instances=4,
    settle_s=0.01,
)


# ----------------------------------------------------------------------------- set-up


def _phantoms(folder: Path, count: int, spec: PhantomSpec, seed: int) -> list[Path]:
    """``count`` phantom CT instances (single-series studies of ``spec.slices`` slices), as files."""
    studies = math.ceil(count / spec.slices)
    generate_studies(folder, studies, spec, seed=seed)
    files = sorted(folder.rglob("*.dcm"))
    if len(files) < count:
        raise RuntimeError(f"{folder}: {len(files)} phantom instances written, {count} wanted")
    return files[:count]


@dataclass(frozen=True)
class _Package:
    path: Path
    folder: Path
    trusted_dir: Path
    trust: TrustStore
    engine_file: Path
    record: dict[str, Any]


def _heavy_config(shipped: ModelConfig) -> ModelConfig:
    """The shipped model config, copied in memory for the synthetic model (the shipped file is never changed).

    Only the name and description differ: input, outputs, threshold,
    preprocessing and the accuracy gate are the reference model's. The gate
    needs no loosening because the synthetic model's scores sit far from the
    threshold and from 0.5 (see :mod:`benchmarks.synthetic_model`) and it is
    compiled without ground truth, so the AUC criterion, meaningless for
    random weights, does not apply.
    """
    data = shipped.model_dump(mode="python")
    data.update(
        name=HEAVY_NAME,
        description="Synthetic ResNet-18-like model with random weights, for timing the runtime only",
    )
    return ModelConfig.model_validate(data)


def _compile_record(result: CompileResult, fallback: str | None) -> dict[str, Any]:
    gate = result.gate
    return {
        "precision": result.manifest.engine.precision,
        "method": result.manifest.compile.method,
        "float_nodes": len(result.manifest.compile.float_nodes),
        "gate_passed": gate.passed if gate is not None else None,
        "agreement": gate.report.agreement if gate is not None else None,
        "flip_rate": gate.report.flip_rate if gate is not None else None,
        "max_abs_delta": gate.report.max_abs_delta if gate is not None else None,
        "fp32_bytes": result.fp32_bytes,
        "engine_bytes": result.engine_bytes,
        "compile_s": round(result.seconds["total"], 1),
        "int8_fallback": fallback,
    }


def _build_package(workdir: Path, settings: Settings, model: str = "reference") -> _Package:
    """The model compiled for the x86 profile as ``make demo`` does (INT8), signed with a throwaway key.

    For ``heavy``, a synthetic model is built first; should no INT8 setting pass
    the accuracy gate on it, it is packaged in FP32 and the record says why.
    """
    calib = workdir / "calibration"
    generate_studies(
        calib, settings.calibration_studies, PhantomSpec(slices=settings.calibration_slices), seed=CALIBRATION_SEED
    )
    keys = workdir / "keys"
    pair = generate_keypair(keys, "runtime-benchmark", overwrite=True)
    config = load_model_config(config_path())
    source = onnx_path()
    labels = labels_from_phantom_truth(calib) or None
    record: dict[str, Any] = {"model": model}
    if model == "heavy":
        built = build_heavy_model(onnx_path(), workdir / "heavy" / f"{HEAVY_NAME}.onnx")
        source, config, labels = built.path, _heavy_config(config), None
        record.update(description=built.description, parameters=built.parameters, macs=built.macs)
    else:
        record["description"] = f"{config.name} {config.version} (the shipped reference model)"
    folder = workdir / "packages"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{config.name}-{config.version}-{PROFILE}.medge"
    key = load_private_key(pair.private_path)
    options = CompileOptions(max_calibration=settings.calibration_studies * settings.calibration_slices, labels=labels)
    fallback: str | None = None
    try:
        result = compile_package(source, config, get_profile(PROFILE), calib, key, path, options)
    except QuantizationGateError as exc:
        if model != "heavy":
            raise
        fallback = f"no INT8 setting passed the accuracy gate ({exc}); packaged in FP32"
        log.warning("%s: %s", HEAVY_NAME, fallback)
        options = dataclasses.replace(options, precision="fp32")
        result = compile_package(source, config, get_profile(PROFILE), calib, key, path, options)
    record.update(_compile_record(result, fallback))
    engine_file = workdir / "engine" / "model.onnx"
    engine_file.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path) as archive:
        engine_file.write_bytes(archive.read("model.onnx"))
    # Only the public key is trusted; the private one stays beside it in the throwaway folder.
    trusted_dir = workdir / "trusted"
    trusted_dir.mkdir(exist_ok=True)
    shutil.copy2(pair.public_path, trusted_dir / pair.public_path.name)
    return _Package(path, folder, trusted_dir, TrustStore.load(trusted_dir), engine_file, record)


# The benchmark reads the outbox itself; the MQTT reporter (no broker here) would only add noise.
_NO_REPORTER: dict[str, Any] = {"report": False}


def _appliance_config(data_dir: Path, packages_dir: Path) -> dict[str, Any]:
    return {
        "appliance": {
            "site": "bench",
            "device": "bench-1",
            "profile": PROFILE,
            "demo": True,
            "data_dir": str(data_dir),
        },
        "dicom": {"ae_title": OUR_AE, "host": "127.0.0.1"},
        "mqtt": {"port": 1883},
        "packages": {"dir": str(packages_dir)},
    }


_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400


class _FileEvents:
    """Wakes a waiter when a file is deleted in a watched folder (Linux inotify), so it needs no fast polling.

    Polling the outbox every fraction of a millisecond costs the appliance
    dearly on 2 cores: each wake-up preempts one of ONNX Runtime's intra-op
    threads and the whole inference waits for it (measured: the engine stage
    took 7 ms instead of 2.7 ms with a 0.2 ms poll). Writes to the work queue
    are no use as a signal either: SQLite writes the WAL before the fsync that
    makes the commit visible, and nothing is written after it. What follows the
    commit at once is the spooled file's deletion (the appliance removes an
    instance once its findings are durable), so the latency probe waits for
    that and then checks the outbox. Without inotify it polls every ``fallback_s``.
    """

    def __init__(self, fallback_s: float = 0.001) -> None:
        self._fallback = fallback_s
        self._fd = -1
        self._libc: Any = None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, AttributeError):
            fd = -1
        if fd >= 0:
            self._fd, self._libc = fd, libc
        else:
            log.warning("no inotify here: the benchmark polls the outbox every %g s", fallback_s)

    def watch_deletions(self, folder: Path) -> None:
        """Wake on deletions in ``folder`` (watching it again is harmless)."""
        if self._fd >= 0:
            self._libc.inotify_add_watch(self._fd, os.fsencode(folder), _IN_DELETE | _IN_DELETE_SELF)

    def drain(self) -> None:
        """Forget the events seen so far (call before checking what they may have changed)."""
        if self._fd < 0:
            return
        with contextlib.suppress(BlockingIOError):
            while os.read(self._fd, 65536):
                pass

    def wait(self, timeout_s: float) -> bool:
        """Return True when an event came, False after ``timeout_s`` without one."""
        if self._fd < 0:
            time.sleep(min(timeout_s, self._fallback))
            return False
        readable, _, _ = select.select([self._fd], [], [], max(0.0, timeout_s))
        return bool(readable)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Outbox:
    """The appliance's outbox seen through a read-only connection of our own.

    A WAL reader sees a transaction the moment it commits and never takes the
    work queue's lock; the latency probe sleeps until the instance's spooled
    file is deleted (:class:`_FileEvents`), so watching for findings does not
    slow the appliance down. ``late`` counts waits that ended on the safety
    timeout instead (their latency is overstated by up to ``_SAFETY_S``).
    """

    _SAFETY_S = 0.05

    def __init__(self, database: Path) -> None:
        self._db = sqlite3.connect(f"file:{database}?mode=ro", uri=True, isolation_level=None)
        self._events = _FileEvents()
        self.late = 0

    def watch_deletions(self, folder: Path) -> None:
        self._events.watch_deletions(folder)

    def wait(self, condition: Any, timeout_s: float, what: str) -> float:
        """Wait until ``condition()`` holds; return ``perf_counter()`` when it was seen to."""
        deadline = time.perf_counter() + timeout_s
        woken = True
        while True:
            self._events.drain()
            if condition():
                if not woken:
                    self.late += 1
                return time.perf_counter()
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
            woken = self._events.wait(min(remaining, self._SAFETY_S))

    def has(self, sop_instance_uid: str) -> bool:
        rows = self._db.execute("SELECT 1 FROM outbox WHERE sop_instance_uid = ? LIMIT 1", (sop_instance_uid,))
        return bool(rows.fetchall())  # fetchall: no read transaction stays open to hold back checkpoints

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM outbox").fetchall()[0][0])

    def latency_ms(self, sop_instance_uid: str) -> dict[str, float]:
        rows = self._db.execute("SELECT payload FROM outbox WHERE sop_instance_uid = ?", (sop_instance_uid,))
        found = rows.fetchall()
        return dict(json.loads(found[0][0]).get("latency_ms", {})) if found else {}

    def close(self) -> None:
        self._events.close()
        self._db.close()


def _wait_until(condition: Any, poll_s: float, timeout_s: float, what: str) -> float:
    """Poll ``condition()`` until it is true; return ``perf_counter()`` when it was seen true."""
    deadline = time.perf_counter() + timeout_s
    while True:
        if condition():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def _bootstrap_median(values: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval of the median."""
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(data, size=(2000, len(data))), axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return float(low), float(high)


# ----------------------------------------------------------------------------- 1 and 2: the pipeline


@dataclass
class _Pipeline:
    appliance: Appliance
    outbox: _Outbox
    analyzer: Analyzer
    spec: PreprocessSpec
    batch: int
    group: str


@contextlib.contextmanager
def _running_appliance(workdir: Path, package: _Package, group: str) -> Iterator[_Pipeline]:
    packages_dir = workdir / "appliance" / "packages"
    packages_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(package.path, packages_dir / package.path.name)
    config = ApplianceConfig(**_appliance_config(workdir / "appliance" / "data", packages_dir))
    appliance = Appliance(config, trusted=package.trust, dicom_port=0, health_port=0, **_NO_REPORTER)
    appliance.start()
    outbox: _Outbox | None = None
    try:
        live = list(appliance.packages.live.values())
        if len(live) != 1:
            reasons = "; ".join(r.reason for r in appliance.packages.refused) or "no package found"
            raise RuntimeError(f"the {package.record['model']} package did not go live: {reasons}")
        outbox = _Outbox(appliance.data_dir / "queue.sqlite")
        profile: DeviceProfile = appliance.profile
        # The reference path uses the appliance's own engine (one ONNX Runtime session, one thread pool):
        # a second session's spinning threads would disturb whichever path runs next.
        yield _Pipeline(
            appliance, outbox, live[0].analyzer, live[0].manifest.model.preprocessing, profile.batch.default, group
        )
    finally:
        if outbox is not None:
            outbox.close()
        appliance.stop()


def _through_appliance(pipeline: _Pipeline, path: Path) -> tuple[float, float, str]:
    """Submit one instance and wait for its finding: (spooled → finding, submit → finding) in ms, and its UID."""
    header = pydicom.dcmread(path, stop_before_pixels=True)
    spooled = pipeline.appliance.spool.path_for(
        str(header.StudyInstanceUID), str(header.SeriesInstanceUID), str(header.SOPInstanceUID)
    )
    t0 = time.perf_counter()
    uid = pipeline.appliance.submit(path)
    t1 = time.perf_counter()
    pipeline.outbox.watch_deletions(spooled.parent)  # it exists now; the file goes once the finding is durable
    t2 = pipeline.outbox.wait(lambda: pipeline.outbox.has(uid), 60.0, f"the finding of {uid}")
    return (t2 - t1) * 1e3, (t2 - t0) * 1e3, uid


def _bare(pipeline: _Pipeline, path: Path) -> float:
    """The reference: read, preprocess and run the engine, in ms."""
    t0 = time.perf_counter()
    ds = pydicom.dcmread(path)
    batch = preprocess(ds, pipeline.spec)
    pipeline.analyzer.run_tensor(batch)
    return (time.perf_counter() - t0) * 1e3


def _latency(pipeline: _Pipeline, files: list[Path], settings: Settings, report: BenchmarkReport) -> None:
    warm, timed = files[: settings.warm_up_instances], files[settings.warm_up_instances :]
    for path in warm:
        _through_appliance(pipeline, path)
        _bare(pipeline, path)
    rng = random.Random(LATENCY_SEED)
    spooled, submitted, reference, uids = [], [], [], []
    for path in timed:
        first_appliance = rng.random() < 0.5
        for side in ("appliance", "reference") if first_appliance else ("reference", "appliance"):
            time.sleep(settings.settle_s)
            if side == "appliance":
                from_spool, from_submit, uid = _through_appliance(pipeline, path)
                spooled.append(from_spool)
                submitted.append(from_submit)
                uids.append(uid)
            else:
                reference.append(_bare(pipeline, path))
    p50, ref50 = statistics.median(spooled), statistics.median(reference)
    p95, ref95 = _percentile(spooled, 95), _percentile(reference, 95)
    paired = [a / b for a, b in zip(spooled, reference, strict=True)]
    low, high = _bootstrap_median(paired)
    stages: dict[str, list[float]] = {}
    for uid in uids:
        for stage, value in pipeline.outbox.latency_ms(uid).items():
            stages.setdefault(stage, []).append(value)
    # The finding's "receive" runs from the spool write to the end of preprocessing (it overlaps decode and
    # preprocess), and "total" includes it: leave both out and report what the four work stages leave over.
    work = ("decode", "preprocess", "infer", "postprocess")
    inside = {stage: statistics.median(stages[stage]) for stage in work if stage in stages}
    breakdown = ", ".join(f"{k} {v:.2f}" for k, v in inside.items())
    outside = p50 - sum(inside.values())
    ratio = p50 / ref50
    report.add(
        Figure(
            pipeline.group,
            f"latency p50, spooled DICOM -> finding in the outbox ({len(timed)} instances, one at a time)",
            p50,
            "ms",
            "dcmread + preprocess + bare engine call",
            ref50,
            ratio,
            f"{ratio:.2f}x",
            f"<= {LATENCY_RATIO_MAX:.2f}x",
            ratio <= LATENCY_RATIO_MAX,
            f"p95 {p95:.2f} ms vs {ref95:.2f} ms; median of paired ratios {statistics.median(paired):.2f}x "
            f"(95% CI [{low:.2f}, {high:.2f}]); stage medians from the findings (ms): {breakdown}; "
            f"the rest (queue transactions, thread hand-offs, the durable outbox commit): {outside:.2f} ms"
            + (f"; {pipeline.outbox.late} wait(s) ended on the safety timeout" if pipeline.outbox.late else ""),
        )
    )
    report.add(
        Figure(
            pipeline.group,
            "latency p95, spooled DICOM -> finding in the outbox",
            p95,
            "ms",
            "dcmread + preprocess + bare engine call",
            ref95,
            p95 / ref95,
            f"{p95 / ref95:.2f}x",
        )
    )
    whole = statistics.median(submitted)
    report.add(
        Figure(
            pipeline.group,
            "latency p50, Appliance.submit() called -> finding (the fsync'd spool write included)",
            whole,
            "ms",
            "dcmread + preprocess + bare engine call",
            ref50,
            whole / ref50,
            f"{whole / ref50:.2f}x",
            note=f"submit() itself: {whole - p50:.2f} ms (header check, spool write + fsync, queue row)",
        )
    )


def _throughput(pipeline: _Pipeline, streams: list[list[Path]], settings: Settings, report: BenchmarkReport) -> None:
    rates: list[float] = []
    reference: list[float] = []
    for files in streams:
        tensors = [preprocess(pydicom.dcmread(path), pipeline.spec) for path in files]
        stacked = np.concatenate(tensors)
        batches = [
            np.ascontiguousarray(stacked[i : i + pipeline.batch]) for i in range(0, len(stacked), pipeline.batch)
        ]
        order = ["appliance", "reference"] if len(rates) % 2 == 0 else ["reference", "appliance"]
        for side in order:
            time.sleep(settings.settle_s)
            if side == "appliance":
                before = pipeline.outbox.count()
                t0 = time.perf_counter()
                for path in files:
                    pipeline.appliance.submit(path)
                t1 = _wait_until(
                    lambda n=before + len(files): pipeline.outbox.count() >= n,
                    settings.stream_poll_s,
                    600.0,
                    f"{len(files)} findings",
                )
                rates.append(len(files) / (t1 - t0))
            else:
                t0 = time.perf_counter()
                for batch in batches:
                    pipeline.analyzer.run_tensor(batch)
                reference.append(len(files) / (time.perf_counter() - t0))
    rate, ref = statistics.median(rates), statistics.median(reference)
    # Paired per round (the two sides alternate within a round): the median of the per-round ratios.
    ratio = statistics.median(a / b for a, b in zip(rates, reference, strict=True))
    report.add(
        Figure(
            pipeline.group,
            f"throughput, {len(streams[0])} instances submitted at once -> last finding",
            rate,
            "instances/s",
            f"bare engine on the preprocessed tensors (batch {pipeline.batch}, the profile's)",
            ref,
            ratio,
            f"{ratio:.2f}x",
            f">= {THROUGHPUT_RATIO_MIN:.2f}x",
            ratio >= THROUGHPUT_RATIO_MIN,
            f"{len(streams)} round(s); the ratio is the median of the per-round ratios; per round "
            f"{[round(r) for r in rates]} vs {[round(r) for r in reference]} instances/s",
        )
    )


def _durable_commit_ms(workdir: Path, count: int = 50) -> float:
    """What one fsync'd work-queue transaction costs on this disk (explains the pipeline figures)."""
    queue = WorkQueue(workdir / "commit-probe" / "queue.sqlite")
    try:
        times = []
        for index in range(count):
            t0 = time.perf_counter()
            with queue.transaction(durable=True) as db:
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('benchmark-probe', ?)", (str(index),))
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    finally:
        queue.close()


# ----------------------------------------------------------------------------- 3: C-STORE ingest


def _wait_listening(port: int, timeout_s: float = 10.0) -> None:
    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    _wait_until(listening, 0.01, timeout_s, f"a DICOM listener on port {port}")


def _storescu(port: int, files: Sequence[Path]) -> float:
    """Send ``files`` over one association with dcmtk's storescu; return the seconds it took."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    command = [STORESCU, "-aet", SCANNER_AE, "-aec", OUR_AE, "127.0.0.1", str(port), *map(str, files)]
    t0 = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"storescu failed ({done.returncode}): {done.stderr.strip()[-1500:]}")
    return elapsed


@contextlib.contextmanager
def _medge_receiver(workdir: Path, expected: int, *, tuned: bool) -> Iterator[int]:
    """medge's ingest path with the model idle: StorageSCP → Spool (fsync'd) → WorkQueue.add(durable=False)."""
    root = Path(tempfile.mkdtemp(prefix="medge-ingest-", dir=workdir))
    spool = Spool(root / "spool", 64 * 1024**3)
    queue = WorkQueue(root / "queue.sqlite")
    section = DicomSection(ae_title=OUR_AE, host="127.0.0.1", allowed_calling_aes=[SCANNER_AE])
    options: dict[str, Any] = {} if tuned else {"tuned": False, "max_pdu_bytes": 16382}  # pynetdicom as it comes

    def on_stored(stored: StoredInstance) -> None:
        queue.add(stored, durable=False)  # as the appliance does: the spool file is fsync'd, the row need not be

    scp = StorageSCP(section, spool, on_stored, port=0, **options)
    scp.start()
    try:
        yield scp.port
        stored = sum(1 for _ in spool.instances())
        if stored != expected:
            raise RuntimeError(f"medge's SCP spooled {stored} instances, {expected} expected")
    finally:
        scp.stop()
        queue.close()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _storescp_receiver(workdir: Path, expected: int) -> Iterator[int]:
    """dcmtk's storescp writing every instance it receives into a folder (same maximum PDU as medge's)."""
    root = Path(tempfile.mkdtemp(prefix="storescp-", dir=workdir))
    port = free_port()
    command = [STORESCP, "-aet", OUR_AE, "-pdu", str(MAX_PDU_BYTES), "-od", str(root), str(port)]
    process = subprocess.Popen(command, env={**os.environ, "TCP_NODELAY": "1"}, stderr=subprocess.PIPE, text=True)
    try:
        _wait_listening(port)
        yield port
        written = sum(1 for path in root.iterdir() if path.is_file())
        if written < expected:
            raise RuntimeError(f"storescp wrote {written} files, {expected} expected")
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.communicate(timeout=10)
        if process.poll() is None:
            process.kill()
            process.wait()
        shutil.rmtree(root, ignore_errors=True)


def _ingest_rate(receiver: str, workdir: Path, files: list[Path]) -> tuple[float, float]:
    """Steady-state instances/s over one association, and the raw wall-clock rate of the N-instance run.

    storescu is run twice per receiver, with 1 and with N instances: the
    difference removes what every run pays once (process start, file reads
    before the first send, association set-up and release), which would
    otherwise weigh far more on the faster receiver.
    """
    count = len(files)
    os.sync()  # every receiver starts with nothing of the previous one's left to write back
    receiving = (
        _storescp_receiver(workdir, count)
        if receiver == "storescp"
        else _medge_receiver(workdir, count, tuned=receiver == "medge")
    )
    with receiving as port:
        try:
            one = _storescu(port, files[:1])
            many = _storescu(port, files)
        except RuntimeError:
            _log_thread_stacks(f"storescu to {receiver} failed")  # while the receiver still runs: where it hangs
            raise
    steady = (count - 1) / (many - one) if many > one else count / many
    return steady, count / many


def _log_thread_stacks(why: str) -> None:
    frames = sys._current_frames()
    for thread in threading.enumerate():
        frame = frames.get(thread.ident or -1)
        if frame is not None:
            stack = "".join(traceback.format_stack(frame, limit=8))
            log.warning("%s: thread %s (%s):\n%s", why, thread.name, type(thread).__name__, stack)


def _ingest(workdir: Path, small: list[Path], large: list[Path], settings: Settings, report: BenchmarkReport) -> None:
    receivers = ["medge", "medge (pynetdicom as it comes)", "storescp"]
    rng = random.Random(INGEST_SEED)
    for label, files in (("128x128", small), ("512x512", large)):
        steady: dict[str, list[float]] = {r: [] for r in receivers}
        raw: dict[str, list[float]] = {r: [] for r in receivers}
        failures: list[str] = []
        for _ in range(settings.ingest_rounds):
            order = list(receivers)
            rng.shuffle(order)
            for receiver in order:
                try:
                    rate, wall = _ingest_rate(receiver, workdir, files)
                except RuntimeError as exc:  # counted and reported, then measured again once
                    failures.append(f"{receiver}: {exc}")
                    rate, wall = _ingest_rate(receiver, workdir, files)
                steady[receiver].append(rate)
                raw[receiver].append(wall)
        ours, stock, dcmtk = (statistics.median(steady[r]) for r in receivers)
        # Paired per round (same moment, same load), like benchmarks.timing: the median of the per-round ratios.
        ratios = [a / b for a, b in zip(steady["medge"], steady["storescp"], strict=True)]
        ratio = statistics.median(ratios)
        low, high = _bootstrap_median(ratios) if len(ratios) > 1 else (ratio, ratio)
        rounds = f"{settings.ingest_rounds} round(s) of {len(files)} instances, medians"
        raw_note = (
            f"wall clock incl. storescu start and association: {statistics.median(raw['medge']):.0f} vs "
            f"{statistics.median(raw['storescp']):.0f} /s"
        )
        budgeted = label == "128x128"
        report.add(
            Figure(
                GROUP_INGEST,
                f"{label} CT: medge SCP + spool (fsync'd) + queue row, rate",
                ours,
                "instances/s",
                "budget" if budgeted else None,
                INGEST_RATE_MIN if budgeted else None,
                ours / INGEST_RATE_MIN if budgeted else None,
                f"{ours / INGEST_RATE_MIN:.2f} of the budget" if budgeted else "",
                f">= {INGEST_RATE_MIN:.0f} /s" if budgeted else None,
                ours >= INGEST_RATE_MIN if budgeted else None,
                f"{rounds}; per round {[round(r) for r in steady['medge']]}; {raw_note}"
                + (f"; {len(failures)} run(s) failed and were repeated: {'; '.join(failures)}" if failures else ""),
            )
        )
        report.add(
            Figure(
                GROUP_INGEST,
                f"{label} CT: medge SCP vs dcmtk storescp (no fsync) on the same instances",
                ours,
                "instances/s",
                "dcmtk storescp",
                dcmtk,
                ratio,
                f"{ratio:.2f}x",
                f">= {INGEST_RATIO_MIN:.2f}x" if budgeted else None,
                ratio >= INGEST_RATIO_MIN if budgeted else None,
                f"median of per-round ratios, 95% CI [{low:.2f}, {high:.2f}]: {[round(r, 2) for r in ratios]}; "
                f"storescp per round {[round(r) for r in steady['storescp']]} /s; both steady-state rates (storescu "
                "runs of 1 and N instances, differenced); storescp with -pdu 131072 like medge",
            )
        )
        report.add(
            Figure(
                GROUP_INGEST,
                f"{label} CT: medge SCP with pynetdicom's polling and 16 KiB PDUs (before the tuning)",
                stock,
                "instances/s",
                "medge SCP (tuned)",
                ours,
                stock / ours,
                f"{stock / ours:.2f}x",
                note=f"per round {[round(r) for r in steady['medge (pynetdicom as it comes)']]}",
            )
        )


# ----------------------------------------------------------------------------- 4: cold start and memory

_APPLIANCE_CHILD = """
import json, sys, time
from runtime.appliance import Appliance
from sdk.appliance_config import ApplianceConfig
from sdk.trust import TrustStore
args = json.loads(sys.argv[1])
appliance = Appliance(ApplianceConfig(**args["config"]), trusted=TrustStore.load(args["trusted_dir"]),
                      dicom_port=0, health_port=0, **args["options"])
appliance.start()
try:
    live = len(appliance.packages.live)
    uids = [appliance.submit(path) for path in args["files"]]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(appliance.queue.findings(uid) for uid in uids):
        time.sleep(0.05)
    done = sum(1 for uid in uids if appliance.queue.findings(uid))
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    peak, rss = (float(status[key].split()[0]) / 1024 for key in ("VmHWM", "VmRSS"))
finally:
    appliance.stop()
print(json.dumps({"live": live, "findings": done, "peak_rss_mb": peak, "rss_mb": rss}))
"""


def _appliance_memory(workdir: Path, package: _Package, files: list[Path]) -> dict[str, float]:
    """Peak resident memory of a fresh appliance process that brought the package live and analysed ``files``."""
    root = Path(tempfile.mkdtemp(prefix="appliance-memory-", dir=workdir))
    packages_dir = root / "packages"
    packages_dir.mkdir()
    shutil.copy2(package.path, packages_dir / package.path.name)
    args = {
        "config": _appliance_config(root / "data", packages_dir),
        "trusted_dir": str(package.trusted_dir),
        "files": [str(path) for path in files],
        "options": _NO_REPORTER,
    }
    try:
        done = subprocess.run(
            [sys.executable, "-c", _APPLIANCE_CHILD, json.dumps(args)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the appliance memory probe failed: {done.stderr.strip()[-2000:]}")
    result = json.loads(lines[-1])
    if result["live"] != 1 or result["findings"] != len(files):
        raise RuntimeError(f"the appliance memory probe did not analyse every instance: {result}")
    return result


def _median_run(runs: list[ColdStart]) -> ColdStart:
    return sorted(runs, key=lambda run: run.total_s)[len(runs) // 2]


def _cold_start(
    workdir: Path,
    package: _Package,
    memory_files: list[Path],
    settings: Settings,
    report: BenchmarkReport,
    group: str = GROUP_START,
) -> None:
    what = f"the {package.record['model']} package"
    ours: list[ColdStart] = []
    bare: list[ColdStart] = []
    for index in range(settings.cold_starts):
        order = ["package", "bare"] if index % 2 == 0 else ["bare", "package"]
        for kind in order:
            if kind == "package":
                ours.append(package_cold_start(package.folder, package.trusted_dir, PROFILE))
            else:
                bare.append(bare_session_cold_start(package.engine_file))
    run, floor = _median_run(ours), _median_run(bare)
    stages = ", ".join(f"{k} {v:.3f} s" for k, v in run.stages_s.items())
    report.add(
        Figure(
            group,
            f"cold start of {what}: imports + verify + engine load + warm-up + golden samples",
            run.total_s,
            "s",
            "bare onnxruntime.InferenceSession on the engine file: imports + session + one run",
            floor.total_s,
            run.total_s / floor.total_s,
            f"{run.total_s / floor.total_s:.2f}x",
            f"< {COLD_START_MAX_S:.0f} s",
            run.total_s < COLD_START_MAX_S,
            f"fresh interpreter, median of {len(ours)}: imports {run.imports_s:.2f} s, then {run.ready_s:.3f} s "
            f"({stages}); the bare session: imports {floor.imports_s:.2f} s + {floor.ready_s:.3f} s; "
            f"whole child process {run.process_s:.2f} s vs {floor.process_s:.2f} s",
        )
    )
    memory = _appliance_memory(workdir, package, memory_files)
    peak = memory["peak_rss_mb"]
    report.add(
        Figure(
            group,
            f"peak resident memory: appliance process, package live, {len(memory_files)} instances analysed",
            peak,
            "MB",
            "bare onnxruntime.InferenceSession process",
            floor.peak_rss_mb,
            peak / floor.peak_rss_mb,
            f"{peak / floor.peak_rss_mb:.2f}x",
            f"< {RSS_MAX_MB:.0f} MB",
            peak < RSS_MAX_MB,
            f"VmHWM of a fresh process running Appliance.start() (SCP, health server, workers) and "
            f"submit(); resident at the end {memory['rss_mb']:.0f} MB",
        )
    )
    report.add(
        Figure(
            group,
            f"peak resident memory: PackageSet.load of {what} alone",
            run.peak_rss_mb,
            "MB",
            "bare onnxruntime.InferenceSession process",
            floor.peak_rss_mb,
            run.peak_rss_mb / floor.peak_rss_mb,
            f"{run.peak_rss_mb / floor.peak_rss_mb:.2f}x",
        )
    )


# ----------------------------------------------------------------------------- the run


_INGEST_SKIPPED = "C-STORE ingest skipped: it never touches the model (run --model reference for it)"


def run_benchmark(settings: Settings, workdir: Path, model: str = "reference") -> BenchmarkReport:
    """Run every measurement of the benchmark in ``workdir`` on ``model`` (one of :data:`MODELS`).

    With ``heavy`` the ingest section is skipped (it is the same with any
    model); the report says so under ``settings["skipped"]``.
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, not {model!r}")
    heavy = model == "heavy"
    started = time.monotonic()
    report = BenchmarkReport(settings={**dataclasses.asdict(settings), "model": model}, machine=machine_facts())
    report.machine["threads"] = "profile default (0: ONNX Runtime's own)"
    workdir.mkdir(parents=True, exist_ok=True)
    package = _build_package(workdir, settings, model)
    report.compiles[model] = package.record
    if heavy:
        report.settings["skipped"] = [_INGEST_SKIPPED]
    latency_files = _phantoms(
        workdir / "latency-studies",
        settings.warm_up_instances + settings.latency_instances + settings.memory_instances,
        PhantomSpec(slices=32),
        LATENCY_SEED,
    )
    memory_files = latency_files[settings.warm_up_instances + settings.latency_instances :]
    latency_files = latency_files[: settings.warm_up_instances + settings.latency_instances]
    stream_files = _phantoms(
        workdir / "stream-studies",
        settings.stream_instances * settings.stream_rounds,
        PhantomSpec(slices=min(100, settings.stream_instances)),
        STREAM_SEED,
    )
    streams = [
        stream_files[i * settings.stream_instances : (i + 1) * settings.stream_instances]
        for i in range(settings.stream_rounds)
    ]
    log.info("set-up done in %.1f s", time.monotonic() - started)

    group = GROUP_PIPELINE_HEAVY if heavy else GROUP_PIPELINE
    with _running_appliance(workdir, package, group) as pipeline:
        _latency(pipeline, latency_files, settings, report)
        _throughput(pipeline, streams, settings, report)
    commit = _durable_commit_ms(workdir)
    report.add(
        Figure(
            group,
            "one durable (fsync'd) work-queue transaction on this disk",
            commit,
            "ms",
            note="every finding is committed this way before the instance is done (the outbox is durable)",
        )
    )
    if not heavy:
        small = _phantoms(
            workdir / "ingest-128",
            settings.ingest_small,
            PhantomSpec(rows=128, columns=128, slices=min(100, settings.ingest_small)),
            INGEST_SEED,
        )
        large = _phantoms(
            workdir / "ingest-512",
            settings.ingest_large,
            PhantomSpec(rows=512, columns=512, slices=min(50, settings.ingest_large)),
            INGEST_SEED + 1,
        )
        _ingest(workdir, small, large, settings, report)
    _cold_start(workdir, package, memory_files, settings, report, GROUP_START_HEAVY if heavy else GROUP_START)

    report.machine["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    report.seconds = time.monotonic() - started
    return report


# ----------------------------------------------------------------------------- printing


def format_table(report: BenchmarkReport) -> str:
    """The report as a plain-text table (see :func:`benchmarks.report.format_table`), led by which model ran."""
    table = report_table(report, "runtime")
    model = report.settings.get("model")
    record = report.compiles.get(model, {}) if model else {}
    if not record:
        return table
    head, _, rest = table.partition("\n")
    lines = [head, f"model: {model}: {record.get('description', '')}"]
    if record.get("precision"):
        compiled = f"compiled for {PROFILE}: {record['precision']}, {record.get('method', '')}"
        if record.get("agreement") is not None:
            compiled += f"; gate agreement {record['agreement']:.1%}, flips {record['flip_rate']:.1%}"
        lines.append(compiled)
    if record.get("int8_fallback"):
        lines.append(f"INT8 fell back: {record['int8_fallback']}")
    lines += [f"skipped: {what}" for what in report.settings.get("skipped", [])]
    return "\n".join([*lines, rest])


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (1 with ``--strict`` when a budget is missed)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.runtime_benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run at small sizes (budgets not meaningful)")
    parser.add_argument(
        "--model",
        choices=MODELS,
        default="reference",
        help="reference: the shipped model (default); heavy: a synthetic ResNet-18-like model built at run time",
    )
    parser.add_argument("--workdir", type=Path, help="keep phantoms, package and spools here (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="write the JSON report here (default: build/benchmarks/)")
    parser.add_argument("--markdown", type=Path, help="also write the figures as Markdown tables to this file")
    parser.add_argument("--strict", action="store_true", help="exit with 1 when a budget is missed")
    parser.add_argument("--verbose", "-v", action="store_true", help="log each step")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s"
    )
    for tool in (STORESCU, STORESCP):
        if not Path(tool).exists():
            parser.error(f"{tool} is missing: install dcmtk (apt-get install dcmtk)")
    settings = QUICK if args.quick else FULL
    if args.workdir is not None:
        report = run_benchmark(settings, args.workdir, args.model)
    else:
        with tempfile.TemporaryDirectory(prefix="medge-runtime-benchmark-") as tmp:
            report = run_benchmark(settings, Path(tmp), args.model)
    print(format_table(report))
    suffix = "" if args.model == "reference" else f"-{args.model}"
    out = args.json or REPORT_DIR / f"runtime-benchmark-{settings.name}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.to_json(), indent=2), encoding="utf-8")
    print(f"JSON report: {out}")
    if args.markdown is not None:
        args.markdown.write_text(format_markdown(report), encoding="utf-8")
    return 1 if args.strict and report.missed else 0


if __name__ == "__main__":
    sys.exit(main())
