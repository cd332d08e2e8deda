"""Making a broker folder and rendering its Mosquitto configuration from the templates.

The templates in ``templates/`` are the production configuration; this
module only fills in paths, limits and the chosen authentication, and
refuses combinations that would be unsafe (a listener without TLS outside
loopback, certificate authentication without TLS).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from string import Template
from typing import Literal

from cryptography.exceptions import InvalidSignature

from firmware_integration.broker.folder import AuthMode, BrokerFolder, BrokerLimits, BrokerSettings, broker_ids
from firmware_integration.broker.pki import (
    TlsMaterial,
    build_crl,
    cert_pem,
    issue,
    key_pem,
    load_certificate,
    load_private_key,
    make_ca,
)
from sdk.errors import ConfigError

__all__ = ["DEFAULT_PID_FILE", "render_broker_files", "write_broker_config"]

logger = logging.getLogger(__name__)

DEFAULT_PID_FILE = Path("/run/mosquitto/mosquitto.pid")
"""Where Debian's mosquitto service writes its pid (the target of ``medge broker reload``)."""


def _template(name: str) -> Template:
    return Template((resources.files("firmware_integration.broker") / "templates" / name).read_text(encoding="utf-8"))


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def write_broker_config(
    directory: str | Path,
    *,
    tls: TlsMaterial | Literal["generate"] | None = "generate",
    auth: AuthMode | str = AuthMode.PASSWORD,
    port: int | None = None,
    bind_address: str = "0.0.0.0",
    hostnames: Sequence[str] = (),
    limits: BrokerLimits | None = None,
    run_as: str | None = "mosquitto",
    bind_client_id: bool = True,
    pid_file: str | Path = DEFAULT_PID_FILE,
) -> BrokerSettings:
    """Create a broker folder: TLS material, registry, Mosquitto config and ACL file.

    Args:
        directory: the folder to create (must not hold a broker already).
        tls: ``"generate"`` makes a site CA and a server certificate for
            ``hostnames``; a :class:`TlsMaterial` installs an existing PKI's
            files; ``None`` makes a plain listener, allowed on loopback only (demos).
        auth: ``password`` (a username and password per identity) or
            ``certificate`` (mutual TLS; the certificate CN is the username).
        port: the listener's port (8883 with TLS, 1883 without).
        bind_address: the address the listener binds.
        hostnames: names and addresses clients dial; they go into the
            generated server certificate and the first one into device bundles.
        limits: resource limits (defaults: :class:`BrokerLimits`).
        run_as: the user mosquitto drops to when started as root; files it
            reads are shared with that user's group when medge runs as root.
        bind_client_id: set ``use_username_as_clientid`` so no identity can take
            over another's session. Each dashboard process then needs its own
            identity (``add_dashboard(name=...)``).
        pid_file: where the broker writes its pid (used to reload it).

    Returns:
        The registry as written to ``broker.json``.

    Raises:
        ConfigError: an unsafe or inconsistent combination, unusable TLS files,
            or the folder holds a broker already.
        BrokerError: a file cannot be written.
    """
    folder = BrokerFolder(directory)
    try:
        auth = AuthMode(auth)
    except ValueError:
        raise ConfigError(f"auth must be 'password' or 'certificate', not {auth!r}", field="auth") from None
    if folder.exists():
        raise ConfigError("this folder holds a broker already; remove it first to start over", path=folder.path)
    if tls is None:
        if auth is AuthMode.CERTIFICATE:
            raise ConfigError("certificate authentication needs TLS", field="auth")
        if not _is_loopback(bind_address):
            raise ConfigError(
                f"a listener without TLS may only bind a loopback address (demo), not {bind_address!r}",
                field="bind_address",
            )
    if tls == "generate" and not hostnames:
        raise ConfigError("name at least one host name or address clients use to reach the broker", field="hostnames")
    broker_ids(run_as)  # refuse an unknown user before writing anything

    folder.make_dirs(run_as)
    has_ca_key = False
    if tls == "generate":
        _generate_tls(folder, list(hostnames), run_as)
        has_ca_key = True
    elif tls is not None:
        has_ca_key = _install_tls(folder, tls, run_as)
    if auth is AuthMode.CERTIFICATE and not has_ca_key:
        logger.warning(
            "no CA key in %s: client certificates must be issued and revoked with the site's PKI", folder.path
        )

    settings = BrokerSettings(
        auth=auth,
        tls=tls is not None,
        port=port or (8883 if tls is not None else 1883),
        bind_address=bind_address,
        hostnames=list(hostnames) or [bind_address if _is_loopback(bind_address) else "localhost"],
        run_as=run_as,
        bind_client_id=bind_client_id,
        pid_file=Path(pid_file),
        ca_key=has_ca_key,
        limits=limits or BrokerLimits(),
    )
    with folder.locked():
        if auth is AuthMode.PASSWORD:
            folder.write(folder.password_file, b"", run_as)
        folder.save(settings)
        render_broker_files(folder.path, settings)
    logger.info("broker folder ready in %s (%s auth, port %d)", folder.path, auth.value, settings.port)
    return settings


