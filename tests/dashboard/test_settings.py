"""The dashboard config (dashboard/settings.py): TOML, environment overrides, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashboard.settings import DashboardConfig, load_dashboard_config
from sdk.errors import ConfigError

SECURE = """
data_dir = "{data}"

[mqtt]
host = "broker.hospital.local"
username = "dashboard"
password_file = "/etc/medge/dashboard.password"
ca_file = "/etc/medge/ca.pem"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dashboard.toml"
    path.write_text(text.replace("{data}", str(tmp_path / "data")))
    return path


def test_a_secure_file_loads_with_defaults(tmp_path: Path) -> None:
    config = load_dashboard_config(_write(tmp_path, SECURE))
    assert config.mqtt.host == "broker.hospital.local"
    assert config.mqtt.port == 8883 and config.mqtt.uses_tls
    assert config.mqtt.share_group == "medge-dashboard"
    assert config.mqtt.client_id.startswith("medge-dashboard-")
    assert config.store_url == f"sqlite:///{(tmp_path / 'data' / 'dashboard.sqlite').resolve()}"


def test_the_environment_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDGE_DASHBOARD_MQTT__HOST", "10.0.0.5")
    monkeypatch.setenv("MEDGE_DASHBOARD_MQTT__BATCH_WINDOW_MS", "20")
    monkeypatch.setenv("MEDGE_DASHBOARD_STORE__URL", "postgresql+psycopg://medge@db/medge")
    config = load_dashboard_config(_write(tmp_path, SECURE))
    assert config.mqtt.host == "10.0.0.5"
    assert config.mqtt.batch_window_ms == 20
    assert config.mqtt.username == "dashboard", "the rest of the file's section is kept"
    assert config.store_url == "postgresql+psycopg://medge@db/medge"


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ('demo = false\n[mqtt]\nhost = "b"\n', None, "anonymous is demo-only"),
        ('[mqtt]\nusername = "d"\n', None, "password_file is not"),
        ('demo = true\n[mqtt]\ncert_file = "c.pem"\nca_file = "ca.pem"\n', "mqtt", "go together"),
        ('demo = true\n[store]\nurl = "mysql://x/y"\n', "store.url", "not supported"),
        ('demo = true\n[store]\nurl = "not a url"\n', "store.url", "not a database URL"),
        ('demo = true\n[mqtt]\nshare_group = "a/b"\n', "mqtt.share_group", "pattern"),
        ("demo = true\n[mqtt]\nbatch_window_ms = 0\n", "mqtt.batch_window_ms", "greater than 0"),
        ("demo = true\n[mqtt]\nhots = 1\n", "mqtt.hots", "Extra inputs"),
    ],
)
def test_bad_settings_name_the_file_and_field(tmp_path: Path, text: str, field: str | None, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_dashboard_config(path)
    assert caught.value.path == path
    assert caught.value.field == field


def test_demo_allows_an_anonymous_loopback_broker(tmp_path: Path) -> None:
    config = DashboardConfig(demo=True, data_dir=tmp_path, mqtt={"port": 1883})  # type: ignore[arg-type]
    assert config.mqtt.username is None and not config.mqtt.uses_tls


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_dashboard_config(tmp_path / "absent.toml")
