"""Who may connect: adding and removing devices and dashboards, their credential bundles, reloading the broker.

Each change updates the registry, the password file or the CRL, and the
rendered ACL file under the folder's lock. Mosquitto reads none of them
again until it is reloaded (SIGHUP: :func:`reload_broker`, or ``systemctl
reload mosquitto``); a reload also closes connections whose password is
gone, and the ACL deny block of a revoked certificate cuts off a connection
that is still open.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from firmware_integration.broker.config import render_broker_files
from firmware_integration.broker.folder import (
    AuthMode,
    BrokerError,
    BrokerFolder,
    BrokerSettings,
    DashboardEntry,
    DeviceEntry,
    RevokedCertificate,
    now,
)
from firmware_integration.broker.passwords import PasswordFile, generate_password
from firmware_integration.broker.pki import (
    CertifiablePublicKey,
    issue,
    load_certificate,
    load_private_key,
    public_key_from_csr,
)
from sdk.errors import ConfigError
from sdk.topics import check_segment

__all__ = [
    "Credentials",
    "add_dashboard",
    "add_device",
    "read_broker_settings",
    "reload_broker",
    "remove_dashboard",
    "remove_device",
]

logger = logging.getLogger(__name__)

DEFAULT_INSTALL_DIR = "/etc/medge/mqtt"


@dataclass(frozen=True)
class Credentials:
    """What one identity needs to connect. The password and private key never appear in ``repr`` or logs.

    Attributes:
        username: the broker identity (``{site}/{device}`` or a dashboard name).
        role: ``device`` or ``dashboard``.
        host: the broker host to dial (the folder's first host name).
        port: the broker's port.
        ca_cert_pem: the CA to verify the broker with (None without TLS).
        password: the password (password auth).
        cert_pem: the client certificate (certificate auth).
        key_pem: the client certificate's private key (certificate auth).
    """

    username: str
    role: Literal["device", "dashboard"]
    host: str
    port: int
    ca_cert_pem: bytes | None
    password: str | None = field(default=None, repr=False)
    cert_pem: bytes | None = None
    key_pem: bytes | None = field(default=None, repr=False)

    def write(
        self, out_dir: str | Path, *, install_dir: str = DEFAULT_INSTALL_DIR, overwrite: bool = False
    ) -> list[Path]:
        """Write the bundle to ``out_dir`` (mode 0700; secrets 0600) and return the files written.

        The bundle holds ``ca.crt``, then ``password`` or ``client.crt`` and
        ``client.key``, and ``mqtt.toml``: the ``[mqtt]`` section of the
        appliance config, naming the files as they will be once the bundle is
        copied to ``install_dir`` on the appliance.

        Raises:
            ConfigError: a bundle file exists and ``overwrite`` is false.
            BrokerError: the folder cannot be written.
        """
        out = Path(out_dir)
        files: list[tuple[str, bytes, int]] = []
        if self.ca_cert_pem is not None:
            files.append(("ca.crt", self.ca_cert_pem, 0o644))
        if self.password is not None:
            files.append(("password", self.password.encode() + b"\n", 0o600))
        if self.cert_pem is not None and self.key_pem is not None:
            files += [("client.crt", self.cert_pem, 0o644), ("client.key", self.key_pem, 0o600)]
        files.append(("mqtt.toml", self._mqtt_section(install_dir).encode(), 0o644))
        if not overwrite:
            for name, _, _ in files:
                if (out / name).exists():
                    raise ConfigError("a credential bundle is here already; choose another folder", path=out / name)
        written = []
        try:
            out.mkdir(mode=0o700, parents=True, exist_ok=True)
            for name, data, mode in files:
                path = out / name
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.chmod(path, mode)
                written.append(path)
        except OSError as exc:
            raise BrokerError(f"cannot write the credential bundle: {exc.strerror}", path=exc.filename or out) from exc
        return written

    def _mqtt_section(self, install_dir: str) -> str:
        def value(text: str | int) -> str:
            return json.dumps(text)  # a JSON string is a valid TOML basic string

        where = install_dir.rstrip("/")
        lines = [
            f"# MQTT settings of {self.role} {self.username!r}: the [mqtt] section of its medge config.",
            f"# Copy this folder to {where} (readable by the medge service user only).",
            "# The broker uses the identity as the client id, so one session per identity.",
            "[mqtt]",
            f"host = {value(self.host)}",
            f"port = {value(self.port)}",
        ]
        if self.password is not None:
            lines += [f"username = {value(self.username)}", f"password_file = {value(where + '/password')}"]
        if self.ca_cert_pem is not None:
            lines.append(f"ca_file = {value(where + '/ca.crt')}")
        if self.cert_pem is not None:
            lines += [f"cert_file = {value(where + '/client.crt')}", f"key_file = {value(where + '/client.key')}"]
        return "\n".join(lines) + "\n"


def read_broker_settings(directory: str | Path) -> BrokerSettings:
    """The registry of a broker folder (settings, devices, dashboards).

    Raises:
        BrokerError: not a broker folder. ConfigError: ``broker.json`` is invalid.
    """
    return BrokerFolder(directory).load()


def add_device(
    directory: str | Path,
    site: str,
    device: str,
    *,
    password: str | None = None,
    replace: bool = False,
    csr_pem: bytes | str | None = None,
) -> Credentials:
    """Let appliance ``{site}/{device}`` connect: a password-file entry or a client certificate.

    Args:
        directory: the broker folder.
        site: the site name (a topic segment).
        device: the device name (a topic segment).
        password: use this password instead of a random one (password auth only).
        replace: issue new credentials for a registered device; its old ones stop working.
        csr_pem: the device's own CSR (subject CN ``{site}/{device}``, checked with its
            signature): with certificate auth the certificate is issued for its key,
            which never leaves the device (the credentials then hold no key).

    Returns:
        The credentials to hand to the appliance (write them with :meth:`Credentials.write`).

    Raises:
        ConfigError: a bad name, the device exists and ``replace`` is false, or
            certificate auth without the CA key in the folder.
        BrokerError: the folder cannot be read or written.
    """
    check_segment(site, "site")
    check_segment(device, "device")
    entry = DeviceEntry(site=site, device=device, added=now())
    public_key = public_key_from_csr(csr_pem, entry.username) if csr_pem is not None else None
    return _add(BrokerFolder(directory), entry, "device", password, replace, public_key)


def add_dashboard(
    directory: str | Path, name: str = "dashboard", *, password: str | None = None, replace: bool = False
) -> Credentials:
    """Let a dashboard identity connect: it reads every medge topic and writes ``cmd`` and ``ack`` of any device.

    With ``bind_client_id`` (the default) each dashboard process needs its own
    name, because the broker replaces the client id with the identity.

    Raises:
        ConfigError: a bad name, the name exists and ``replace`` is false.
        BrokerError: the folder cannot be read or written.
    """
    check_segment(name, "dashboard")
    return _add(BrokerFolder(directory), DashboardEntry(name=name, added=now()), "dashboard", password, replace)


def remove_device(directory: str | Path, site: str, device: str) -> None:
    """Stop appliance ``{site}/{device}`` from connecting (password removed, or certificate revoked and denied).

    Takes effect when the broker reloads.

    Raises:
        ConfigError: the device is not registered.
    """
    check_segment(site, "site")
    check_segment(device, "device")
    _remove(BrokerFolder(directory), f"{site}/{device}", "device")


def remove_dashboard(directory: str | Path, name: str) -> None:
    """Stop a dashboard identity from connecting; takes effect when the broker reloads.

    Raises:
        ConfigError: no dashboard of that name.
    """
    check_segment(name, "dashboard")
    _remove(BrokerFolder(directory), name, "dashboard")


def _add(
    folder: BrokerFolder,
    entry: DeviceEntry | DashboardEntry,
    role: Literal["device", "dashboard"],
    password: str | None,
    replace: bool,
    public_key: CertifiablePublicKey | None = None,
) -> Credentials:
    username = entry.username
    secret: str | None = None
    cert: bytes | None = None
    key: bytes | None = None
    with folder.locked():
        settings = folder.load()
        if _find(settings, role, username) is not None and not replace:
            raise ConfigError(
                f"{role} {username!r} is registered already; replace its credentials to issue new ones",
                path=folder.registry,
                field=role,
            )
        if settings.auth is AuthMode.PASSWORD:
            secret = password or generate_password()
            passwords = PasswordFile.read(folder.password_file)
            passwords.set(username, secret)
            folder.write(folder.password_file, passwords.render(), settings.run_as)
        else:
            if password is not None:
                raise ConfigError("this broker uses certificates: a password would not be checked", field="password")
            if not settings.ca_key:
                raise ConfigError(
                    f"the CA key is not in this folder: issue a client certificate with CN {username!r} "
                    "from the site's PKI instead",
                    path=folder.ca_key,
                )
            issued = issue(
                load_certificate(folder.ca_cert, "CA certificate"),
                load_private_key(folder.ca_key, "CA key"),
                username,
                public_key=public_key,
            )
            entry.cert_serial = f"{issued.serial:x}"
            cert, key = issued.cert_pem, issued.key_pem or None
        old = _take(settings, role, username)
        if old is not None:
            _revoke(settings, old)
        if isinstance(entry, DeviceEntry):
            settings.devices.append(entry)
        else:
            settings.dashboards.append(entry)
        folder.save(settings)
        render_broker_files(folder.path, settings)
    logger.info("%s %s added to %s; reload the broker to apply", role, username, folder.path)
    return Credentials(
        username=username,
        role=role,
        host=settings.hostnames[0],
        port=settings.port,
        ca_cert_pem=folder.ca_cert.read_bytes() if settings.tls else None,
        password=secret,
        cert_pem=cert,
        key_pem=key,
    )


def _find(settings: BrokerSettings, role: str, username: str) -> DeviceEntry | DashboardEntry | None:
    entries: list[DeviceEntry] | list[DashboardEntry] = settings.devices if role == "device" else settings.dashboards
    return next((e for e in entries if e.username == username), None)


def _take(settings: BrokerSettings, role: str, username: str) -> DeviceEntry | DashboardEntry | None:
    """Remove an identity from the registry and return its entry."""
    entry = _find(settings, role, username)
    if role == "device":
        settings.devices = [e for e in settings.devices if e.username != username]
    else:
        settings.dashboards = [e for e in settings.dashboards if e.username != username]
    return entry


def _revoke(settings: BrokerSettings, entry: DeviceEntry | DashboardEntry) -> None:
    if entry.cert_serial is not None:
        settings.revoked.append(RevokedCertificate(serial=entry.cert_serial, username=entry.username, revoked=now()))


def _remove(folder: BrokerFolder, username: str, role: Literal["device", "dashboard"]) -> None:
    with folder.locked():
        settings = folder.load()
        entry = _take(settings, role, username)
        if entry is None:
            raise ConfigError(f"{role} {username!r} is not registered", path=folder.registry, field=role)
        if settings.auth is AuthMode.PASSWORD:
            passwords = PasswordFile.read(folder.password_file)
            if passwords.remove(username):
                folder.write(folder.password_file, passwords.render(), settings.run_as)
        else:
            _revoke(settings, entry)
        folder.save(settings)
        render_broker_files(folder.path, settings)
    logger.info("%s %s removed from %s; reload the broker to apply", role, username, folder.path)


def reload_broker(target: int | str | Path) -> int:
    """Make a running mosquitto re-read its password file, ACL file and CRL (SIGHUP).

    Args:
        target: the broker's pid, or its pid file.

    Returns:
        The pid signalled.

    Raises:
        BrokerError: no pid file, no such process, the process is not mosquitto,
            or no permission to signal it.
    """
    if isinstance(target, int):
        pid = target
    else:
        path = Path(target)
        try:
            pid = int(path.read_text().strip())
        except FileNotFoundError as exc:
            raise BrokerError("no pid file: is the broker running? (or name its pid file)", path=path) from exc
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot read the broker's pid: {exc}", path=path) from exc
    comm = Path(f"/proc/{pid}/comm")
    if comm.exists() and comm.read_text().strip() != "mosquitto":
        raise BrokerError(f"process {pid} is {comm.read_text().strip()!r}, not mosquitto: the pid file is stale")
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError as exc:
        raise BrokerError(f"no broker process {pid}: the pid file is stale or the broker is down") from exc
    except PermissionError as exc:
        raise BrokerError(f"not allowed to signal the broker (pid {pid}): run as its user or root") from exc
    logger.info("sent SIGHUP to mosquitto (pid %d)", pid)
    return pid
