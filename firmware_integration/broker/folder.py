"""The broker folder: its layout, its registry (``broker.json``), its lock and its file permissions.

Everything a site's Mosquitto needs lives in one folder made by
:func:`~firmware_integration.broker.write_broker_config`::

    DIR/
      broker.json          the registry: settings, devices, dashboards, revoked certificates
      mosquitto.conf       main config for a stand-alone broker (user, pid, persistence, logging)
      conf.d/medge.conf    limits, the listener, authentication, ACL file (works inside Debian's config too)
      acl                  ACL patterns and per-dashboard blocks
      passwd               PBKDF2-SHA512 password hashes (password auth)
      tls/ca.crt, tls/server.crt, tls/server.key, tls/crl.pem
      ca/ca.key            the CA's private key, owner-only: issues device certificates, never read by the broker
      data/                the broker's persistence database

``broker.json`` is the source of truth; the config and ACL files are rendered
from it after every change and say so in their header.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pwd
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from sdk.config_files import config_error_from_validation
from sdk.errors import ConfigError, MedgeError
from sdk.topics import check_segment

__all__ = [
    "AuthMode",
    "BrokerError",
    "BrokerFolder",
    "BrokerLimits",
    "BrokerSettings",
    "DashboardEntry",
    "DeviceEntry",
    "RevokedCertificate",
]

logger = logging.getLogger(__name__)

REGISTRY_FORMAT: Literal[1] = 1
_NOT_A_FOLDER = "not a medge broker folder (no broker.json): create one with `medge broker init`"


class BrokerError(MedgeError):
    """The broker folder cannot be used or changed (missing, unreadable, a file cannot be written, no such broker)."""


class AuthMode(StrEnum):
    """How devices and dashboards prove who they are to the broker."""

    PASSWORD = "password"
    """A username and password per identity, over TLS (``password_file``)."""
    CERTIFICATE = "certificate"
    """Mutual TLS: a client certificate per identity whose CN is the username (``use_identity_as_username``)."""


class BrokerLimits(BaseModel):
    """Resource limits of the broker; the defaults suit a site with up to a few hundred appliances."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_connections: int = Field(default=5000, ge=-1, description="per listener; -1 for no limit")
    max_inflight_messages: int = Field(default=100, ge=0, description="outgoing QoS 1 messages in flight per client")
    max_queued_messages: int = Field(
        default=100_000, ge=0, description="QoS 1 messages queued per offline or slow client, above those in flight"
    )
    max_queued_bytes: int = Field(default=256 * 1024 * 1024, ge=0, description="bytes queued per client; 0: no limit")
    max_packet_size: int = Field(
        default=1024 * 1024,
        ge=20,
        description="largest MQTT packet (findings are a few kB); a client sending more is disconnected",
    )
    max_keepalive_s: int = Field(default=3600, ge=10, le=65535, description="largest keep-alive an MQTT 5 client gets")
    autosave_interval_s: int = Field(
        default=60, ge=1, description="seconds between writes of the persistence database (mosquitto's default: 1800)"
    )
    persistent_client_expiration: str = Field(
        default="30d",
        pattern=r"^[1-9][0-9]*[hdwmy]$",
        description="drop persistent sessions of clients away this long (h, d, w, m or y)",
    )


class DeviceEntry(BaseModel):
    """An appliance allowed to connect, as ``{site}/{device}``."""

    model_config = ConfigDict(extra="forbid")

    site: str
    device: str
    added: datetime
    cert_serial: str | None = Field(default=None, description="hex serial of its certificate (certificate auth)")

    @field_validator("site", "device")
    @classmethod
    def _segment(cls, value: str, info: ValidationInfo) -> str:
        return check_segment(value, info.field_name or "name")

    @property
    def username(self) -> str:
        """The broker identity: the password-file username or the certificate CN."""
        return f"{self.site}/{self.device}"


class DashboardEntry(BaseModel):
    """A dashboard identity: reads every medge topic, writes commands and acknowledgements."""

    model_config = ConfigDict(extra="forbid")

    name: str
    added: datetime
    cert_serial: str | None = None

    @field_validator("name")
    @classmethod
    def _segment(cls, value: str) -> str:
        return check_segment(value, "dashboard")

    @property
    def username(self) -> str:
        return self.name


class RevokedCertificate(BaseModel):
    """A certificate listed in the CRL; its identity is denied in the ACL until it is added again."""

    model_config = ConfigDict(extra="forbid")

    serial: str
    username: str
    revoked: datetime


