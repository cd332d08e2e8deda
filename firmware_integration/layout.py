"""Where medge keeps its files on an appliance, relocatable under a prefix (an image root, or a test's folder).

::

    /etc/medge/                  root:root 0755   static config, written at provisioning (read-only to the services)
      appliance.toml             root:medge 0640 (dashboard.toml: root:medge-dashboard 0640)
      mqtt/                      root:medge 0750  the broker credential bundle (ca.crt, password or client key)
    /var/lib/medge/              medge:medge 0750 the appliance's state (the service writes only here, in
      packages/                                   /var/log/medge and in /run/medge)
      slots/                     A/B package slots of over-the-air updates
      spool/                     received DICOM, fsync'd before the scanner hears "success"
      trusted_keys/              package-signing keys (rotated over the air, hence state, not config)
      queue.sqlite               the work queue and the findings outbox
    /var/log/medge/              medge:medge 0750
    /run/medge/                  medge:medge 0750 (tmpfs: recreated at boot by tmpfiles.d)
    /var/lib/medge-dashboard/    medge-dashboard:medge-dashboard 0750  the dashboard's store

The same :class:`Layout` renders the systemd units, the ``tmpfiles.d`` and
``sysusers.d`` snippets (:mod:`firmware_integration.systemd`) and creates the
folders itself (:meth:`Layout.create`), so all three agree.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from sdk.errors import ConfigError

__all__ = ["Layout", "LayoutDir", "Owner"]

log = logging.getLogger(__name__)


class Owner(StrEnum):
    """Who owns a folder of the layout."""

    ROOT = "root"
    """root: shared by both services, each file inside readable by the one it is for."""
    CONFIG = "config"
    """root, group the runtime's: the runtime reads it and cannot change it."""
    RUNTIME = "runtime"
    """the runtime's user: its state, logs and sockets."""
    DASHBOARD = "dashboard"
    """the dashboard's user: its store."""


@dataclass(frozen=True)
class LayoutDir:
    """One folder of the layout: where, with which mode, owned by whom."""

    path: Path
    mode: int
    owner: Owner


