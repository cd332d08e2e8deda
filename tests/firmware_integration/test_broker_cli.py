"""``medge broker`` from the command line (sdk/cli/broker.py), ending with a real broker and the written bundles."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from sdk.cli.main import app
from sdk.testing.mosquitto import free_port
from tests.firmware_integration.test_broker import ACCEPTED, Identity, Reason, peer_pool, start_broker

runner = CliRunner()


def medge(*args: str | Path | int) -> tuple[int, str]:
    result = runner.invoke(app, ["broker", *map(str, args)])
    return result.exit_code, result.output


def init(folder: Path, *extra: str) -> None:
    code, output = medge(
        "init", folder, "--hostname", "127.0.0.1", "--bind", "127.0.0.1", "--port", free_port(), *extra
    )
    assert code == 0, output


def test_password_site_from_the_cli(tmp_path: Path) -> None:
    folder = tmp_path / "broker"
    init(folder)
    code, output = medge("add-device", folder, "--site", "site-a", "--device", "ct-1", "--out", tmp_path / "ct-1")
    assert code == 0, output
    password = (tmp_path / "ct-1" / "password").read_text().strip()
    assert "site-a/ct-1" in output and password not in output
    assert "not active yet" in output
    code, output = medge("add-dashboard", folder, "--name", "ingest-1", "--out", tmp_path / "dash")
    assert code == 0, output

    code, output = medge("list", folder)
    assert code == 0 and "site-a/ct-1" in output and "ingest-1" in output

    code, output = medge("add-device", folder, "--site", "site-a", "--device", "ct-1", "--out", tmp_path / "again")
    assert code == 2 and "registered already" in output

    broker = start_broker(folder, tmp_path / "run")
    try:
        with peer_pool() as peers:
            device = peers(broker.port, Identity("site-a/ct-1", password), ca=tmp_path / "ct-1" / "ca.crt")
            assert device.connect() == Reason.SUCCESS
            assert device.publish("medge/v1/site-a/ct-1/finding") in ACCEPTED

            assert broker.process is not None
            pid_file = tmp_path / "mosquitto.pid"
            pid_file.write_text(f"{broker.process.pid}\n")
            code, output = medge("remove-device", folder, "--site", "site-a", "--device", "ct-1")
            assert code == 0 and "removed" in output
            code, output = medge("reload", folder, "--pid-file", pid_file)
            assert code == 0 and f"pid {broker.process.pid}" in output
            device.until(lambda: device.disconnected)
    finally:
        broker.stop()


def test_certificate_site_from_the_cli(tmp_path: Path) -> None:
    folder = tmp_path / "broker"
    init(folder, "--auth", "certificate")
    code, output = medge("add-device", folder, "--site", "site-b", "--device", "mr-2", "--out", tmp_path / "mr-2")
    assert code == 0, output
    bundle = tmp_path / "mr-2"
    assert 'cert_file = "/etc/medge/mqtt/client.crt"' in (bundle / "mqtt.toml").read_text()

    broker = start_broker(folder, tmp_path / "run")
    try:
        with peer_pool() as peers:
            identity = Identity(cert=bundle / "client.crt", key=bundle / "client.key")
            device = peers(broker.port, identity, ca=bundle / "ca.crt")
            assert device.connect() == Reason.SUCCESS
            assert device.publish("medge/v1/site-b/mr-2/status") in ACCEPTED
            assert device.publish("medge/v1/site-b/mr-3/status") == Reason.NOT_AUTHORIZED
    finally:
        broker.stop()


def test_mistakes_get_one_clear_line(tmp_path: Path) -> None:
    code, output = medge("init", tmp_path / "a", "--no-tls", "--bind", "0.0.0.0")
    assert code == 2 and "loopback" in output and "Traceback" not in output
    code, output = medge("init", tmp_path / "b", "--auth", "kerberos", "--hostname", "h")
    assert code == 2 and "kerberos" in output
    code, output = medge("init", tmp_path / "c", "--ca-cert", tmp_path / "ca.crt", "--hostname", "h")
    assert code == 2 and "--server-cert" in output
    code, output = medge("add-device", tmp_path / "nowhere", "--site", "s", "--device", "d")
    assert code == 2 and "medge broker init" in output
    init(tmp_path / "d")
    code, output = medge("add-device", tmp_path / "d", "--site", "site/a", "--device", "d", "--out", tmp_path / "x")
    assert code == 2 and "site" in output
    code, output = medge("remove-device", tmp_path / "d", "--site", "s", "--device", "d")
    assert code == 2 and "not registered" in output


def test_help_explains() -> None:
    code, output = medge("--help")
    assert code == 0
    for command in ("init", "add-device", "add-dashboard", "remove-device", "reload", "list"):
        assert command in output
    code, output = medge("init", "--help")
    assert code == 0 and "--auth" in output and "certificate" in output
