"""The appliance config (``appliance.toml``) with environment overrides.

Every field can be overridden by an environment variable named
``MEDGE_<SECTION>__<FIELD>`` (e.g. ``MEDGE_MQTT__HOST=broker.local``), which
wins over the file: systemd drop-ins and containers set site specifics that
way. Unsafe settings (an anonymous broker connection, a catch-all calling AE
list) are refused unless ``appliance.demo`` is true.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import SettingsConfigDict

from sdk.broker_connection import BrokerConnection
from sdk.config_files import FileSettings, load_toml_model
from sdk.routing import RoutingSection

__all__ = [
    "ApplianceConfig",
    "ApplianceSection",
    "DashboardSection",
    "DicomSection",
    "MqttSection",
    "PackagesSection",
    "PacsSection",
    "PhiSection",
    "load_appliance_config",
]

_SEGMENT = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_AE_TITLE = r"^[ -~]*[!-~][ -~]*$"  # an AE title: printable ASCII, not only spaces


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApplianceSection(_Section):
    """Who this appliance is and where it keeps its state."""

    site: str = Field(pattern=_SEGMENT)
    device: str = Field(pattern=_SEGMENT)
    profile: str | None = Field(default=None, description="device profile id; detected when absent")
    data_dir: Path = Path("/var/lib/medge")
    fail_closed: bool = Field(default=False, description="refuse to go live rather than fall back to CPU")
    demo: bool = Field(default=False, description="allow settings only fit for a demo on loopback")


class DicomSection(_Section):
    """The DICOM Storage SCP."""

    ae_title: str = Field(default="MEDGE", min_length=1, max_length=16, pattern=r"^[ -~]*[!-~][ -~]*$")
    host: str = "0.0.0.0"
    port: int = Field(default=11112, ge=1, le=65535)
    allowed_calling_aes: list[str] = []
    quiet_time_s: float = Field(default=5.0, ge=0, description="silence after release before a series is complete")
    unreleased_timeout_s: float = Field(
        default=300.0, gt=0, description="silence after which a series completes although its association never closed"
    )
    spool_quota_mb: int = Field(default=10_240, ge=1)
    watch_dir: Path | None = None
    instance_timeout_s: float = Field(
        default=60.0, gt=0, description="an instance still decoding or analysing after this is set aside (a hang)"
    )


class MqttSection(BrokerConnection):
    """The broker connection and how the reporter uses it.

    The defaults suit a hospital network where the broker or the dashboard
    may be away for hours: a persistent session the broker keeps for a week,
    findings kept on disk until the dashboard acknowledges them, and
    reconnects that back off to 10 s (jittered), so a backlog drains soon after the broker returns.
    """

    client_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="stable MQTT client id (the broker keys the session on it); default medge-{site}-{device}",
    )
    session_expiry_s: int = Field(
        default=7 * 24 * 3600,
        ge=0,
        le=0xFFFFFFFF,
        description="how long the broker keeps the session (subscriptions, queued acks and commands) while away",
    )
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300, description="TCP/TLS connect and CONNACK wait")
    reconnect_min_s: float = Field(default=1.0, gt=0, description="first reconnect delay; doubles per failure")
    reconnect_max_s: float = Field(
        default=10.0,
        gt=0,
        description="cap of the reconnect delay (before jitter): how long after a broker's return the backlog waits",
    )
    max_inflight: int = Field(
        default=100,
        ge=1,
        le=65535,
        description="messages published and not yet PUBACKed; capped by the broker's Receive Maximum",
    )
    resend_after_s: float = Field(
        default=120.0, gt=0, description="re-send a message the dashboard has not acknowledged after this"
    )
    outbox_limit: int = Field(
        default=100_000,
        ge=1,
        description="unacknowledged findings at which new instances are refused upstream (findings are never dropped)",
    )
    events_limit: int = Field(
        default=10_000,
        ge=1,
        description="unacknowledged events and command results kept; beyond it the oldest are dropped and counted",
    )
    heartbeat_interval_s: float = Field(default=30.0, ge=1, le=3600, description="QoS 0 heartbeat period")
    keep_acked_s: float = Field(
        default=3600.0, ge=0, description="acknowledged findings stay in the outbox this long (for inspection)"
    )

    @model_validator(mode="after")
    def _check(self) -> MqttSection:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(
                f"mqtt.reconnect_min_s ({self.reconnect_min_s}) exceeds reconnect_max_s ({self.reconnect_max_s})"
            )
        return self


class PackagesSection(_Section):
    """Installed model packages and the keys they must be signed with."""

    dir: Path = Path("/var/lib/medge/packages")
    trusted_keys_dir: Path | None = None


class DashboardSection(_Section):
    """The dashboard this appliance was enrolled with: over-the-air package downloads come from it."""

    url: str | None = Field(default=None, description="the dashboard's base URL (https://...)")
    ca_file: Path | None = Field(default=None, description="CA to verify the dashboard with (default: system CAs)")
    token_file: Path | None = Field(default=None, description="file holding the device token of the device API")


class PhiSection(_Section):
    """What patient-identifying references may leave the appliance.

    ``pseudonymous`` (the default): study, series and instance references as
    keyed pseudonyms only. ``accession``: also the accession number, and
    ``accession-and-patient-id``: also the patient ID — each only over a TLS
    broker connection (never in clear). A patient's name or birth date never leaves.
    """

    policy: Literal["pseudonymous", "accession", "accession-and-patient-id"] = "pseudonymous"
    site_key_file: Path | None = None


class PacsSection(_Section):
    """Results back to the hospital's PACS: each finding of the chosen packages as a DICOM SR, sent with C-STORE.

    The SR goes into the source study on the site's own PACS (it carries the
    patient module of the source); it waits in a durable outbox and is retried
    with back-off while the PACS is away. See docs/conformance.md.
    """

    enabled: bool = False
    host: str | None = Field(default=None, description="the PACS's host name or address")
    port: int = Field(default=104, ge=1, le=65535)
    ae_title: str | None = Field(
        default=None, min_length=1, max_length=16, pattern=_AE_TITLE, description="the PACS's (called) AE title"
    )
    calling_ae: str | None = Field(
        default=None, min_length=1, max_length=16, pattern=_AE_TITLE, description="ours; default dicom.ae_title"
    )
    packages: list[str] = Field(default=[], description="model names whose findings become SRs; empty: all")
    template: Literal["tid1500", "comprehensive"] = Field(
        default="tid1500",
        description="tid1500: TID 1500 in a Comprehensive 3D SR; comprehensive: the same in a Comprehensive SR",
    )
    manufacturer: str = Field(default="medge", min_length=1, max_length=64, description="Manufacturer of the SR")
    device_uid: str | None = Field(
        default=None,
        pattern=r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$",
        max_length=64,
        description="the model's Device UID in the SR; default: derived from the package's hash",
    )
    retry_min_s: float = Field(default=5.0, gt=0, description="first retry delay after a failed send; doubles")
    retry_max_s: float = Field(default=300.0, gt=0, description="cap of the retry delay (before jitter)")
    timeout_s: float = Field(default=30.0, gt=0, le=600, description="connect, association and C-STORE response wait")
    keep_sent_s: float = Field(default=3600.0, ge=0, description="sent SRs stay in the outbox this long")

    @model_validator(mode="after")
    def _check(self) -> PacsSection:
        if self.retry_min_s > self.retry_max_s:
            raise ValueError(f"pacs.retry_min_s ({self.retry_min_s}) exceeds retry_max_s ({self.retry_max_s})")
        if self.enabled and (not self.host or not self.ae_title):
            raise ValueError("pacs.enabled needs pacs.host and pacs.ae_title (the PACS's AE title)")
        return self

    def wants(self, model_name: str) -> bool:
        """Whether findings of this model become SRs."""
        return self.enabled and (not self.packages or model_name in self.packages)


class ApplianceConfig(FileSettings):
    """The whole appliance config; see the module docstring for overrides."""

    model_config = SettingsConfigDict(env_prefix="MEDGE_", env_nested_delimiter="__", extra="forbid")

    appliance: ApplianceSection
    dicom: DicomSection = DicomSection()
    mqtt: MqttSection = MqttSection()
    packages: PackagesSection = PackagesSection()
    dashboard: DashboardSection = DashboardSection()
    phi: PhiSection = PhiSection()
    routing: RoutingSection = RoutingSection()
    pacs: PacsSection = PacsSection()

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> ApplianceConfig:
        if self.appliance.demo:
            return self
        if (problem := self.mqtt.credentials_problem()) is not None:
            raise ValueError(problem)
        if not self.dicom.allowed_calling_aes:
            raise ValueError(
                "dicom.allowed_calling_aes is empty: list the scanners' AE titles (open to all is demo-only)"
            )
        return self


def load_appliance_config(path: str | Path) -> ApplianceConfig:
    """Read ``appliance.toml`` and apply ``MEDGE_*`` environment overrides.

    Raises:
        ConfigError: the file is missing or not TOML, or a value is invalid
            (names the file and the field).
    """
    return load_toml_model(path, ApplianceConfig, "appliance config")
