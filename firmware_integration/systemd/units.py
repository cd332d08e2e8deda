"""Rendering and installing the systemd units, ``sysusers.d`` and ``tmpfiles.d`` snippets from a :class:`Layout`.

The templates in ``templates/`` are the production units; this module fills
in the layout's paths and the few choices that depend on the board and the
site (the accelerator's device groups, a DICOM port below 1024 that needs
``CAP_NET_BIND_SERVICE``, memory limits), and refuses values systemd would
misread (a relative path, a path with white space).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from importlib import resources
from pathlib import Path
from string import Template
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from firmware_integration.layout import Layout, LayoutDir, Owner
from sdk.appliance_config import ApplianceConfig
from sdk.errors import ConfigError

__all__ = [
    "DASHBOARD_UNIT",
    "RUNTIME_UNIT",
    "AcceleratorKind",
    "UnitOptions",
    "install_units",
    "render_units",
]

log = logging.getLogger(__name__)

RUNTIME_UNIT = "medge-runtime.service"
DASHBOARD_UNIT = "medge-dashboard.service"
_UNIT_DIR = "etc/systemd/system"
_SYSUSERS_DIR = "etc/sysusers.d"
_TMPFILES_DIR = "etc/tmpfiles.d"
_PRIVILEGED_PORTS = 1024

AcceleratorKind = Literal["none", "nvidia-gpu", "intel-gpu", "intel-npu"]
"""A device profile's ``accelerator_kind``: which device nodes the runtime needs to see."""

_DEVICE_GROUPS: dict[str, str] = {
    "nvidia-gpu": "video",  # Jetson: /dev/nvhost-*, /dev/nvmap, /dev/nvidia* are group video
    "intel-gpu": "render video",  # /dev/dri/renderD* is group render, /dev/dri/card* group video
    "intel-npu": "render",  # /dev/accel/accel* is group render
}
_MEMORY = re.compile(r"^(infinity|[1-9][0-9]*[KMGT]?|[1-9][0-9]?%|100%)$")