def _generate_tls(folder: BrokerFolder, hostnames: list[str], run_as: str | None) -> None:
    ca, ca_key = make_ca(f"medge site CA ({hostnames[0]})")
    server = issue(ca, ca_key, hostnames[0], server_names=hostnames)
    folder.write(folder.ca_key, key_pem(ca_key), run_as, private=True)
    folder.write(folder.ca_cert, cert_pem(ca), run_as, mode=0o644)
    folder.write(folder.server_cert, server.cert_pem, run_as, mode=0o644)
    folder.write(folder.server_key, server.key_pem, run_as)


def _install_tls(folder: BrokerFolder, tls: TlsMaterial, run_as: str | None) -> bool:
    ca = load_certificate(tls.ca_cert, "CA certificate")
    server = load_certificate(tls.server_cert, "server certificate")
    server_key = load_private_key(tls.server_key, "server key")
    try:
        server.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ConfigError("the server certificate was not issued by this CA", path=tls.server_cert) from exc
    if server.public_key() != server_key.public_key():
        raise ConfigError("the server key does not belong to the server certificate", path=tls.server_key)
    if tls.ca_key is not None:
        ca_key = load_private_key(tls.ca_key, "CA key")
        if ca.public_key() != ca_key.public_key():
            raise ConfigError("the CA key does not belong to the CA certificate", path=tls.ca_key)
        folder.write(folder.ca_key, key_pem(ca_key), run_as, private=True)
    folder.write(folder.ca_cert, cert_pem(ca), run_as, mode=0o644)
    folder.write(folder.server_cert, cert_pem(server), run_as, mode=0o644)
    folder.write(folder.server_key, key_pem(server_key), run_as)
    return tls.ca_key is not None


def render_broker_files(directory: str | Path, settings: BrokerSettings | None = None) -> None:
    """Render ``mosquitto.conf``, ``conf.d/medge.conf``, the ACL file and the CRL from ``broker.json``.

    Called after every change; call it yourself after editing ``broker.json``
    by hand (e.g. the limits), then restart or reload the broker.

    Raises:
        ConfigError: ``broker.json`` is invalid.
        BrokerError: a file cannot be written.
    """
    folder = BrokerFolder(directory)
    settings = settings or folder.load()
    run_as = settings.run_as
    folder.write(folder.main_config, _main_config(folder, settings).encode(), run_as, mode=0o644)
    folder.write(folder.medge_config, _medge_config(folder, settings).encode(), run_as, mode=0o644)
    folder.write(folder.acl_file, render_acl(settings, folder).encode(), run_as)
    if settings.auth is AuthMode.CERTIFICATE and settings.ca_key:
        ca = load_certificate(folder.ca_cert, "CA certificate")
        ca_key = load_private_key(folder.ca_key, "CA key")
        crl = build_crl(ca, ca_key, ((int(r.serial, 16), r.revoked) for r in settings.revoked))
        folder.write(folder.crl_file, crl, run_as, mode=0o644)


def _main_config(folder: BrokerFolder, settings: BrokerSettings) -> str:
    user_line = (
        f"user {settings.run_as}"
        if settings.run_as
        else "# user: not set; started as root, mosquitto drops to the 'mosquitto' user"
    )
    return _template("mosquitto.conf.tmpl").substitute(
        folder=folder.path,
        user_line=user_line,
        pid_file=settings.pid_file,
        data_dir=folder.data_dir,
        log_dest="stderr",
        conf_d=folder.conf_d,
    )


def _medge_config(folder: BrokerFolder, settings: BrokerSettings) -> str:
    if settings.tls:
        tls_block = _template("tls.conf.tmpl").substitute(
            ca_cert=folder.ca_cert, server_cert=folder.server_cert, server_key=folder.server_key
        )
    else:
        tls_block = "# No TLS: this listener is bound to loopback for a demo; never expose it."
    if settings.auth is AuthMode.PASSWORD:
        auth_block = _template("auth-password.conf.tmpl").substitute(password_file=folder.password_file)
    else:
        crl_line = (
            f"# Revoked client certificates (re-read on reload).\ncrlfile {folder.crl_file}"
            if settings.ca_key
            else "# No CRL: the CA key is kept elsewhere; add `crlfile` with your PKI's revocation list."
        )
        auth_block = _template("auth-certificate.conf.tmpl").substitute(crl_line=crl_line)
    limits = settings.limits
    return _template("medge.conf.tmpl").substitute(
        folder=folder.path,
        auth=settings.auth.value,
        port=settings.port,
        bind_address=settings.bind_address,
        tls_block=tls_block.rstrip("\n"),
        auth_block=auth_block.rstrip("\n"),
        acl_file=folder.acl_file,
        bind_client_id="true" if settings.bind_client_id else "false",
        **limits.model_dump(),
    )


def render_acl(settings: BrokerSettings, folder: BrokerFolder) -> str:
    """The ACL file's text: device patterns, one block per dashboard, one deny block per revoked identity."""
    dashboards = "".join(_template("acl-dashboard.tmpl").substitute(name=d.name) for d in settings.dashboards)
    denied = "".join(_template("acl-denied.tmpl").substitute(name=name) for name in settings.denied_usernames())
    return _template("acl.tmpl").substitute(folder=folder.path, dashboards=dashboards, denied=denied)
