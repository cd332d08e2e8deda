"""``medge provision``'s refusals: each names what is wrong and what to do, and leaves nothing half-made behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dashboard.store import Role
from firmware_integration.broker import AuthMode
from firmware_integration.broker.registrar import FolderRegistrar
from firmware_integration.layout import Layout
from firmware_integration.provisioning import Provisioner, ProvisionError, ProvisionOptions
from sdk.errors import ConfigError
from sdk.testing.mosquitto import free_port
from tests.conftest import ReferencePackages
from tests.dashboard.enrollment_support import Dashboard, dashboard_config
from tests.firmware_integration.test_broker import make_broker_folder, make_test_pki

SITE, DEVICE = "st-marys", "ct-1"


@pytest.fixture
def dashboard(tmp_path: Path, reference_packages: ReferencePackages) -> Iterator[Dashboard]:
    """A dashboard over HTTPS whose registrar writes a broker folder (no broker needs to run for these)."""
    folder = make_broker_folder(tmp_path / "broker", make_test_pki(tmp_path / "pki"), AuthMode.PASSWORD)
    config = dashboard_config(tmp_path / "dashboard", reference_packages.pair.public_path)
    started = Dashboard.start(config, registrar=FolderRegistrar(folder))
    yield started
    started.close()


def _options(dashboard: Dashboard, tmp_path: Path, token: str, **changes: object) -> ProvisionOptions:
    fields: dict[str, object] = {
        "dashboard_url": dashboard.url,
        "token": token,
        "site": SITE,
        "device": DEVICE,
        "scanner_aes": ("CT1",),
        "dashboard_ca": dashboard.ca,
        "profile": "generic-x86_64-cpu",
        "layout": Layout(tmp_path / "root"),
    }
    fields.update(changes)
    return ProvisionOptions(**fields)  # type: ignore[arg-type]


def _token(dashboard: Dashboard, **body: object) -> str:
    made = dashboard.api(Role.TECHNICIAN).post("/api/v1/enrollment-tokens", json={"site": SITE, **body})
    assert made.status_code == 200, made.text
    return str(made.json()["token"])


def test_a_good_token_writes_a_config_the_appliance_loads(dashboard: Dashboard, tmp_path: Path) -> None:
    from sdk.appliance_config import load_appliance_config

    steps: list[str] = []
    result = Provisioner(_options(dashboard, tmp_path, _token(dashboard)), on_step=lambda s, _: steps.append(s)).run()
    assert steps == ["layout", "profile", "key", "enroll", "credentials", "config", "package"]
    config = load_appliance_config(result.config_path)
    assert (config.appliance.site, config.appliance.device) == (SITE, DEVICE)
    assert config.mqtt.username == f"{SITE}/{DEVICE}" and config.mqtt.password() and config.mqtt.ca_file
    assert config.dashboard.url == dashboard.url and config.dashboard.token_file is not None
    assert config.dicom.allowed_calling_aes == ["CT1"]
    assert result.package is None and len(result.trusted_keys) == 1
    assert (config.packages.trusted_keys_dir / f"{result.trusted_keys[0]}.pub").is_file()  # type: ignore[operator]
    # Provisioned already: a second run says so instead of enrolling again.
    with pytest.raises(ProvisionError, match="provisioned already; pass --overwrite"):
        Provisioner(_options(dashboard, tmp_path, _token(dashboard))).run()


def test_a_used_or_wrong_token_is_refused_and_the_key_is_kept_for_the_next_try(
    dashboard: Dashboard, tmp_path: Path
) -> None:
    with pytest.raises(ProvisionError, match=r"refused the enrollment \(401\)"):
        Provisioner(_options(dashboard, tmp_path, "x" * 43)).run()
    key = (tmp_path / "root" / "etc" / "medge" / "mqtt" / "device.key").read_bytes()
    assert not (tmp_path / "root" / "etc" / "medge" / "appliance.toml").exists()
    with pytest.raises(ProvisionError, match=r"refused the enrollment \(403\)"):
        Provisioner(_options(dashboard, tmp_path, _token(dashboard, device="ct-2"))).run()
    steps: list[tuple[str, str]] = []
    Provisioner(_options(dashboard, tmp_path, _token(dashboard)), on_step=lambda *s: steps.append(s)).run()
    assert ("key", steps[2][1]) == steps[2] and "kept" in steps[2][1]
    assert (tmp_path / "root" / "etc" / "medge" / "mqtt" / "device.key").read_bytes() == key


def test_unreachable_untrusted_or_plain_http_dashboards_are_refused(dashboard: Dashboard, tmp_path: Path) -> None:
    token = _token(dashboard)
    with pytest.raises(ProvisionError, match="cannot reach the dashboard"):
        Provisioner(_options(dashboard, tmp_path, token, dashboard_url=f"https://127.0.0.1:{free_port()}")).run()
    with pytest.raises(ProvisionError, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
        Provisioner(_options(dashboard, tmp_path, token, dashboard_ca=None)).run()
    with pytest.raises(ConfigError, match="unencrypted"):
        Provisioner(_options(dashboard, tmp_path, token, dashboard_url="http://dashboard.example:8080"))
    with pytest.raises(ConfigError, match="no CA file"):
        Provisioner(_options(dashboard, tmp_path, token, dashboard_ca=tmp_path / "missing.crt")).run()
    # The token survived every refusal above: nothing reached the dashboard.
    Provisioner(_options(dashboard, tmp_path, token)).run()
