"""The broker side of enrollment: the dashboard's ``BrokerRegistrar`` on a site's Mosquitto folder.

``medge dashboard`` builds a :class:`FolderRegistrar` when its config names
``[enrollment] broker_dir``; each enrollment then adds the device to the
folder (:func:`~firmware_integration.broker.add_device`: a random password,
or a client certificate issued for the key of the device's own CSR) and
reloads the broker so it takes effect at once.
"""

from __future__ import annotations

import logging
from pathlib import Path

from firmware_integration.broker.accounts import add_device, reload_broker, remove_device
from firmware_integration.broker.folder import AuthMode, BrokerFolder
from firmware_integration.broker.pki import public_key_from_csr
from sdk.fleet_contracts import MqttGrant

__all__ = ["FolderRegistrar"]

logger = logging.getLogger(__name__)


class FolderRegistrar:
    """Registers enrolled devices in a broker folder and reloads the broker.

    Satisfies ``dashboard.enrollment.BrokerRegistrar``.

    Args:
        broker_dir: the folder made by ``medge broker init``.
        reload_target: the broker's pid or pid file, signalled (SIGHUP) after
            each change; ``None``: the caller reloads it (e.g. a systemd path unit).

    Raises:
        BrokerError: (from the methods) the folder cannot be read or written, or the broker cannot be signalled.
        ConfigError: (from :meth:`register`) the CSR is not valid for the device, or a bad name.
    """

    def __init__(self, broker_dir: str | Path, *, reload_target: int | str | Path | None = None) -> None:
        self.folder = BrokerFolder(broker_dir)
        self.reload_target = reload_target

    def register(self, site: str, device: str, csr_pem: str) -> MqttGrant:
        """Let ``{site}/{device}`` connect, replacing credentials it had; the CSR's CN must be ``{site}/{device}``."""
        # Checked whatever the auth mode: the CSR is the device's proof of its identity and key.
        public_key_from_csr(csr_pem, f"{site}/{device}")
        settings = self.folder.load()
        registered = settings.device(site, device) is not None
        credentials = add_device(
            self.folder.path,
            site,
            device,
            replace=registered,
            csr_pem=csr_pem if settings.auth is AuthMode.CERTIFICATE else None,
        )
        self._reload()
        logger.info("device %s/%s registered with the broker (%s auth)", site, device, settings.auth.value)
        return MqttGrant(
            host=credentials.host,
            port=credentials.port,
            username=credentials.username if credentials.password is not None else None,
            password=credentials.password,
            ca_cert_pem=credentials.ca_cert_pem.decode() if credentials.ca_cert_pem else None,
            cert_pem=credentials.cert_pem.decode() if credentials.cert_pem else None,
        )

    def unregister(self, site: str, device: str) -> None:
        """Stop ``{site}/{device}`` from connecting (nothing to do if it is not registered)."""
        if self.folder.load().device(site, device) is None:
            return
        remove_device(self.folder.path, site, device)
        self._reload()

    def _reload(self) -> None:
        if self.reload_target is not None:
            reload_broker(self.reload_target)
