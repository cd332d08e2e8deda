"""The broker folder without a running broker: password format, refusals, permissions, public surface."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

import firmware_integration.broker as broker_api
from firmware_integration.broker import (
    AuthMode,
    BrokerError,
    BrokerFolder,
    TlsMaterial,
    add_dashboard,
    add_device,
    check_password,
    hash_password,
    read_broker_settings,
    reload_broker,
    remove_dashboard,
    remove_device,
    write_broker_config,
)
from sdk.errors import ConfigError
from tests.firmware_integration.test_broker import make_test_pki

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_broker_config(tmp_path / "broker", hostnames=["127.0.0.1"], bind_address="127.0.0.1", run_as=None)
    return tmp_path / "broker"


@pytest.mark.skipif(not os.path.exists(MOSQUITTO_PASSWD), reason="mosquitto_passwd is not installed")
def test_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    subprocess.run([MOSQUITTO_PASSWD, "-c", "-b", str(path), "site-a/ct-1", "s3cret:pass"], check=True)
    username, encoded = path.read_text().strip().split(":", 1)
    _, kind, iterations, salt, _ = encoded.split("$")
    assert (username, kind) == ("site-a/ct-1", "7")
    assert hash_password("s3cret:pass", salt=base64.b64decode(salt), iterations=int(iterations)) == encoded
    assert check_password("s3cret:pass", encoded)
    assert not check_password("s3cret:pasS", encoded)


def test_hash_format_and_salt() -> None:
    one, two = hash_password("pw"), hash_password("pw")
    assert one != two  # salted
    _, kind, iterations, salt, digest = one.split("$")
    assert (kind, iterations) == ("7", "101")
    assert len(base64.b64decode(salt)) == 12 and len(base64.b64decode(digest)) == 64
    assert not check_password("pw", "$6$abc$def") and not check_password("pw", "garbage")
    with pytest.raises(ConfigError, match="line break"):
        hash_password("two\nlines")


def test_layout_and_permissions(folder: Path) -> None:
    paths = BrokerFolder(folder)
    assert _mode(paths.ca_key) == 0o600 and _mode(paths.ca_dir) == 0o700
    assert _mode(paths.server_key) == 0o640
    assert _mode(paths.data_dir) == 0o700
    settings = read_broker_settings(folder)
    assert (settings.auth, settings.tls, settings.port, settings.ca_key) == (AuthMode.PASSWORD, True, 8883, True)
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    config = paths.medge_config.read_text()
    for line in ("allow_anonymous false", f"password_file {paths.password_file}", f"acl_file {paths.acl_file}"):
        assert line in config.splitlines()


def test_add_and_remove_device(folder: Path, tmp_path: Path) -> None:
    credentials = add_device(folder, "site-a", "ct-1")
    assert credentials.password and credentials.password not in repr(credentials)
    passwd = BrokerFolder(folder).password_file.read_text()
    assert passwd.startswith("site-a/ct-1:$7$101$") and credentials.password not in passwd

    files = credentials.write(tmp_path / "bundle")
    assert sorted(f.name for f in files) == ["ca.crt", "mqtt.toml", "password"]
    assert _mode(tmp_path / "bundle" / "password") == 0o600 and _mode(tmp_path / "bundle") == 0o700
    assert (tmp_path / "bundle" / "password").read_text() == credentials.password + "\n"
    section = (tmp_path / "bundle" / "mqtt.toml").read_text()
    assert 'username = "site-a/ct-1"' in section and 'password_file = "/etc/medge/mqtt/password"' in section
    with pytest.raises(ConfigError, match="bundle is here already"):
        credentials.write(tmp_path / "bundle")

    with pytest.raises(ConfigError, match="registered already") as caught:
        add_device(folder, "site-a", "ct-1")
    assert caught.value.field == "device"
    replaced = add_device(folder, "site-a", "ct-1", replace=True)
    assert replaced.password != credentials.password

    remove_device(folder, "site-a", "ct-1")
    assert "site-a/ct-1" not in BrokerFolder(folder).password_file.read_text()
    assert read_broker_settings(folder).devices == []
    with pytest.raises(ConfigError, match="not registered"):
        remove_device(folder, "site-a", "ct-1")


@pytest.mark.parametrize(
    ("site", "device"), [("site/a", "ct"), ("site", "ct+1"), ("#", "ct"), ("", "ct"), ("s", "x" * 65)]
)
def test_names_that_would_break_topics_or_acls_are_refused(folder: Path, site: str, device: str) -> None:
    with pytest.raises(ConfigError) as caught:
        add_device(folder, site, device)
    assert caught.value.field in {"site", "device"}


def test_dashboards_get_an_acl_block(folder: Path) -> None:
    add_dashboard(folder, "ingest-1")
    add_dashboard(folder, "ingest-2")
    acl = BrokerFolder(folder).acl_file.read_text().splitlines()
    assert "user ingest-1" in acl and "user ingest-2" in acl
    assert acl.count("topic read medge/v1/#") == 2
    remove_dashboard(folder, "ingest-1")
    assert "user ingest-1" not in BrokerFolder(folder).acl_file.read_text().splitlines()
    with pytest.raises(ConfigError):
        add_dashboard(folder, "with/slash")


def test_certificate_auth_issues_and_revokes(tmp_path: Path) -> None:
    folder = tmp_path / "broker"
    write_broker_config(folder, auth="certificate", hostnames=["broker.local"], run_as=None)
    credentials = add_device(folder, "site-a", "ct-1")
    cert = x509.load_pem_x509_certificate(credentials.cert_pem or b"")
    assert cert.subject.rfc4514_string() == "CN=site-a/ct-1"
    assert credentials.password is None and credentials.key_pem and b"PRIVATE" not in repr(credentials).encode()
    files = {f.name for f in credentials.write(tmp_path / "bundle")}
    assert files == {"ca.crt", "client.crt", "client.key", "mqtt.toml"}
    assert _mode(tmp_path / "bundle" / "client.key") == 0o600
    with pytest.raises(ConfigError, match="certificates"):
        add_device(folder, "site-a", "ct-2", password="pw")

    remove_device(folder, "site-a", "ct-1")
    paths = BrokerFolder(folder)
    crl = x509.load_pem_x509_crl(paths.crl_file.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    assert "user site-a/ct-1" in paths.acl_file.read_text().splitlines()
    add_device(folder, "site-a", "ct-1")  # back again: the old certificate stays revoked, the identity is allowed
    assert "user site-a/ct-1" not in paths.acl_file.read_text().splitlines()
    assert len(x509.load_pem_x509_crl(paths.crl_file.read_bytes())) == 1


def test_unsafe_or_inconsistent_setups_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loopback") as caught:
        write_broker_config(tmp_path / "a", tls=None, bind_address="0.0.0.0")
    assert caught.value.field == "bind_address"
    with pytest.raises(ConfigError, match="needs TLS"):
        write_broker_config(tmp_path / "b", tls=None, auth="certificate", bind_address="127.0.0.1")
    with pytest.raises(ConfigError, match="host name"):
        write_broker_config(tmp_path / "c")
    with pytest.raises(ConfigError, match="kerberos"):
        write_broker_config(tmp_path / "d", auth="kerberos", hostnames=["h"])

    pki = make_test_pki(tmp_path / "pki")
    other = make_test_pki(tmp_path / "other")
    with pytest.raises(ConfigError, match="not issued by this CA"):
        write_broker_config(tmp_path / "e", tls=TlsMaterial(other.ca_cert, pki.server_cert, pki.server_key))
    with pytest.raises(ConfigError, match="does not belong"):
        write_broker_config(tmp_path / "f", tls=TlsMaterial(pki.ca_cert, pki.server_cert, other.server_key))

    write_broker_config(
        tmp_path / "g", tls=TlsMaterial(pki.ca_cert, pki.server_cert, pki.server_key), auth="certificate"
    )
    with pytest.raises(ConfigError, match="CA key is not in this folder"):
        add_device(tmp_path / "g", "site-a", "ct-1")
    with pytest.raises(ConfigError, match="holds a broker already"):
        write_broker_config(tmp_path / "g", hostnames=["h"])


def test_plain_loopback_listener_for_demos(tmp_path: Path) -> None:
    settings = write_broker_config(tmp_path / "demo", tls=None, bind_address="127.0.0.1", run_as=None)
    assert (settings.tls, settings.port) == (False, 1883)
    config = BrokerFolder(tmp_path / "demo").medge_config.read_text()
    assert "listener 1883 127.0.0.1" in config and "cafile" not in config
    credentials = add_device(tmp_path / "demo", "site-a", "ct-1")
    assert credentials.ca_cert_pem is None and credentials.host == "127.0.0.1"


def test_registry_errors_name_the_file(tmp_path: Path, folder: Path) -> None:
    with pytest.raises(BrokerError, match="not a medge broker folder"):
        add_device(tmp_path / "nowhere", "site-a", "ct-1")
    registry = BrokerFolder(folder).registry
    data = json.loads(registry.read_text())
    data["port"] = 0
    registry.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as caught:
        add_device(folder, "site-a", "ct-1")
    assert caught.value.path == registry and caught.value.field == "port"


def test_reload_refuses_stale_pid_files(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="no pid file"):
        reload_broker(tmp_path / "missing.pid")
    pid_file = tmp_path / "broker.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    with pytest.raises(BrokerError, match="not mosquitto"):
        reload_broker(pid_file)


def test_all_is_the_public_surface() -> None:
    public = {name for name in dir(broker_api) if not name.startswith("_")}
    modules = {"accounts", "config", "folder", "passwords", "pki", "registrar"}
    assert public - modules == set(broker_api.__all__)
    for name in broker_api.__all__:
        assert getattr(broker_api, name) is not None
