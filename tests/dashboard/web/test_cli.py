"""``medge dashboard`` (sdk/cli/dashboard.py): serving until SIGTERM, create-user, create-token."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy import select
from typer.testing import CliRunner

from dashboard.auth import verify_password
from dashboard.store import ApiToken, Role, User, create_store
from sdk.testing.mosquitto import MosquittoBroker, free_port

REPO = Path(__file__).resolve().parents[3]


def _config(tmp_path: Path, mqtt_port: int = 1, web_port: int = 0) -> Path:
    path = tmp_path / "dashboard.toml"
    path.write_text(
        f'demo = true\ndata_dir = "{tmp_path / "data"}"\n[mqtt]\nport = {mqtt_port}\nclient_id = "cli-test"\n'
        f"[web]\nport = {web_port}\n"
    )
    return path


def _medge(*args: str, stdin: str = "") -> tuple[int, str]:
    from sdk.cli.main import app

    result = CliRunner().invoke(app, list(args), input=stdin)
    return result.exit_code, result.output


def test_create_user_asks_twice_or_reads_stdin(tmp_path: Path) -> None:
    config = _config(tmp_path)
    code, output = _medge(
        "dashboard",
        "create-user",
        "--config",
        str(config),
        "--username",
        "Ines",
        "--role",
        "admin",
        stdin="a long enough password\na long enough password\n",
    )
    assert code == 0, output
    assert "created user ines (admin)" in output
    code, output = _medge(
        "dashboard",
        "create-user",
        "--config",
        str(config),
        "-u",
        "jon",
        "-r",
        "clinician",
        "--password-stdin",
        stdin="another long password\n",
    )
    assert code == 0, output
    code, output = _medge(
        "dashboard",
        "create-user",
        "--config",
        str(config),
        "-u",
        "kim",
        "-r",
        "clinician",
        "--password-stdin",
        stdin="short\n",
    )
    assert code == 2 and "at least 10 characters" in output
    code, output = _medge(
        "dashboard",
        "create-user",
        "--config",
        str(config),
        "-u",
        "jon",
        "-r",
        "clinician",
        "--password-stdin",
        stdin="another long password\n",
    )
    assert code == 2 and "already exists" in output
    with create_store(f"sqlite:///{tmp_path / 'data' / 'dashboard.sqlite'}") as store, store.session() as session:
        users = {user.username: user for user in session.scalars(select(User))}
    assert set(users) == {"ines", "jon"} and users["jon"].role == Role.CLINICIAN
    assert verify_password("a long enough password", users["ines"].password_hash)


def test_create_token_prints_it_once(tmp_path: Path) -> None:
    config = _config(tmp_path)
    code, output = _medge(
        "dashboard", "create-token", "--config", str(config), "--name", "export", "--role", "clinician"
    )
    assert code == 0, output
    secret = re.search(r"medge_\S+", output)
    assert secret is not None
    with create_store(f"sqlite:///{tmp_path / 'data' / 'dashboard.sqlite'}") as store, store.session() as session:
        assert session.scalars(select(ApiToken)).one().prefix == secret.group(0)[:12]


def test_serving_needs_a_config(tmp_path: Path) -> None:
    code, output = _medge("dashboard", "--plain-logs")
    assert code == 2 and "--config" in output
    bad = tmp_path / "bad.toml"
    bad.write_text("[web]\nhost = 1\n")
    code, output = _medge("dashboard", "--config", str(bad))
    assert code == 2 and "error:" in output


def test_medge_dashboard_serves_until_sigterm(tmp_path: Path) -> None:
    with MosquittoBroker(tmp_path / "broker") as broker:
        port = free_port()
        config = _config(tmp_path, broker.port, port)
        process = subprocess.Popen(
            [sys.executable, "-m", "sdk.cli.main", "dashboard", "--config", str(config), "--plain-logs"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()
            assert f"on http://127.0.0.1:{port}" in banner and "store sqlite" in banner, banner
            assert "no users yet" in process.stdout.readline()
            deadline = time.monotonic() + 15
            while True:
                try:
                    health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                    if health.json().get("ingest") == "connected":
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the dashboard did not come up with its ingest connected"
                time.sleep(0.1)
            assert httpx.get(f"http://127.0.0.1:{port}/", follow_redirects=False).status_code == 303
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


def test_every_command_and_option_has_help() -> None:
    import typer

    from sdk.cli import dashboard

    group = typer.main.get_command(dashboard.app)
    assert group.help
    assert set(group.commands) == {"create-user", "create-token", "audit-verify"}  # type: ignore[attr-defined]
    for name, command in [("dashboard", group), *group.commands.items()]:  # type: ignore[attr-defined]
        assert command.help, name
        for param in command.params:
            assert getattr(param, "help", None), f"{name} {param.name}"
