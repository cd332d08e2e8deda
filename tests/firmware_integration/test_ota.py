"""Over-the-air updates with the real appliance and a real HTTPS server (firmware_integration/ota/agent.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from firmware_integration.ota import OtaError
from sdk.fleet_contracts import OtaStep
from sdk.testing import PhantomSpec, generate_studies
from tests.firmware_integration.package_server import (
    MODEL,
    OtaSite,
    PackageServer,
    compile_version,
    derive,
    live_versions,
    make_site,
    running,
    tampered_copy,
    unsigned_copy,
    update_command,
)

TOKEN = "device-token-0123456789abcdef"
STEPS = [
    OtaStep.ACCEPTED,
    OtaStep.DOWNLOAD,
    OtaStep.VERIFY,
    OtaStep.INSTALL,
    OtaStep.GOLDEN,
    OtaStep.SWITCH,
    OtaStep.PROBATION,
]


@dataclass(frozen=True)
class Packages:
    public_key: Path
    v1_0: Path
    v1_1: Path
    v0_9: Path
    golden_fails: Path
    analyses_fail: Path
    unsigned: Path
    tampered: Path


@pytest.fixture(scope="module")
def packages(reference_packages, tmp_path_factory: pytest.TempPathFactory) -> Packages:
    root = tmp_path_factory.mktemp("ota-packages")
    key, calibration = reference_packages.key, reference_packages.calibration
    v1_1 = compile_version(calibration, key, root / "chest-ct-nodule-1.1.0.medge", "1.1.0")
    return Packages(
        public_key=reference_packages.pair.public_path,
        v1_0=compile_version(calibration, key, root / "chest-ct-nodule-1.0.0.medge", "1.0.0"),
        v1_1=v1_1,
        v0_9=compile_version(calibration, key, root / "chest-ct-nodule-0.9.0.medge", "0.9.0"),
        golden_fails=derive(v1_1, root / "golden-fails.medge", key, version="1.2.0", break_golden=True),
        analyses_fail=derive(v1_1, root / "analyses-fail.medge", key, version="1.3.0", extra_label=True),
        unsigned=unsigned_copy(v1_1, root / "unsigned.medge"),
        tampered=tampered_copy(v1_1, root / "tampered.medge"),
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with PackageServer(tmp_path_factory.mktemp("ota-server"), TOKEN) as running_server:
        yield running_server


@pytest.fixture
def site(tmp_path: Path, server: PackageServer, packages: Packages) -> OtaSite:
    return make_site(tmp_path / "root", server, packages.public_key, packages.v1_0)


def _slot(site: OtaSite, name: str) -> list[str]:
    return sorted(path.name for path in (site.layout.slots_dir / name).iterdir())


def _unchanged(site: OtaSite) -> None:
    """The active slot is A with the first package, the journal and the download are gone."""
    assert os.readlink(site.layout.packages_dir) == "slots/A"
    assert _slot(site, "A") == ["chest-ct-nodule-1.0.0.medge"]
    assert not site.paths.journal.exists()
    assert list(site.paths.downloads.glob("*")) == []


def test_a_good_update_goes_live_after_every_step_and_keeps_the_old_slot(
    site: OtaSite, server: PackageServer, packages: Packages
) -> None:
    offer = server.offer(packages.v1_1, MODEL, "1.1.0")
    with running(site) as (agent, appliance):
        assert site.layout.packages_dir.is_symlink()  # the plain folder became slot A at first use
        assert live_versions(appliance) == {MODEL: "1.0.0"}
        answer = agent.handle_update(update_command(site, offer, "u-good", probation_s=0.3))
        assert answer == {"accepted": True, "update_id": "u-good"}
        assert agent.wait(60)
        assert live_versions(appliance) == {MODEL: "1.1.0"}
    reports = site.reports("u-good")
    assert [r.step for r in reports if r.progress is None] == [*STEPS, OtaStep.DONE]
    assert all(r.ok and r.package == "chest-ct-nodule 1.1.0" for r in reports)
    progress = [r.progress for r in reports if r.progress is not None]
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(progress) <= 11
    assert os.readlink(site.layout.packages_dir) == "slots/B"
    assert _slot(site, "A") == ["chest-ct-nodule-1.0.0.medge"]  # the rollback target stays
    assert _slot(site, "B") == ["chest-ct-nodule-1.1.0.medge"]
    assert not site.paths.journal.exists()
    assert list(site.paths.downloads.glob("*")) == []
    with running(site) as (agent, appliance):  # a restart keeps the new package
        assert live_versions(appliance) == {MODEL: "1.1.0"}


def test_a_download_cut_off_half_way_continues_where_it_stopped(
    site: OtaSite, server: PackageServer, packages: Packages
) -> None:
    offer = server.offer(packages.v1_1, MODEL, "1.1.0")
    server.cut_once.add(offer.url)
    with running(site) as (agent, appliance):
        agent.handle_update(update_command(site, offer, "u-resume"))
        assert agent.wait(60)
        assert live_versions(appliance) == {MODEL: "1.1.0"}
    assert site.reports("u-resume")[-1].step is OtaStep.DONE
    first, second = [served for served in server.requests if served.path == offer.url][-2:]
    assert first.status == 200 and 0 < first.sent < offer.size
    assert second.range == f"bytes={first.sent}-" and second.status == 206
    assert second.sent == offer.size - first.sent


@pytest.mark.parametrize("kind", ["tampered", "unsigned"])
def test_a_tampered_or_unsigned_package_is_refused_and_nothing_changes(
    kind: str, site: OtaSite, server: PackageServer, packages: Packages
) -> None:
    offer = server.offer(getattr(packages, kind), MODEL, "1.1.0")
    with running(site) as (agent, appliance):
        agent.handle_update(update_command(site, offer, f"u-{kind}"))
        assert agent.wait(60)
        assert live_versions(appliance) == {MODEL: "1.0.0"}
    last = site.reports(f"u-{kind}")[-1]
    assert last.step is OtaStep.REFUSED and not last.ok
    assert last.reason is not None and last.reason.startswith("verification failed")
    if kind == "unsigned":
        assert "unsigned packages are refused" in last.reason
    assert _slot(site, "B") == []
    _unchanged(site)


def test_a_downgrade_is_refused_at_once_unless_an_admin_forces_it(
    site: OtaSite, server: PackageServer, packages: Packages
) -> None:
    offer = server.offer(packages.v0_9, MODEL, "0.9.0")
    same = server.offer(packages.v1_0, MODEL, "1.0.0")
    with running(site) as (agent, appliance):
        with pytest.raises(OtaError, match=r"1\.0\.0 is live; 0\.9\.0 does not go up"):
            agent.handle_update(update_command(site, offer, "u-down"))
        with pytest.raises(OtaError, match="does not go up"):
            agent.handle_update(update_command(site, same, "u-same"))
        assert agent.busy is None and live_versions(appliance) == {MODEL: "1.0.0"}
        assert [r.step for r in site.reports("u-down")] == [OtaStep.REFUSED]
        _unchanged(site)
        agent.handle_update(update_command(site, offer, "u-forced", force=True))
        assert agent.wait(60)
        assert live_versions(appliance) == {MODEL: "0.9.0"}
    assert site.reports("u-forced")[-1].step is OtaStep.DONE
    assert _slot(site, "B") == ["chest-ct-nodule-0.9.0.medge"]  # the higher version is not carried over


def test_a_package_failing_its_golden_samples_is_refused_before_the_switch(
    site: OtaSite, server: PackageServer, packages: Packages
) -> None:
    offer = server.offer(packages.golden_fails, MODEL, "1.2.0")
    with running(site) as (agent, appliance):
        agent.handle_update(update_command(site, offer, "u-golden"))
        assert agent.wait(60)
        assert live_versions(appliance) == {MODEL: "1.0.0"}
    reports = site.reports("u-golden")
    assert [r.step for r in reports if r.progress is None][-2:] == [OtaStep.GOLDEN, OtaStep.REFUSED]
    assert reports[-1].reason is not None and "golden samples: 0/" in reports[-1].reason
    assert _slot(site, "B") == []  # the half-installed slot was emptied
    _unchanged(site)


def test_a_package_whose_analyses_fail_on_probation_is_rolled_back(
    site: OtaSite, server: PackageServer, packages: Packages, tmp_path: Path
) -> None:
    truths = generate_studies(tmp_path / "studies", 1, PhantomSpec(slices=4), seed=5)
    images = [tmp_path / "studies" / str(truths[0].folder) / str(s.file) for s in truths[0].series[0].slices]
    offer = server.offer(packages.analyses_fail, MODEL, "1.3.0")
    other = server.offer(packages.v1_1, MODEL, "1.1.0")
    with running(site) as (agent, appliance):
        agent.handle_update(update_command(site, offer, "u-probation", probation_s=60))
        deadline = 300
        while OtaStep.PROBATION not in [r.step for r in site.reports("u-probation")] and deadline:
            assert agent.wait(0.1) is False
            deadline -= 1
        assert live_versions(appliance) == {MODEL: "1.3.0"}
        # One update at a time; the same command sent again is not a second update.
        with pytest.raises(OtaError, match="u-probation is still running"):
            agent.handle_update(update_command(site, other, "u-other"))
        assert agent.handle_update(update_command(site, offer, "u-probation"))["already_running"] is True
        for image in images:
            appliance.submit(image)
        assert agent.wait(30)
        assert live_versions(appliance) == {MODEL: "1.0.0"}
        assert appliance.package_outcomes()[MODEL]["failed"] >= 3
    last = site.reports("u-probation")[-1]
    assert last.step is OtaStep.ROLLED_BACK and not last.ok
    assert last.reason is not None and "analyses failed" in last.reason and "against 0% before" in last.reason
    assert "live again: chest-ct-nodule 1.0.0" in last.reason
    assert [r.step for r in site.reports("u-other")] == []
    _unchanged(site)


def test_a_download_cut_off_for_good_is_refused_and_resumed_when_the_update_is_sent_again(
    site: OtaSite, server: PackageServer, packages: Packages
) -> None:
    offer = server.offer(packages.v1_1, MODEL, "1.1.0")
    with running(site, download_attempts=1) as (agent, appliance):
        server.cut_once.add(offer.url)
        agent.handle_update(update_command(site, offer, "u-cut"))
        assert agent.wait(60)
        last = site.reports("u-cut")[-1]
        assert last.step is OtaStep.REFUSED and last.reason is not None and "bytes kept" in last.reason
        kept = site.paths.part(offer).stat().st_size
        assert 0 < kept < offer.size
        agent.handle_update(update_command(site, offer, "u-cut"))
        assert agent.wait(60)
        assert live_versions(appliance) == {MODEL: "1.1.0"}
    assert server.requests[-1].range == f"bytes={kept}-"
