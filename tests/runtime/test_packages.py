"""Packages going live on the appliance: verify, load, accept (runtime/packages.py)."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest

from device_profiles import get_profile
from runtime.packages import PackageSet
from sdk.package import open_package, write_package


@pytest.fixture(scope="module")
def setup(reference_packages, tmp_path_factory: pytest.TempPathFactory):
    built = tmp_path_factory.mktemp("packages")
    packages = {
        profile_id: reference_packages.build(built / f"{profile_id}.medge", profile_id)
        for profile_id in ("generic-x86_64-cpu", "jetson-orin-nano-8gb")
    }
    return packages, reference_packages.key, reference_packages.trusted


def _install(folder: Path, *packages: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for package in packages:
        (folder / package.name).write_bytes(package.read_bytes())
    return folder


def _events():
    seen: list[tuple[str, str, str]] = []
    return seen, lambda kind, severity, message, detail: seen.append((kind, severity, message))


def test_a_good_package_goes_live(setup, tmp_path: Path) -> None:
    built, _, trusted = setup
    seen, sink = _events()
    packages = PackageSet(
        _install(tmp_path, built["generic-x86_64-cpu"]), trusted, get_profile("generic-x86_64-cpu"), on_event=sink
    )
    packages.load()
    assert list(packages.live) == ["chest-ct-nodule"]
    assert packages.live["chest-ct-nodule"].golden.ok
    assert seen[-1][0] == "package-live"
    packages.close()


def test_tampered_and_foreign_packages_are_refused_and_named(setup, tmp_path: Path) -> None:
    built, _, trusted = setup
    folder = _install(tmp_path, built["generic-x86_64-cpu"], built["jetson-orin-nano-8gb"])
    victim = folder / built["generic-x86_64-cpu"].name
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 3] ^= 0x20
    victim.write_bytes(bytes(raw))
    seen, sink = _events()
    packages = PackageSet(folder, trusted, get_profile("generic-x86_64-cpu"), on_event=sink)
    packages.load()
    assert packages.live == {}
    checks = {refused.path.name: refused.check for refused in packages.refused}
    assert checks[victim.name] in {"archive", "hashes", "signature", "format"}
    assert checks["jetson-orin-nano-8gb.medge"] == "profile"
    assert all(kind == "package-refused" and severity == "error" for kind, severity, _ in seen)


def test_golden_samples_that_do_not_reproduce_keep_a_package_out(setup, tmp_path: Path) -> None:
    built, key, trusted = setup
    package = open_package(built["generic-x86_64-cpu"])
    members = {name: data for name, data in package.members.items() if name in package.manifest.files}
    sample = package.manifest.golden[0]
    expected_member = sample.outputs["nodule_probability"]
    expected = np.load(io.BytesIO(gzip.decompress(members[expected_member])))
    buffer = io.BytesIO()
    np.save(buffer, (1.0 - expected).astype(np.float32))
    members[expected_member] = gzip.compress(buffer.getvalue(), mtime=0)
    # Re-signed by a trusted key: only the on-device acceptance can catch it.
    write_package(tmp_path / "pkg" / "bad-golden.medge", package.manifest, members, key)
    packages = PackageSet(tmp_path / "pkg", trusted, get_profile("generic-x86_64-cpu"))
    packages.load()
    assert packages.live == {}
    assert packages.refused[0].check == "golden"
    assert "golden samples" in packages.refused[0].reason


def test_degraded_engine_runs_loudly_or_is_refused_when_fail_closed(setup, tmp_path: Path) -> None:
    built, _, trusted = setup
    folder = _install(tmp_path, built["jetson-orin-nano-8gb"])
    jetson = get_profile("jetson-orin-nano-8gb")
    seen, sink = _events()
    degraded = PackageSet(folder, trusted, jetson, on_event=sink)
    degraded.load()
    assert "chest-ct-nodule" in degraded.live
    assert degraded.live["chest-ct-nodule"].placement.degraded
    assert any(kind == "engine-degraded" and "TensorrtExecutionProvider" in message for kind, _, message in seen)
    degraded.close()
    closed = PackageSet(folder, trusted, jetson, fail_closed=True)
    closed.load()
    assert closed.live == {}
    assert closed.refused[0].check == "engine" and "fail-closed" in closed.refused[0].reason


def test_the_newest_version_of_a_model_goes_live(setup, tmp_path: Path) -> None:
    built, key, trusted = setup
    package = open_package(built["generic-x86_64-cpu"])
    members = {name: data for name, data in package.members.items() if name in package.manifest.files}
    newer = package.manifest.model_copy(
        update={"model": package.manifest.model.model_copy(update={"version": "1.1.0"})}
    )
    folder = _install(tmp_path, built["generic-x86_64-cpu"])
    write_package(folder / "newer.medge", newer, members, key)
    packages = PackageSet(folder, trusted, get_profile("generic-x86_64-cpu"))
    packages.load()
    assert packages.live["chest-ct-nodule"].manifest.model.version == "1.1.0"
    assert [r.check for r in packages.refused] == ["superseded"]
    packages.close()
