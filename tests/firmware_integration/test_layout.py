"""The appliance's file layout under a test prefix (firmware_integration/layout.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from firmware_integration.layout import Layout, Owner
from runtime.appliance import Appliance
from sdk.appliance_config import ApplianceConfig
from sdk.errors import ConfigError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_standard_layout_is_the_documented_one() -> None:
    layout = Layout()
    assert layout.appliance_config == Path("/etc/medge/appliance.toml")
    assert layout.mqtt_dir == Path("/etc/medge/mqtt")
    assert layout.state_dir == Path("/var/lib/medge")
    assert layout.packages_dir == Path("/var/lib/medge/packages")
    assert layout.spool_dir == Path("/var/lib/medge/spool")
    assert layout.slots_dir == Path("/var/lib/medge/slots")
    assert layout.queue_file == Path("/var/lib/medge/queue.sqlite")
    assert layout.log_dir == Path("/var/log/medge")
    assert layout.runtime_dir == Path("/run/medge")
    assert layout.writable_dirs == [Path("/var/lib/medge"), Path("/var/log/medge"), Path("/run/medge")]
    # The appliance config's defaults point into it.
    config = ApplianceConfig(appliance={"site": "s", "device": "d", "demo": True})
    assert config.appliance.data_dir == layout.state_dir
    assert config.packages.dir == layout.packages_dir


def test_every_path_moves_under_the_prefix(tmp_path: Path) -> None:
    layout = Layout(prefix=tmp_path)
    standard = Layout().directories()
    for entry, real in zip(layout.directories(), standard, strict=True):
        assert entry.path == tmp_path / real.path.relative_to("/")
        assert (entry.mode, entry.owner) == (real.mode, real.owner)
    assert layout.appliance_config == tmp_path / "etc/medge/appliance.toml"
    assert all(tmp_path in path.parents for path in layout.writable_dirs)


def test_create_makes_the_folders_with_their_modes_and_repairs_them(tmp_path: Path) -> None:
    layout = Layout(prefix=tmp_path)
    made = layout.create(chown=False)
    assert made == [entry.path for entry in layout.directories()]
    for entry in layout.directories():
        assert entry.path.is_dir()
        assert _mode(entry.path) == entry.mode, entry.path
    assert _mode(layout.config_dir) == 0o755 and _mode(layout.spool_dir) == 0o750
    # A folder opened up by hand, or one removed, is put right by the next run.
    os.chmod(layout.spool_dir, 0o777)
    layout.slots_dir.rmdir()
    layout.create(chown=False)
    assert _mode(layout.spool_dir) == 0o750 and layout.slots_dir.is_dir()


def test_without_the_dashboard_its_folder_is_not_made(tmp_path: Path) -> None:
    layout = Layout(prefix=tmp_path)
    layout.create(chown=False, dashboard=False)
    assert not layout.dashboard_state_dir.exists()
    assert layout.spool_dir.is_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving folders to other users needs root")
def test_as_root_each_folder_belongs_to_its_owner(tmp_path: Path) -> None:
    import grp
    import pwd

    # Users every Debian system has, standing in for medge and medge-dashboard.
    layout = Layout(prefix=tmp_path, user="daemon", dashboard_user="bin")
    layout.create()
    daemon, bin_user = pwd.getpwnam("daemon"), pwd.getpwnam("bin")
    expected = {
        Owner.ROOT: (0, 0),
        Owner.CONFIG: (0, grp.getgrnam("daemon").gr_gid),
        Owner.RUNTIME: (daemon.pw_uid, daemon.pw_gid),
        Owner.DASHBOARD: (bin_user.pw_uid, bin_user.pw_gid),
    }
    for entry in layout.directories():
        info = entry.path.stat()
        assert (info.st_uid, info.st_gid) == expected[entry.owner], entry.path


@pytest.mark.skipif(os.geteuid() != 0, reason="only root sets owners")
def test_a_missing_user_is_named_and_nothing_is_made(tmp_path: Path) -> None:
    layout = Layout(prefix=tmp_path / "root", user="medge-no-such-user")
    with pytest.raises(ConfigError, match=r"medge-no-such-user.*sysusers"):
        layout.create()
    assert not (tmp_path / "root").exists()


def test_the_appliance_keeps_its_state_where_the_layout_says(tmp_path: Path) -> None:
    """The layout and the runtime agree: spool, queue and packages land in the layout's folders."""
    layout = Layout(prefix=tmp_path)
    layout.create(chown=False)
    config = ApplianceConfig(
        appliance={
            "site": "st-marys",
            "device": "ct-1",
            "demo": True,
            "data_dir": layout.state_dir,
            "profile": "generic-x86_64-cpu",
        },
        dicom={"host": "127.0.0.1"},
        mqtt={"port": 1883},
        packages={"dir": layout.packages_dir, "trusted_keys_dir": layout.trusted_keys_dir},
    )
    with Appliance(config, dicom_port=0) as appliance:
        assert layout.queue_file.is_file()
        assert (layout.spool_dir / "quarantine").is_dir()
        assert appliance.packages.folder == layout.packages_dir
    created = {p for p in layout.state_dir.iterdir() if p.is_dir()}
    assert layout.spool_dir in created
    assert created <= {entry.path for entry in layout.directories()} | {layout.state_dir / "engine-cache"}
