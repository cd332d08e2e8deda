"""The dashboard config (``dashboard.toml``) with environment overrides.

Every field can be overridden by an environment variable named
``MEDGE_DASHBOARD_<FIELD>`` or ``MEDGE_DASHBOARD_<SECTION>__<FIELD>`` (e.g.
``MEDGE_DASHBOARD_MQTT__HOST=broker.local``,
``MEDGE_DASHBOARD_STORE__URL=postgresql+psycopg://...``), which wins over the
file, as for the appliance. Unsafe settings (an anonymous broker connection)
are refused unless ``demo`` is true.

A minimal file::

    data_dir = "/var/lib/medge-dashboard"

    [mqtt]
    host = "broker.hospital.local"
    username = "dashboard"
    password_file = "/etc/medge/dashboard.password"
    ca_file = "/etc/medge/ca.pem"

    [web]
    host = "0.0.0.0"
    tls_cert_file = "/etc/medge/dashboard.crt"
    tls_key_file = "/etc/medge/dashboard.key"
    display_timezone = "Europe/Berlin"

The web server listens on loopback by default; any other address needs TLS
(``web.tls_cert_file``/``web.tls_key_file``) or a TLS-terminating proxy in front
(``web.behind_https_proxy``), because session cookies must not cross the
hospital network in clear text.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from sdk.broker_connection import BrokerConnection
from sdk.config_files import FileSettings, load_toml_model

__all__ = [
    "DashboardConfig",
    "EnrollmentSection",
    "FleetSection",
    "MqttSection",
    "PackagesSection",
    "StoreSection",
    "WebSection",
    "load_dashboard_config",
]

_SEGMENT = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_DATABASES = ("sqlite", "postgresql")


def _default_client_id() -> str:
    # Stable across restarts of the same host (the broker keeps the session under it)
    # and different per host, so two dashboard servers never take each other's session.
    host = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in socket.gethostname())
    return f"medge-dashboard-{host}"[:64]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoreSection(_Section):
    """Where findings, devices and events are kept."""

    url: str | None = Field(
        default=None,
        description="sqlite:///path or postgresql[+driver]://...; default: dashboard.sqlite in data_dir",
    )
    heartbeat_history: int = Field(default=1440, ge=1, description="heartbeats kept per device for the charts")

    @field_validator("url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            backend = make_url(value).get_backend_name()
        except ArgumentError as exc:
            raise ValueError(f"not a database URL: {value!r}") from exc
        if backend not in _DATABASES:
            raise ValueError(f"database {backend!r} is not supported (use sqlite or postgresql)")
        return value


class MqttSection(BrokerConnection):
    """The broker connection and how the ingest consumes it."""

    client_id: str = Field(
        default_factory=_default_client_id,
        min_length=1,
        max_length=64,
        description="unique per dashboard process and stable across its restarts (the broker keeps its session)",
    )
    share_group: str = Field(
        default="medge-dashboard", pattern=_SEGMENT, description="dashboard processes in one group split the load"
    )
    session_expiry_s: int = Field(
        default=86_400, ge=0, description="how long the broker keeps this process's session and queue while it is away"
    )
    batch_window_ms: float = Field(
        default=10.0, gt=0, le=1000, description="how long messages are collected into one transaction"
    )
    batch_max: int = Field(default=1000, ge=1, description="most messages in one transaction")
    reconnect_max_s: int = Field(
        default=5, ge=1, le=300, description="cap of the reconnect delay: the backlog waits this long at most"
    )
    receive_maximum: int = Field(
        default=4000,
        ge=1,
        le=65535,
        description="uncommitted QoS 1 messages the broker may have in flight to this process (MQTT 5 Receive Maximum)",
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebSection(_Section):
    """The web UI and REST API: where it listens, sessions, login throttling, display."""

    host: str = Field(default="127.0.0.1", min_length=1, description="address the web server binds")
    port: int = Field(default=8080, ge=0, le=65535, description="0: any free port (tests)")
    tls_cert_file: Path | None = Field(default=None, description="serve HTTPS with this certificate (PEM)")
    tls_key_file: Path | None = Field(default=None, description="the certificate's private key (PEM)")
    behind_https_proxy: bool = Field(
        default=False, description="a TLS-terminating reverse proxy is in front: cookies are marked Secure"
    )
    trusted_proxies: list[str] = Field(
        default=[], description="proxy addresses whose X-Forwarded-For/-Proto are believed (client IP in the audit)"
    )
    session_idle_minutes: int = Field(default=60, ge=1, le=24 * 60, description="a session unused this long ends")
    session_max_hours: float = Field(default=12.0, gt=0, le=24 * 7, description="a session ends this long after login")
    login_max_failures: int = Field(
        default=5, ge=1, le=100, description="failed logins per user or client address before a lockout"
    )
    login_window_s: float = Field(default=900.0, gt=0, description="failures older than this are forgotten")
    login_lockout_s: float = Field(
        default=60.0, gt=0, le=86_400, description="first lockout; it doubles with each further failure (max 1 h)"
    )
    display_timezone: str = Field(default="UTC", description="IANA time zone the pages show times in")
    show_accession_number: bool = Field(
        default=True,
        description="show a finding's accession number and patient ID when the appliance's PHI policy sent them",
    )
    page_size: int = Field(default=50, ge=5, le=500, description="findings per worklist page")
    live_poll_ms: float = Field(
        default=200.0, ge=20, le=5000, description="how often the live feed looks for new findings in the store"
    )

    @field_validator("display_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Europe/Berlin)") from exc
        return value

    @property
    def uses_tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def is_loopback(self) -> bool:
        """True when only this machine can reach the server."""
        return _is_loopback(self.host)

    @model_validator(mode="after")
    def _cert_needs_key(self) -> WebSection:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("web.tls_cert_file and web.tls_key_file go together")
        return self


class FleetSection(_Section):
    """How the appliances report, so the dashboard knows when one has gone quiet."""

    keepalive_s: int = Field(
        default=30, ge=5, le=3600, description="the appliances' MQTT keep-alive (their reporting.keepalive_s)"
    )
    heartbeat_interval_s: float = Field(
        default=30.0, ge=1, le=3600, description="the appliances' heartbeat period (their heartbeat_interval_s)"
    )

    @property
    def silent_after_s(self) -> float:
        """An appliance not heard from for this long is shown offline (the broker's will takes as long)."""
        return 1.5 * max(self.keepalive_s, self.heartbeat_interval_s)


class EnrollmentSection(_Section):
    """Enrolling appliances: how long a token lives, and the broker folder new devices are added to."""

    token_ttl_s: float = Field(
        default=24 * 3600.0, gt=0, le=7 * 24 * 3600.0, description="how long a new enrollment token is valid (max 7 d)"
    )
    broker_dir: Path | None = Field(
        default=None,
        description="the site broker's folder (medge broker init): enrollment adds devices there; unset: no enrollment",
    )
    broker_reload: int | Path | None = Field(
        default=None, description="the broker's pid or pid file, signalled to re-read its credentials and ACL"
    )
    broker_host: str | None = Field(
        default=None, min_length=1, description="the broker host devices dial (default: the broker folder's first)"
    )
    broker_port: int | None = Field(default=None, ge=1, le=65535, description="the port devices dial")


class PackagesSection(_Section):
    """Signed model packages: where uploads are kept, which keys they must be signed with, probation."""

    dir: Path | None = Field(default=None, description="where uploaded packages are kept (default: data_dir/packages)")
    trusted_keys_dir: Path | None = Field(
        default=None,
        description="public keys (*.pub) uploads must verify against, also given to devices at enrollment "
        "(default: data_dir/trusted_keys)",
    )
    probation_s: float = Field(
        default=300.0, ge=0, le=86_400, description="how long a device watches a new package before it is done"
    )
    max_upload_bytes: int = Field(default=4 * 1024**3, ge=1024, description="largest package accepted")


class DashboardConfig(FileSettings):
    """The whole dashboard config; see the module docstring for overrides."""

    model_config = SettingsConfigDict(env_prefix="MEDGE_DASHBOARD_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Path("/var/lib/medge-dashboard")
    demo: bool = Field(default=False, description="allow settings only fit for a demo on loopback")
    store: StoreSection = StoreSection()
    mqtt: MqttSection = MqttSection()
    web: WebSection = WebSection()
    fleet: FleetSection = FleetSection()
    enrollment: EnrollmentSection = EnrollmentSection()
    packages: PackagesSection = PackagesSection()

    @property
    def packages_dir(self) -> Path:
        """Where uploaded packages are kept: ``packages.dir`` or ``data_dir/packages``."""
        return self.packages.dir if self.packages.dir is not None else self.data_dir / "packages"

    @property
    def trusted_keys_dir(self) -> Path:
        """The package-signing keys: ``packages.trusted_keys_dir`` or ``data_dir/trusted_keys``."""
        if self.packages.trusted_keys_dir is not None:
            return self.packages.trusted_keys_dir
        return self.data_dir / "trusted_keys"

    @property
    def store_url(self) -> str:
        """The database URL: ``store.url``, or the SQLite file in ``data_dir``."""
        if self.store.url is not None:
            return self.store.url
        return f"sqlite:///{(self.data_dir / 'dashboard.sqlite').resolve()}"

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> DashboardConfig:
        if self.demo:
            return self
        if (problem := self.mqtt.credentials_problem()) is not None:
            raise ValueError(problem)
        web = self.web
        if not (web.is_loopback or web.uses_tls or web.behind_https_proxy):
            raise ValueError(
                f"web.host {web.host!r} would serve logins and session cookies over plain HTTP: set "
                "web.tls_cert_file and web.tls_key_file, or web.behind_https_proxy (plain HTTP is demo-only)"
            )
        return self


def load_dashboard_config(path: str | Path) -> DashboardConfig:
    """Read ``dashboard.toml`` and apply ``MEDGE_DASHBOARD_*`` environment overrides.

    Raises:
        ConfigError: the file is missing or not TOML, or a value is invalid
            (names the file and the field).
    """
    return load_toml_model(path, DashboardConfig, "dashboard config")
