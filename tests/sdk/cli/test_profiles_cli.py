"""``medge profiles`` from the command line (sdk/cli/profiles.py)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from click.testing import Result
from typer.testing import CliRunner

from device_profiles import get_profile, list_profiles, profiles_dir
from sdk.cli import profiles
from sdk.cli.main import app

runner = CliRunner()


def invoke(*args: str) -> Result:
    return runner.invoke(app, ["profiles", *args])


def test_list_shows_every_profile() -> None:
    result = invoke("list")
    assert result.exit_code == 0, result.output
    for profile in list_profiles():
        assert profile.id in result.output
    assert "openvino" in result.output and "onnxruntime" in result.output


def test_list_json() -> None:
    result = invoke("list", "--json")
    assert result.exit_code == 0, result.output
    ids = [entry["id"] for entry in json.loads(result.stdout)]
    assert ids == [profile.id for profile in list_profiles()]


def test_show_prints_the_providers() -> None:
    result = invoke("show", "jetson-agx-orin-64gb")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for provider in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"):
        assert provider in text
    assert "QDQ" in text and "zero points 0" in text


def test_show_json_is_the_whole_profile() -> None:
    result = invoke("show", "intel-core-ultra", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data == get_profile("intel-core-ultra").model_dump(mode="json")
    assert data["devices"] == ["NPU", "GPU", "CPU"]


def test_show_unknown_id_is_one_clean_line() -> None:
    result = invoke("show", "no-such-board")
    assert result.exit_code == 2
    assert "error:" in result.stderr and "no-such-board" in result.stderr and "intel-xeon" in result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_check_a_good_and_a_malformed_file(tmp_path: Path) -> None:
    good = tmp_path / "intel-xeon.toml"
    good.write_text((profiles_dir() / "intel-xeon.toml").read_text(encoding="utf-8"), encoding="utf-8")
    result = invoke("check", str(good))
    assert result.exit_code == 0, result.output
    assert "valid" in result.output

    bad = tmp_path / "my-board.toml"
    bad.write_text(good.read_text(encoding="utf-8").replace('id = "intel-xeon"', 'id = "my-board"')
                   .replace('devices = ["CPU"]', 'devices = ["CUDAExecutionProvider"]'), encoding="utf-8")  # fmt: skip
    result = invoke("check", str(bad))
    assert result.exit_code == 2
    stderr = " ".join(result.stderr.split())
    assert "my-board.toml" in stderr and "field 'devices'" in stderr and "not an OpenVINO device" in stderr
    assert "Traceback" not in result.output


def test_detect_names_a_profile() -> None:
    result = invoke("detect")
    assert result.exit_code == 0, result.output
    detected = json.loads(invoke("detect", "--json").stdout)
    assert detected["profile"] in result.output
    assert get_profile(detected["profile"]).id == detected["profile"]
    assert detected["reasons"] and detected["facts"]["cpu_arch"] in ("x86_64", "aarch64")
    assert isinstance(detected["int8_expected_to_pay_off"], bool)
    assert "host facts" in result.output


def test_every_command_and_option_has_help() -> None:
    group = typer.main.get_command(profiles.app)
    assert group.help
    assert set(group.commands) == {"list", "show", "check", "detect"}
    for name, command in group.commands.items():
        assert command.help, name
        for param in command.params:
            assert getattr(param, "help", None), f"{name} {param.name}"
    assert "detect" in invoke("--help").output
