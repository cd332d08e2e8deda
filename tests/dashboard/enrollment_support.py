"""What the enrollment and rollout tests share: a dashboard over HTTPS, API clients, a device's key and CSR."""

from __future__ import annotations

import shutil
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from dashboard.audit import CLI_ACTOR
from dashboard.auth import create_token
from dashboard.enrollment import BrokerRegistrar
from dashboard.settings import DashboardConfig
from dashboard.store import Role
from dashboard.web import DashboardService
from firmware_integration.broker.pki import cert_pem, issue, make_ca
from firmware_integration.provisioning import certificate_request


def https_material(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1 signed by it (firmware_integration.broker.pki): (ca, cert, key)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = make_ca("dashboard test CA")
    server = issue(ca, ca_key, "127.0.0.1", server_names=["127.0.0.1"])
    paths = folder / "ca.crt", folder / "dashboard.crt", folder / "dashboard.key"
    paths[0].write_bytes(cert_pem(ca))
    paths[1].write_bytes(server.cert_pem)
    paths[2].write_bytes(server.key_pem)
    return paths


def device_csr(site: str, device: str) -> tuple[ec.EllipticCurvePrivateKey, str]:
    """The appliance's own key pair and its CSR (CN ``{site}/{device}``), as ``medge provision`` makes them."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key, certificate_request(key, f"{site}/{device}")


def dashboard_config(tmp_path: Path, trusted_key: Path, mqtt_port: int = 1, **sections: Any) -> DashboardConfig:
    """A config serving HTTPS on a free loopback port, with one trusted package-signing key."""
    _, cert, key = https_material(tmp_path / "https")
    trusted = tmp_path / "trusted_keys"
    trusted.mkdir(exist_ok=True)
    shutil.copy(trusted_key, trusted / trusted_key.name)
    settings: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "demo": True,
        "store": {"url": f"sqlite:///{tmp_path / 'data' / 'store.sqlite'}"},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "client_id": "dashboard-test", "batch_window_ms": 5},
        "web": {"port": 0, "tls_cert_file": cert, "tls_key_file": key},
        "packages": {"trusted_keys_dir": trusted, "probation_s": 5},
    }
    for name, values in sections.items():
        settings[name] = {**settings.get(name, {}), **values}
    return DashboardConfig.model_validate(settings)


@dataclass
class Dashboard:
    """A running dashboard service over HTTPS and httpx clients of it, verified with its CA."""

    config: DashboardConfig
    service: DashboardService
    ca: Path
    _clients: list[httpx.Client] = field(default_factory=list)

    @classmethod
    def start(
        cls, config: DashboardConfig, *, ingest: bool = False, registrar: BrokerRegistrar | None = None
    ) -> Dashboard:
        service = DashboardService(config, ingest=ingest, registrar=registrar).start()
        assert config.web.tls_cert_file is not None
        return cls(config, service, config.web.tls_cert_file.parent / "ca.crt")

    @property
    def url(self) -> str:
        return self.service.url

    def client(self, token: str | None = None) -> httpx.Client:
        """An HTTPS client that trusts only the test CA (and sends ``token`` as a bearer)."""
        headers = {"authorization": f"Bearer {token}"} if token else {}
        client = httpx.Client(
            base_url=self.url, verify=ssl.create_default_context(cafile=self.ca), headers=headers, timeout=30
        )
        self._clients.append(client)
        return client

    def api(self, role: Role) -> httpx.Client:
        """A script's client with a fresh API token of ``role``."""
        token = create_token(self.service.store, f"{role.value}-{len(self._clients)}", role, actor=CLI_ACTOR)
        return self.client(token.secret)

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self.service.stop()