class BrokerSettings(BaseModel):
    """The registry in ``broker.json``: how the broker is set up and who may connect."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = REGISTRY_FORMAT
    auth: AuthMode
    tls: bool
    port: int = Field(ge=1, le=65535)
    bind_address: str
    hostnames: list[str] = Field(
        description="names and addresses clients use for the broker; the first goes to bundles"
    )
    run_as: str | None = Field(description="the user mosquitto drops to when started as root")
    bind_client_id: bool = Field(description="client id := username, so no identity can take over another's session")
    pid_file: Path
    ca_key: bool = Field(description="the CA key is in ca/ca.key, so medge can issue client certificates and CRLs")
    limits: BrokerLimits = BrokerLimits()
    devices: list[DeviceEntry] = []
    dashboards: list[DashboardEntry] = []
    revoked: list[RevokedCertificate] = []

    def device(self, site: str, device: str) -> DeviceEntry | None:
        """The entry of one device, if registered."""
        return next((d for d in self.devices if d.site == site and d.device == device), None)

    def dashboard(self, name: str) -> DashboardEntry | None:
        """The entry of one dashboard identity, if registered."""
        return next((d for d in self.dashboards if d.name == name), None)

    def denied_usernames(self) -> list[str]:
        """Identities whose certificate was revoked and that have not been added again."""
        active = {d.username for d in self.devices} | {d.username for d in self.dashboards}
        return sorted({r.username for r in self.revoked} - active)


def now() -> datetime:
    """The current time, timezone-aware (registry timestamps)."""
    return datetime.now(UTC).replace(microsecond=0)


class BrokerFolder:
    """Paths, registry I/O, locking and permissions of one broker folder.

    Files the broker reads are group-readable by the broker's user when medge
    runs as root (``chown root:<run_as group>``, mode 0640); the CA key is
    owner-only (0600) in a folder the broker cannot enter.

    Raises:
        BrokerError: the registry is missing or a file cannot be written.
        ConfigError: the registry is invalid (names the field).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()
        self.registry = self.path / "broker.json"
        self.main_config = self.path / "mosquitto.conf"
        self.conf_d = self.path / "conf.d"
        self.medge_config = self.conf_d / "medge.conf"
        self.acl_file = self.path / "acl"
        self.password_file = self.path / "passwd"
        self.tls_dir = self.path / "tls"
        self.ca_cert = self.tls_dir / "ca.crt"
        self.server_cert = self.tls_dir / "server.crt"
        self.server_key = self.tls_dir / "server.key"
        self.crl_file = self.tls_dir / "crl.pem"
        self.ca_dir = self.path / "ca"
        self.ca_key = self.ca_dir / "ca.key"
        self.data_dir = self.path / "data"

    def exists(self) -> bool:
        """Whether a registry is present (the folder was made by medge)."""
        return self.registry.is_file()

    def load(self) -> BrokerSettings:
        """Read and validate ``broker.json``."""
        try:
            data = json.loads(self.registry.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise BrokerError(_NOT_A_FOLDER, path=self.path) from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BrokerError(f"cannot read the broker registry: {exc}", path=self.registry) from exc
        try:
            return BrokerSettings.model_validate(data)
        except ValidationError as exc:
            raise config_error_from_validation(exc, self.registry) from exc

    def save(self, settings: BrokerSettings) -> None:
        """Write ``broker.json`` atomically."""
        self.write(self.registry, settings.model_dump_json(indent=2).encode() + b"\n", settings.run_as)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock, so two commands cannot interleave their changes."""
        if not self.path.is_dir():
            raise BrokerError(_NOT_A_FOLDER, path=self.path)
        try:
            fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise BrokerError(f"cannot lock the broker folder: {exc.strerror}", path=self.path) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def make_dirs(self, run_as: str | None) -> None:
        """Create the folder tree with its permissions (idempotent)."""
        ids = broker_ids(run_as)
        try:
            for folder, mode in ((self.path, 0o750), (self.conf_d, 0o750), (self.tls_dir, 0o750)):
                folder.mkdir(parents=True, exist_ok=True)
                os.chmod(folder, mode)
                if ids is not None:
                    os.chown(folder, 0, ids[1])
            self.ca_dir.mkdir(mode=0o700, exist_ok=True)
            os.chmod(self.ca_dir, 0o700)
            self.data_dir.mkdir(mode=0o700, exist_ok=True)
            if ids is not None:
                os.chown(self.data_dir, ids[0], ids[1])
        except OSError as exc:
            raise BrokerError(f"cannot create the broker folder: {exc.strerror}", path=exc.filename) from exc

    def write(self, path: Path, data: bytes, run_as: str | None, *, mode: int = 0o640, private: bool = False) -> None:
        """Replace ``path`` atomically; readable by the broker's group unless ``private`` (then owner-only)."""
        ids = None if private else broker_ids(run_as)
        mode = 0o600 if private else mode
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.chmod(tmp, mode)
                if ids is not None:
                    os.chown(tmp, 0, ids[1])
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            raise BrokerError(f"cannot write {path.name}: {exc.strerror}", path=path) from exc


def broker_ids(run_as: str | None) -> tuple[int, int] | None:
    """The uid and gid the broker drops to, when medge runs as root and files must be shared with it.

    Raises:
        ConfigError: running as root and the user does not exist.
    """
    if run_as is None or run_as == "root" or os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(run_as)
    except KeyError:
        raise ConfigError(
            f"user {run_as!r} does not exist: install mosquitto (it creates the user) or choose --run-as",
            field="run_as",
        ) from None
    return entry.pw_uid, entry.pw_gid