class UnitOptions(BaseModel):
    """The choices the units leave to the device maker and the site.

    Attributes:
        medge: the ``medge`` executable on the appliance (absolute; e.g. a venv's ``bin/medge``).
        watchdog_s: ``WatchdogSec=`` of the runtime (it pings every half of it while alive).
        restart_s: ``RestartSec=``: the pause before a restart.
        start_timeout_s: ``TimeoutStartSec=``: packages are verified and golden-tested before READY.
        stop_timeout_s: ``TimeoutStopSec=``.
        start_limit_interval_s: ``StartLimitIntervalSec=``.
        start_limit_burst: ``StartLimitBurst=``: restarts allowed within that interval.
        runtime_memory_max: ``MemoryMax=`` of the runtime (bytes with K/M/G/T, a percentage, or infinity).
        dashboard_memory_max: ``MemoryMax=`` of the dashboard.
        dicom_port: the SCP's port; below 1024 (e.g. 104) the runtime gets ``CAP_NET_BIND_SERVICE``.
        dashboard_port: the dashboard's HTTP port, when below 1024 it gets ``CAP_NET_BIND_SERVICE``.
        accelerator: the profile's ``accelerator_kind``; ``none`` hides all devices (``PrivateDevices=yes``).
        extra_writable: folders outside the layout the runtime must write (``[dicom] watch_dir``).
        dashboard_notify: the dashboard speaks sd_notify (``Type=notify`` with a watchdog), else ``Type=exec``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    medge: Path = Path("/opt/medge/bin/medge")
    watchdog_s: int = Field(default=30, ge=2, le=3600)
    restart_s: int = Field(default=5, ge=1, le=3600)
    start_timeout_s: int = Field(default=600, ge=10)
    stop_timeout_s: int = Field(default=90, ge=5)
    start_limit_interval_s: int = Field(default=600, ge=1)
    start_limit_burst: int = Field(default=5, ge=1)
    runtime_memory_max: str = "75%"
    dashboard_memory_max: str = "50%"
    dicom_port: int = Field(default=11112, ge=1, le=65535)
    dashboard_port: int | None = Field(default=None, ge=1, le=65535)
    accelerator: AcceleratorKind = "none"
    extra_writable: tuple[Path, ...] = ()
    dashboard_notify: bool = True

    @field_validator("runtime_memory_max", "dashboard_memory_max")
    @classmethod
    def _memory(cls, value: str) -> str:
        if not _MEMORY.match(value):
            raise ValueError(f"{value!r} is not a systemd memory size (e.g. 2G, 75%, infinity)")
        return value

    @classmethod
    def for_appliance(cls, config: ApplianceConfig, layout: Layout, **overrides: object) -> UnitOptions:
        """Options that fit an appliance config: its DICOM port, and write access to its folders outside the layout.

        Args:
            config: the appliance config the unit will run.
            layout: the layout the unit is rendered for.
            overrides: any other option (``accelerator=profile.accelerator_kind``, ``medge=...``).
        """
        inside = layout.writable_dirs
        folders = [config.appliance.data_dir, config.packages.dir]
        if config.dicom.watch_dir is not None:
            folders.append(config.dicom.watch_dir)
        extra = tuple(f for f in folders if not any(f == d or d in f.parents for d in inside))
        values: dict[str, object] = {"dicom_port": config.dicom.port, "extra_writable": extra}
        values.update(overrides)
        return cls.model_validate(values)


def _unit_path(path: Path, what: str) -> str:
    """A path as a unit file may hold it: absolute, no white space, ``%`` escaped (systemd's specifier sign)."""
    text = str(path)
    if not path.is_absolute():
        raise ConfigError(f"{what} must be an absolute path, not {text!r}", field=what)
    if any(ch.isspace() or ord(ch) < 32 for ch in text):
        raise ConfigError(f"{what} {text!r} holds white space or control characters; choose another path", field=what)
    return text.replace("%", "%%")


def _template(name: str) -> Template:
    return Template((resources.files("firmware_integration.systemd") / "templates" / name).read_text(encoding="utf-8"))


def _capabilities(port: int | None, what: str) -> str:
    if port is not None and port < _PRIVILEGED_PORTS:
        return (
            f"# {what} port {port} is below {_PRIVILEGED_PORTS}: binding it is the one privilege kept.\n"
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n"
            "AmbientCapabilities=CAP_NET_BIND_SERVICE"
        )
    return "CapabilityBoundingSet="


def _devices(accelerator: AcceleratorKind) -> str:
    if accelerator == "none":
        return "PrivateDevices=yes"
    return (
        f"# The {accelerator} accelerator's device nodes must stay visible; the groups that may open them:\n"
        f"PrivateDevices=no\nSupplementaryGroups={_DEVICE_GROUPS[accelerator]}"
    )


def _runtime_unit(layout: Layout, options: UnitOptions) -> str:
    writable = [*layout.writable_dirs, *options.extra_writable]
    return _template("medge-runtime.service.tmpl").substitute(
        medge=_unit_path(options.medge, "medge"),
        config=_unit_path(layout.appliance_config, "appliance config"),
        config_dir=_unit_path(layout.config_dir, "config_dir"),
        env_file=_unit_path(layout.config_dir / "appliance.env", "env_file"),
        state_dir=_unit_path(layout.state_dir, "state_dir"),
        user=layout.user,
        writable=" ".join(_unit_path(path, "writable folder") for path in writable),
        watchdog_s=options.watchdog_s,
        restart_s=options.restart_s,
        start_timeout_s=options.start_timeout_s,
        stop_timeout_s=options.stop_timeout_s,
        start_limit_interval_s=options.start_limit_interval_s,
        start_limit_burst=options.start_limit_burst,
        memory_max=options.runtime_memory_max,
        capabilities=_capabilities(options.dicom_port, "The DICOM"),
        devices=_devices(options.accelerator),
    )


def _dashboard_unit(layout: Layout, options: UnitOptions) -> str:
    if options.dashboard_notify:
        service_type = f"Type=notify\nNotifyAccess=main\nWatchdogSec={options.watchdog_s}"
    else:
        service_type = "Type=exec"
    return _template("medge-dashboard.service.tmpl").substitute(
        service_type=service_type,
        medge=_unit_path(options.medge, "medge"),
        config=_unit_path(layout.dashboard_config, "dashboard config"),
        config_dir=_unit_path(layout.config_dir, "config_dir"),
        env_file=_unit_path(layout.config_dir / "dashboard.env", "env_file"),
        state_dir=_unit_path(layout.dashboard_state_dir, "dashboard state_dir"),
        user=layout.dashboard_user,
        writable=_unit_path(layout.dashboard_state_dir, "dashboard state_dir"),
        restart_s=options.restart_s,
        start_timeout_s=options.start_timeout_s,
        stop_timeout_s=options.stop_timeout_s,
        start_limit_interval_s=options.start_limit_interval_s,
        start_limit_burst=options.start_limit_burst,
        memory_max=options.dashboard_memory_max,
        capabilities=_capabilities(options.dashboard_port, "The dashboard's HTTP"),
    )


def _tmpfiles(layout: Layout, name: str, entries: list[LayoutDir]) -> str:
    lines = []
    for entry in entries:
        user, group = layout.owner_names(entry.owner)
        lines.append(f"d {_unit_path(entry.path, 'folder')} {entry.mode:04o} {user} {group} -")
    return _template("tmpfiles.conf.tmpl").substitute(name=name, lines="\n".join(lines))


def _sysusers(name: str, user: str, gecos: str, home: Path) -> str:
    return _template("sysusers.conf.tmpl").substitute(name=name, user=user, gecos=gecos, home=_unit_path(home, "home"))


def render_units(
    layout: Layout | None = None,
    options: UnitOptions | None = None,
    *,
    runtime: bool = True,
    dashboard: bool = True,
) -> dict[str, str]:
    """The unit files and snippets for ``layout``, by install path relative to the image root.

    Args:
        layout: the paths the services will use (default: the standard layout under ``/``).
        options: board and site choices (default: :class:`UnitOptions` defaults).
        runtime: include the appliance runtime's unit and snippets.
        dashboard: include the dashboard's unit and snippets.

    Returns:
        ``{"etc/systemd/system/medge-runtime.service": text, "etc/sysusers.d/medge.conf": text, ...}``.

    Raises:
        ConfigError: a path cannot be written into a unit file.
    """
    layout = layout or Layout()
    options = options or UnitOptions()
    files: dict[str, str] = {}
    directories = layout.directories()
    if runtime:
        files[f"{_UNIT_DIR}/{RUNTIME_UNIT}"] = _runtime_unit(layout, options)
        files[f"{_SYSUSERS_DIR}/medge.conf"] = _sysusers(
            "medge.conf", layout.user, "medge appliance runtime", layout.state_dir
        )
        files[f"{_TMPFILES_DIR}/medge.conf"] = _tmpfiles(
            layout, "medge.conf", [d for d in directories if d.owner is not Owner.DASHBOARD]
        )
    if dashboard:
        files[f"{_UNIT_DIR}/{DASHBOARD_UNIT}"] = _dashboard_unit(layout, options)
        files[f"{_SYSUSERS_DIR}/medge-dashboard.conf"] = _sysusers(
            "medge-dashboard.conf", layout.dashboard_user, "medge dashboard", layout.dashboard_state_dir
        )
        files[f"{_TMPFILES_DIR}/medge-dashboard.conf"] = _tmpfiles(
            layout,
            "medge-dashboard.conf",
            [d for d in directories if d.owner in (Owner.ROOT, Owner.DASHBOARD)],
        )
    return files


def install_units(
    layout: Layout | None = None,
    options: UnitOptions | None = None,
    *,
    root: str | Path = "/",
    runtime: bool = True,
    dashboard: bool = True,
) -> list[Path]:
    """Write the rendered files under ``root`` (an image's root file system, or ``/``), mode 0644.

    Each file is replaced atomically. Afterwards, on the running system:
    ``systemd-sysusers``, ``systemd-tmpfiles --create``, ``systemctl daemon-reload``
    and ``systemctl enable --now medge-runtime``; in an image build, the first
    boot does the first two and ``systemctl --root=ROOT enable`` the last.

    Returns:
        The files written.

    Raises:
        ConfigError: a path cannot be written into a unit file.
        OSError: a file cannot be written.
    """
    written = []
    for relative, text in render_units(layout, options, runtime=runtime, dashboard=dashboard).items():
        path = Path(root) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(path)
    log.info("installed %d systemd file(s) under %s", len(written), root)
    return written
