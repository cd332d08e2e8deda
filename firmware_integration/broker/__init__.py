"""The production Mosquitto broker of a site: configuration, ACLs and device credentials.

A site runs one Mosquitto 2.0 broker between its appliances and the
dashboard. This package makes the broker's folder (a TLS listener,
password or mutual-TLS authentication, pattern ACLs that confine each
device to ``medge/v1/{site}/{device}/...``, persistence, limits) and
manages who may connect::

    from firmware_integration.broker import add_device, write_broker_config

    write_broker_config("/etc/mosquitto/medge", hostnames=["broker.hospital.local"])
    add_device("/etc/mosquitto/medge", "site-a", "ct-1").write("bundle-ct-1")

The ``medge broker`` commands wrap the same functions; docs/broker.md
explains the setup, the ACL scheme and reloads.
"""

from firmware_integration.broker.accounts import (
    Credentials,
    add_dashboard,
    add_device,
    read_broker_settings,
    reload_broker,
    remove_dashboard,
    remove_device,
)
from firmware_integration.broker.config import DEFAULT_PID_FILE, render_broker_files, write_broker_config
from firmware_integration.broker.folder import (
    AuthMode,
    BrokerError,
    BrokerFolder,
    BrokerLimits,
    BrokerSettings,
    DashboardEntry,
    DeviceEntry,
    RevokedCertificate,
)
from firmware_integration.broker.passwords import check_password, hash_password
from firmware_integration.broker.pki import TlsMaterial

__all__ = [
    "DEFAULT_PID_FILE",
    "AuthMode",
    "BrokerError",
    "BrokerFolder",
    "BrokerLimits",
    "BrokerSettings",
    "Credentials",
    "DashboardEntry",
    "DeviceEntry",
    "RevokedCertificate",
    "TlsMaterial",
    "add_dashboard",
    "add_device",
    "check_password",
    "hash_password",
    "read_broker_settings",
    "reload_broker",
    "remove_dashboard",
    "remove_device",
    "render_broker_files",
    "write_broker_config",
]
