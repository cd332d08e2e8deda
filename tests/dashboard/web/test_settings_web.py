"""The [web] and [fleet] sections of dashboard.toml (dashboard/settings.py): defaults and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashboard.settings import DashboardConfig, load_dashboard_config
from sdk.errors import ConfigError

SECURE_MQTT = """
[mqtt]
host = "broker.hospital.local"
username = "dashboard"
password_file = "/etc/medge/dashboard.password"
ca_file = "/etc/medge/ca.pem"
"""


def _load(tmp_path: Path, text: str) -> DashboardConfig:
    path = tmp_path / "dashboard.toml"
    path.write_text(f'data_dir = "{tmp_path}"\n' + text)
    return load_dashboard_config(path)


def test_the_defaults_are_safe(tmp_path: Path) -> None:
    config = _load(tmp_path, SECURE_MQTT)
    assert config.web.host == "127.0.0.1" and config.web.port == 8080 and not config.web.uses_tls
    assert config.fleet.silent_after_s == 45.0, "1.5x the appliances' 30 s keep-alive"
    assert config.web.display_timezone == "UTC"


@pytest.mark.parametrize(
    ("web", "field", "message"),
    [
        ('host = "0.0.0.0"', None, "plain HTTP is demo-only"),
        ('tls_cert_file = "c.pem"', "web", "go together"),
        ('display_timezone = "Mars/Olympus"', "web.display_timezone", "unknown time zone"),
        ("page_size = 1", "web.page_size", "greater than or equal to 5"),
        ("login_max_failures = 0", "web.login_max_failures", "greater than or equal to 1"),
    ],
)
def test_bad_web_settings_name_the_field(tmp_path: Path, web: str, field: str | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        _load(tmp_path, SECURE_MQTT + f"[web]\n{web}\n")
    assert caught.value.field == field


def test_a_network_address_needs_tls_or_a_tls_proxy(tmp_path: Path) -> None:
    tls = _load(tmp_path, SECURE_MQTT + '[web]\nhost = "0.0.0.0"\ntls_cert_file = "c.pem"\ntls_key_file = "k.pem"\n')
    assert tls.web.uses_tls
    proxied = _load(tmp_path, SECURE_MQTT + '[web]\nhost = "10.1.1.1"\nbehind_https_proxy = true\n')
    assert proxied.web.behind_https_proxy
    demo = _load(tmp_path, 'demo = true\n[web]\nhost = "0.0.0.0"\n')
    assert demo.web.host == "0.0.0.0"


def test_the_fleet_threshold_follows_the_appliances_settings(tmp_path: Path) -> None:
    config = _load(tmp_path, SECURE_MQTT + "[fleet]\nkeepalive_s = 10\nheartbeat_interval_s = 20\n")
    assert config.fleet.silent_after_s == 30.0
