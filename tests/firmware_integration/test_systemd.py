"""The systemd units, sysusers.d and tmpfiles.d snippets (firmware_integration/systemd).

The rendered files go through systemd's own tools where they are installed:
``systemd-analyze verify`` for the units (any warning fails the test), and
``systemd-sysusers`` + ``systemd-tmpfiles`` with ``--root`` for the users and
folders of an image root.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import types
from pathlib import Path

import pytest
from pydantic import ValidationError

import firmware_integration.systemd
from firmware_integration.layout import Layout
from firmware_integration.systemd import DASHBOARD_UNIT, RUNTIME_UNIT, UnitOptions, install_units, render_units
from sdk.appliance_config import ApplianceConfig
from sdk.errors import ConfigError

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
MEDGE = Path(sys.executable).with_name("medge")  # an executable that exists, as verify insists
RUNTIME_PATH = f"etc/systemd/system/{RUNTIME_UNIT}"
DASHBOARD_PATH = f"etc/systemd/system/{DASHBOARD_UNIT}"


def directives(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file, every value of each key in order."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_the_runtime_unit_is_a_watched_sandboxed_notify_service(tmp_path: Path) -> None:
    layout = Layout(prefix=tmp_path)
    unit = directives(render_units(layout, UnitOptions(medge=MEDGE))[RUNTIME_PATH])
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["ExecStart"] == [f"{MEDGE} serve --config {layout.appliance_config}"]
    assert unit["WatchdogSec"] == ["30"] and unit["Restart"] == ["on-failure"]
    assert unit["StartLimitBurst"] == ["5"] and unit["StartLimitIntervalSec"] == ["600"]
    assert unit["User"] == ["medge"] and unit["Group"] == ["medge"]
    assert unit["ReadWritePaths"] == [" ".join(map(str, layout.writable_dirs))]
    for key, value in {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "CapabilityBoundingSet": "",
        "PrivateDevices": "yes",
        "MemoryMax": "75%",
    }.items():
        assert unit[key] == [value], key
    assert "AmbientCapabilities" not in unit
    assert f"MEDGE_CONFIG_DIR={layout.config_dir}" in unit["Environment"][0]


def test_a_dicom_port_below_1024_keeps_only_the_bind_capability() -> None:
    unit = directives(render_units(options=UnitOptions(medge=MEDGE, dicom_port=104))[RUNTIME_PATH])
    assert unit["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    dashboard = directives(render_units(options=UnitOptions(medge=MEDGE, dashboard_port=443))[DASHBOARD_PATH])
    assert dashboard["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]


@pytest.mark.parametrize(
    ("accelerator", "groups"), [("nvidia-gpu", "video"), ("intel-gpu", "render video"), ("intel-npu", "render")]
)
def test_an_accelerator_keeps_its_devices_visible(accelerator: str, groups: str) -> None:
    unit = directives(render_units(options=UnitOptions(medge=MEDGE, accelerator=accelerator))[RUNTIME_PATH])
    assert unit["PrivateDevices"] == ["no"]
    assert unit["SupplementaryGroups"] == [groups]


def test_the_dashboard_unit(tmp_path: Path) -> None:
    layout = Layout(prefix=tmp_path)
    files = render_units(layout, UnitOptions(medge=MEDGE), runtime=False)
    assert RUNTIME_PATH not in files
    unit = directives(files[DASHBOARD_PATH])
    assert unit["ExecStart"] == [f"{MEDGE} dashboard --config {layout.dashboard_config}"]
    assert unit["Type"] == ["notify"] and unit["WatchdogSec"] == ["30"]
    assert unit["User"] == ["medge-dashboard"]
    assert unit["ReadWritePaths"] == [str(layout.dashboard_state_dir)]
    plain = directives(render_units(layout, UnitOptions(medge=MEDGE, dashboard_notify=False))[DASHBOARD_PATH])
    assert plain["Type"] == ["exec"] and "WatchdogSec" not in plain


def test_options_from_an_appliance_config_open_its_folders_outside_the_layout(tmp_path: Path) -> None:
    layout = Layout(prefix=tmp_path)
    config = ApplianceConfig(
        appliance={"site": "s", "device": "d", "demo": True, "data_dir": layout.state_dir},
        dicom={"port": 104, "watch_dir": tmp_path / "incoming"},
        packages={"dir": layout.packages_dir},
    )
    options = UnitOptions.for_appliance(config, layout, medge=MEDGE, accelerator="nvidia-gpu")
    assert options.dicom_port == 104 and options.accelerator == "nvidia-gpu"
    assert options.extra_writable == (tmp_path / "incoming",)
    unit = directives(render_units(layout, options, dashboard=False)[RUNTIME_PATH])
    assert unit["ReadWritePaths"] == [" ".join(map(str, [*layout.writable_dirs, tmp_path / "incoming"]))]
    assert unit["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]


def test_values_systemd_would_misread_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="absolute"):
        render_units(options=UnitOptions(medge=Path("bin/medge")))
    with pytest.raises(ConfigError, match="white space"):
        render_units(Layout(prefix=tmp_path / "my image"))
    with pytest.raises(ValidationError, match="memory size"):
        UnitOptions(runtime_memory_max="lots")
    # systemd expands %-specifiers: a literal % in a path is doubled.
    unit = render_units(Layout(prefix=tmp_path / "100%"), UnitOptions(medge=MEDGE))[RUNTIME_PATH]
    assert f"{tmp_path}/100%%/etc/medge/appliance.toml" in unit


def test_the_snippets_list_the_layout(tmp_path: Path) -> None:
    layout = Layout(prefix=tmp_path)
    files = render_units(layout)
    runtime_dirs = [line.split() for line in files["etc/tmpfiles.d/medge.conf"].splitlines() if line.startswith("d ")]
    assert [(Path(d[1]), int(d[2], 8)) for d in runtime_dirs] == [
        (e.path, e.mode) for e in layout.directories() if e.path != layout.dashboard_state_dir
    ]
    assert ["d", str(layout.spool_dir), "0750", "medge", "medge", "-"] in runtime_dirs
    assert ["d", str(layout.mqtt_dir), "0750", "root", "medge", "-"] in runtime_dirs
    dashboard_dirs = files["etc/tmpfiles.d/medge-dashboard.conf"]
    assert f"d {layout.dashboard_state_dir} 0750 medge-dashboard medge-dashboard -" in dashboard_dirs
    assert "medge medge" not in dashboard_dirs  # a dashboard-only machine has no medge user
    assert f'u medge - "medge appliance runtime" {layout.state_dir}' in files["etc/sysusers.d/medge.conf"]


def test_install_writes_every_file_under_the_root(tmp_path: Path) -> None:
    written = install_units(options=UnitOptions(medge=MEDGE), root=tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == sorted(render_units().keys())
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in written)
    assert not list(tmp_path.rglob(".*"))  # no temporary files left behind


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian package: systemd)")
@pytest.mark.parametrize(
    "options",
    [
        UnitOptions(medge=MEDGE),
        UnitOptions(medge=MEDGE, dicom_port=104, dashboard_port=443, accelerator="nvidia-gpu"),
        UnitOptions(medge=MEDGE, accelerator="intel-npu", dashboard_notify=False, runtime_memory_max="6G"),
    ],
    ids=["defaults", "privileged-ports-jetson", "intel-npu"],
)
def test_systemd_analyze_verify_accepts_the_units(options: UnitOptions, tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    written = install_units(Layout(prefix=tmp_path / "appliance"), options, root=tmp_path / "image")
    units = [str(p) for p in written if p.suffix == ".service"]
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", *units], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # an unknown or misparsed key is only a warning


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian package: systemd)")
def test_systemd_analyze_verify_can_fail(tmp_path: Path) -> None:
    """The check above would catch a broken unit: verify rejects a missing executable."""
    assert SYSTEMD_ANALYZE is not None
    written = install_units(options=UnitOptions(medge=tmp_path / "missing/medge"), root=tmp_path, dashboard=False)
    unit = next(str(p) for p in written if p.suffix == ".service")
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", unit], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "missing/medge" in result.stderr


@pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("systemd-sysusers") and shutil.which("systemd-tmpfiles")),
    reason="needs root and systemd-sysusers/systemd-tmpfiles (Debian package: systemd)",
)
def test_an_image_root_gets_its_users_and_folders_from_the_snippets(tmp_path: Path) -> None:
    """What the first boot of an image does: sysusers makes the users, tmpfiles the folders, owned by them."""
    root = tmp_path / "image"
    (root / "etc").mkdir(parents=True)
    install_units(options=UnitOptions(medge=MEDGE), root=root)
    for tool in (["systemd-sysusers"], ["systemd-tmpfiles", "--create"]):
        result = subprocess.run([*tool, f"--root={root}"], capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
    users = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    medge, dashboard = users["medge"], users["medge-dashboard"]
    assert medge[5] == "/var/lib/medge" and medge[6] == "/usr/sbin/nologin"
    groups = {line.split(":")[0]: int(line.split(":")[2]) for line in (root / "etc/group").read_text().splitlines()}
    layout = Layout(prefix=root)  # the same folders, seen from outside the image
    for entry in layout.directories():
        info = entry.path.stat()
        user, group = layout.owner_names(entry.owner)
        uid = 0 if user == "root" else int(users[user][2])
        gid = 0 if group == "root" else groups[group]
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (uid, gid, entry.mode), entry.path
    assert int(dashboard[2]) != int(medge[2])


def test_all_is_the_public_surface() -> None:
    module = firmware_integration.systemd
    public = {
        name
        for name in dir(module)
        if not name.startswith("_")
        and name != "annotations"
        and not isinstance(getattr(module, name), types.ModuleType)
    }
    assert public == set(module.__all__)
