"""``medge ota status`` and ``medge ota rollback`` (sdk/cli/ota.py) on a real slot layout."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from firmware_integration.ota import Journal, JournalEntry, Slots
from sdk.cli.main import app
from sdk.fleet_contracts import PackageOffer
from tests.conftest import ReferencePackages

runner = CliRunner()


def medge(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, ["ota", *map(str, args)])
    return result.exit_code, result.output


def _config(tmp_path: Path) -> Path:
    data = tmp_path / "state"
    config = tmp_path / "appliance.toml"
    config.write_text(
        "[appliance]\nsite = 's'\ndevice = 'd'\ndemo = true\n"
        f"data_dir = '{data}'\n[packages]\ndir = '{data / 'packages'}'\ntrusted_keys_dir = '{data / 'keys'}'\n"
    )
    return config


def test_status_and_rollback(tmp_path: Path, reference_packages: ReferencePackages) -> None:
    config = _config(tmp_path)
    packages = tmp_path / "state" / "packages"
    packages.mkdir(parents=True)

    code, output = medge("rollback", "--config", config)
    assert code == 2 and "no update has run" in output

    reference_packages.build(packages / "ref-1.medge")
    slots = Slots(packages, tmp_path / "state" / "slots")
    assert slots.ensure() == "A"
    code, output = medge("status", "--config", config)
    assert code == 0, output
    assert "ref-1.medge" in output and "active" in output and "no update in progress" in output

    code, output = medge("rollback", "--config", config)
    assert code == 2 and "slot B holds no package" in output and slots.active() == "A"

    (slots.path("B") / "ref-1.medge").hardlink_to(slots.path("A") / "ref-1.medge")
    journal = Journal(tmp_path / "state" / "ota" / "journal.json")
    offer = PackageOffer(name="ref", version="2.0.0", sha256="0" * 64, size=1, url="/p")
    journal.write(JournalEntry(update_id="u1", offer=offer, previous_slot="A", target_slot="B"))
    code, output = medge("status", "--config", config)
    assert code == 0 and "update u1 of ref 2.0.0: accepted" in output
    code, output = medge("rollback", "--config", config)
    assert code == 2 and "in progress" in output and slots.active() == "A"

    journal.clear()
    code, output = medge("rollback", "--config", config)
    assert code == 0, output
    assert slots.active() == "B" and "systemctl restart" in output
