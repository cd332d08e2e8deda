"""Model config (sdk/model_config.py) and appliance config (sdk/appliance_config.py) loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdk.appliance_config import load_appliance_config
from sdk.errors import ConfigError
from sdk.model_config import load_model_config

MODEL_TOML = """
name = "chest-ct-nodule"
version = "1.0.0"
task = "classification"
labels = ["nodule"]
[thresholds]
nodule = 0.5
[input]
name = "image"
[outputs]
scores = "probability"
location = "center"
[preprocessing]
modalities = ["CT"]
window = { center = -600, width = 1500 }
size = [256, 256]
"""

APPLIANCE_TOML = """
[appliance]
site = "st-marys"
device = "ct-1"
[dicom]
allowed_calling_aes = ["SCANNER1"]
[mqtt]
username = "ct-1"
password_file = "/etc/medge/mqtt.password"
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_model_config_loads(tmp_path: Path) -> None:
    config = load_model_config(write(tmp_path, "model.toml", MODEL_TOML))
    assert config.preprocessing.input_shape(2) == (2, 1, 256, 256)
    assert config.gate.min_agreement == 0.99


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        (('version = "1.0.0"', 'version = "one"'), "version", "1.2.3"),
        (('task = "classification"', 'task = "guessing"'), "task", "classification"),
        (("nodule = 0.5", "nodule = 1.5"), None, "within [0, 1]"),
        (("nodule = 0.5", "other = 0.5"), None, "thresholds missing"),
        (("size = [256, 256]", "size = [0, 256]"), "preprocessing", "between 1 and 8192"),
        (('modalities = ["CT"]', "modalities = []"), "preprocessing.modalities", "at least 1"),
        (("[input]", "[input]\nshape = 3"), "input.shape", "Extra inputs"),
    ],
)
def test_model_config_errors_name_file_and_field(tmp_path: Path, change, field, reason) -> None:
    path = write(tmp_path, "bad.toml", MODEL_TOML.replace(*change))
    with pytest.raises(ConfigError) as caught:
        load_model_config(path)
    assert caught.value.path == path
    assert str(path) in str(caught.value)
    if field:
        assert caught.value.field == field
    assert reason in str(caught.value)


def test_model_config_not_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_model_config(write(tmp_path, "x.toml", "name = "))
    with pytest.raises(ConfigError, match="not found"):
        load_model_config(tmp_path / "absent.toml")


def test_appliance_config_and_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "appliance.toml", APPLIANCE_TOML)
    assert load_appliance_config(path).mqtt.host == "127.0.0.1"
    monkeypatch.setenv("MEDGE_MQTT__HOST", "broker.hospital.local")
    monkeypatch.setenv("MEDGE_DICOM__PORT", "104")
    config = load_appliance_config(path)
    assert config.mqtt.host == "broker.hospital.local"
    assert config.dicom.port == 104
    monkeypatch.setenv("MEDGE_DICOM__PORT", "not-a-port")
    with pytest.raises(ConfigError) as caught:
        load_appliance_config(path)
    assert caught.value.field == "dicom.port"


def test_appliance_config_refuses_unsafe_outside_demo(tmp_path: Path) -> None:
    anonymous = APPLIANCE_TOML.replace('username = "ct-1"\npassword_file = "/etc/medge/mqtt.password"\n', "")
    with pytest.raises(ConfigError, match="anonymous is demo-only"):
        load_appliance_config(write(tmp_path, "a.toml", anonymous))
    demo = anonymous.replace('device = "ct-1"', 'device = "ct-1"\ndemo = true')
    assert load_appliance_config(write(tmp_path, "b.toml", demo)).appliance.demo
    open_scp = APPLIANCE_TOML.replace('allowed_calling_aes = ["SCANNER1"]', "")
    with pytest.raises(ConfigError, match="allowed_calling_aes"):
        load_appliance_config(write(tmp_path, "c.toml", open_scp))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (('site = "st-marys"', 'site = "st/marys"'), "appliance.site"),
        (("[dicom]", "[dicom]\nport = 70000"), "dicom.port"),
        (("[dicom]", '[dicom]\nae_title = "THIS-AE-TITLE-IS-TOO-LONG"'), "dicom.ae_title"),
        (("[mqtt]", '[mqtt]\nbroker = "x"'), "mqtt.broker"),
    ],
)
def test_appliance_config_field_errors(tmp_path: Path, change, field) -> None:
    path = write(tmp_path, "a.toml", APPLIANCE_TOML.replace(*change))
    with pytest.raises(ConfigError) as caught:
        load_appliance_config(path)
    assert caught.value.field == field
    assert str(path) in str(caught.value)


def test_appliance_config_carries_routing_rules(tmp_path: Path) -> None:
    text = (
        APPLIANCE_TOML
        + """
[[routing.rules]]
package = "chest-ct-nodule"
modality = ["CT"]
orientation = "axial"
unit = "instance"
"""
    )
    config = load_appliance_config(write(tmp_path, "r.toml", text))
    assert config.routing.rules[0].package == "chest-ct-nodule"
    bad = text.replace('orientation = "axial"', 'orientation = "diagonal"')
    with pytest.raises(ConfigError) as caught:
        load_appliance_config(write(tmp_path, "bad.toml", bad))
    assert caught.value.field is not None and caught.value.field.startswith("routing.rules.0")