@dataclass(frozen=True)
class Layout:
    """The appliance's folders under ``prefix`` (``/`` on a real appliance).

    Args:
        prefix: the root the absolute paths are relative to (an image's root
            file system while building it, a temporary folder in tests).
        user: the runtime's system user (and group).
        dashboard_user: the dashboard's system user (and group).
    """

    prefix: Path = Path("/")
    user: str = "medge"
    dashboard_user: str = "medge-dashboard"

    def _under(self, absolute: str) -> Path:
        return Path(self.prefix) / absolute.lstrip("/")

    @property
    def config_dir(self) -> Path:
        return self._under("/etc/medge")

    @property
    def appliance_config(self) -> Path:
        return self.config_dir / "appliance.toml"

    @property
    def dashboard_config(self) -> Path:
        return self.config_dir / "dashboard.toml"

    @property
    def mqtt_dir(self) -> Path:
        """Where the broker credential bundle is installed (``medge broker add-device``'s install dir)."""
        return self.config_dir / "mqtt"

    @property
    def state_dir(self) -> Path:
        """The appliance's ``[appliance] data_dir``."""
        return self._under("/var/lib/medge")

    @property
    def packages_dir(self) -> Path:
        """The appliance's ``[packages] dir``."""
        return self.state_dir / "packages"

    @property
    def slots_dir(self) -> Path:
        return self.state_dir / "slots"

    @property
    def spool_dir(self) -> Path:
        """Where the runtime spools received DICOM (``data_dir/spool``)."""
        return self.state_dir / "spool"

    @property
    def trusted_keys_dir(self) -> Path:
        """The appliance's ``[packages] trusted_keys_dir``."""
        return self.state_dir / "trusted_keys"

    @property
    def queue_file(self) -> Path:
        """The work queue and outbox (``data_dir/queue.sqlite``)."""
        return self.state_dir / "queue.sqlite"

    @property
    def log_dir(self) -> Path:
        return self._under("/var/log/medge")

    @property
    def runtime_dir(self) -> Path:
        return self._under("/run/medge")

    @property
    def dashboard_state_dir(self) -> Path:
        """The dashboard's ``data_dir``."""
        return self._under("/var/lib/medge-dashboard")

    @property
    def writable_dirs(self) -> list[Path]:
        """What the runtime may write (its unit's ``ReadWritePaths=``; everything else is read-only to it)."""
        return [self.state_dir, self.log_dir, self.runtime_dir]

    def directories(self) -> list[LayoutDir]:
        """Every folder of the layout with its mode and owner, parents first."""
        return [
            LayoutDir(self.config_dir, 0o755, Owner.ROOT),
            LayoutDir(self.mqtt_dir, 0o750, Owner.CONFIG),
            LayoutDir(self.state_dir, 0o750, Owner.RUNTIME),
            LayoutDir(self.packages_dir, 0o750, Owner.RUNTIME),
            LayoutDir(self.slots_dir, 0o750, Owner.RUNTIME),
            LayoutDir(self.spool_dir, 0o750, Owner.RUNTIME),
            LayoutDir(self.trusted_keys_dir, 0o750, Owner.RUNTIME),
            LayoutDir(self.log_dir, 0o750, Owner.RUNTIME),
            LayoutDir(self.runtime_dir, 0o750, Owner.RUNTIME),
            LayoutDir(self.dashboard_state_dir, 0o750, Owner.DASHBOARD),
        ]

    def owner_names(self, owner: Owner) -> tuple[str, str]:
        """The user and group names of an owner."""
        if owner is Owner.ROOT:
            return "root", "root"
        if owner is Owner.CONFIG:
            return "root", self.user
        if owner is Owner.RUNTIME:
            return self.user, self.user
        return self.dashboard_user, self.dashboard_user

    def create(self, *, chown: bool | None = None, dashboard: bool = True) -> list[Path]:
        """Create the folders with their modes; as root also give them to their owners.

        Existing folders get their mode (and owner) set again, so running it
        twice, or over a half-made tree, leaves the same result.

        Args:
            chown: set owners (default: when running as root; an unprivileged
                user cannot, and in a test tree does not need to).
            dashboard: also make the dashboard's folder (a dashboard runs on this machine).

        Returns:
            The folders, in the order made.

        Raises:
            ConfigError: an owner's user or group does not exist (create them
                with the ``sysusers.d`` snippet first: ``systemd-sysusers``).
            OSError: a folder cannot be made (permissions, read-only file system).
        """
        chown = os.geteuid() == 0 if chown is None else chown
        wanted = [d for d in self.directories() if dashboard or d.owner is not Owner.DASHBOARD]
        ids = {d.owner: self.ids(d.owner) for d in wanted} if chown else {}
        made = []
        for entry in wanted:
            entry.path.mkdir(parents=True, exist_ok=True)
            os.chmod(entry.path, entry.mode)
            if chown:
                uid, gid = ids[entry.owner]
                os.chown(entry.path, uid, gid)
            made.append(entry.path)
        log.info("medge layout ready under %s (%d folders)", self.prefix, len(made))
        return made

    def ids(self, owner: Owner) -> tuple[int, int]:
        """The uid and gid of an owner on this machine.

        Raises:
            ConfigError: its user or group does not exist.
        """
        user, group = self.owner_names(owner)
        try:
            uid = pwd.getpwnam(user).pw_uid
        except KeyError:
            raise ConfigError(
                f"user {user!r} does not exist: create it first (systemd-sysusers with medge's sysusers.d snippet)",
                field="user",
            ) from None
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(
                f"group {group!r} does not exist: create it first (systemd-sysusers)", field="user"
            ) from None
        return uid, gid
