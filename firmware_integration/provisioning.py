"""``medge provision``: turn a boxed appliance into an enrolled one with one command and one token.

The field tech types what the dashboard's enrollment page shows::

    medge provision --dashboard https://dash.hospital --token T --site st-marys --device ct-1 --scanner-ae CT_SCANNER

and the appliance, in order:

1. makes the layout's folders (:class:`~firmware_integration.layout.Layout`);
2. detects its device profile;
3. makes its own key pair (kept if a failed run made one already) and a CSR
   for ``{site}/{device}``: the private key never leaves the appliance;
4. enrolls with the dashboard (``POST /api/v1/enroll``, the token is single
   use): the dashboard registers it and adds its broker identity and ACL,
   and answers with its MQTT credentials or certificate, the trusted
   package-signing keys, a device token and the assigned package;
5. writes the credential files, the trusted keys and ``appliance.toml``
   (each file atomically: a crash leaves the old one or the new one);
6. downloads and verifies the assigned package into the packages slot;
7. runs the self-test checklist.

A failure names the step and what to do; since the token is spent once the
dashboard has answered, everything the answer carries is written before any
later step can fail.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from firmware_integration.layout import Layout, Owner
from sdk.durable_files import fsync_dir, write_atomic
from sdk.errors import ConfigError, MedgeError
from sdk.fleet_contracts import EnrollmentRequest, EnrollmentResponse, PackageOffer
from sdk.signing import key_id, public_key_pem

__all__ = ["ProvisionError", "ProvisionOptions", "ProvisionResult", "Provisioner", "certificate_request"]

log = logging.getLogger(__name__)

ENROLL_PATH = "/api/v1/enroll"
DEVICE_KEY = "device.key"
"""The device's private key in the layout's MQTT folder (its client certificate's key in certificate auth)."""


class ProvisionError(MedgeError):
    """A provisioning step failed; the message names the step and the fix."""


@dataclass(frozen=True)
class ProvisionOptions:
    """What the field tech gives ``medge provision``.

    Attributes:
        dashboard_url: the dashboard's base URL (``https://...``; ``http://`` only on loopback).
        token: the single-use enrollment token from the dashboard's enrollment page.
        site: the site name.
        device: this appliance's name at the site.
        scanner_aes: the AE titles of the scanners allowed to send (``[dicom] allowed_calling_aes``).
        ae_title: this appliance's AE title.
        dicom_port: the port scanners send to.
        dashboard_ca: the CA that signed the dashboard's certificate (default: the system's CAs).
        profile: the device profile id (default: detected).
        layout: where the files go (``/`` on an appliance, a folder in tests and image builds).
        overwrite: replace an existing ``appliance.toml`` (re-provisioning).
        timeout_s: the network time limit of each request.
    """

    dashboard_url: str
    token: str = field(repr=False)
    site: str
    device: str
    scanner_aes: tuple[str, ...] = ()
    ae_title: str = "MEDGE"
    dicom_port: int = 11112
    dashboard_ca: Path | None = None
    profile: str | None = None
    layout: Layout = field(default_factory=Layout)
    overwrite: bool = False
    timeout_s: float = 30.0


@dataclass
class ProvisionResult:
    """What provisioning left on the appliance."""

    config_path: Path
    profile: str
    trusted_keys: list[str]
    package: Path | None
    files: list[Path]


Step = Callable[[str, str], None]
"""``(step, detail)``: told as each step completes (the CLI prints a line)."""


class Provisioner:
    """Runs the provisioning steps for one appliance (see the module docstring)."""

    def __init__(self, options: ProvisionOptions, *, on_step: Step | None = None) -> None:
        self.options = options
        self.layout = options.layout
        self._on_step = on_step or (lambda step, detail: None)
        self._written: list[Path] = []
        url = options.dashboard_url.rstrip("/")
        if not url.startswith(("https://", "http://")):
            raise ConfigError(f"the dashboard URL must start with https:// (got {url!r})", field="--dashboard")
        if url.startswith("http://") and not _is_loopback_url(url):
            raise ConfigError(
                "the dashboard URL is plain http:// to another machine: the token and the device's credentials "
                "would travel unencrypted; use https://",
                field="--dashboard",
            )
        self.dashboard_url = url
        # Owners are set on a real appliance only: under a prefix (an image being built, a test) the host's
        # users are not the appliance's.
        self._chown = os.geteuid() == 0 and Path(self.layout.prefix) == Path("/")

    # -- steps ---------------------------------------------------------------------------------------------------

    def run(self) -> ProvisionResult:
        """Every step up to the written config and the installed package (the self-test is the caller's)."""
        config_path = self.layout.appliance_config
        if config_path.exists() and not self.options.overwrite:
            raise ProvisionError(
                f"{config_path} exists: this appliance is provisioned already; pass --overwrite to enroll it again "
                "(it needs a new token)",
                path=config_path,
            )
        try:
            self.layout.create(chown=self._chown, dashboard=False)
        except OSError as exc:
            raise ProvisionError(f"cannot make medge's folders: {exc}", path=exc.filename) from exc
        self._on_step("layout", f"folders ready under {self.layout.prefix}")
        profile = self._profile()
        self._on_step("profile", profile)
        key = self._device_key()
        answer = self._enroll(key, profile)
        self._on_step("enroll", f"{answer.site}/{answer.device} registered with {self.dashboard_url}")
        trusted = self._write_credentials(answer)
        self._write_config(answer, profile)
        self._on_step("config", str(config_path))
        package = None
        if answer.package is not None:
            package = self._install_package(answer.package)
            self._on_step("package", f"{answer.package.name} {answer.package.version} installed")
        else:
            self._on_step("package", "none assigned yet: assign one on the dashboard's Packages page")
        return ProvisionResult(config_path, profile, trusted, package, list(self._written))

    def _profile(self) -> str:
        from device_profiles import detect_host, get_profile, list_profiles, match_profile

        if self.options.profile:
            return get_profile(self.options.profile).id
        return match_profile(detect_host(), list_profiles()).profile_id

    def _device_key(self) -> ec.EllipticCurvePrivateKey:
        """The device's key pair: made here, once; a re-run after a failure keeps the same key."""
        path = self.layout.mqtt_dir / DEVICE_KEY
        if path.exists():
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise ProvisionError(f"{path} is not an EC private key; move it away and run again", path=path)
            self._on_step("key", f"kept the device key made earlier ({path})")
            return loaded
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self._install(path, pem, 0o640)
        self._on_step("key", f"device key pair made ({path})")
        return key

    def _client(self) -> httpx.Client:
        from firmware_integration.ota import download_client

        if self.options.dashboard_ca is not None and not self.options.dashboard_ca.is_file():
            raise ConfigError(f"no CA file at {self.options.dashboard_ca}", path=self.options.dashboard_ca)
        return download_client(self.options.dashboard_ca, timeout_s=self.options.timeout_s)

    def _enroll(self, key: ec.EllipticCurvePrivateKey, profile: str) -> EnrollmentResponse:
        from importlib.metadata import version

        request = EnrollmentRequest(
            token=self.options.token,
            site=self.options.site,
            device=self.options.device,
            csr_pem=certificate_request(key, f"{self.options.site}/{self.options.device}"),
            profile=profile,
            medge_version=version("medge"),
        )
        try:
            with self._client() as client:
                response = client.post(
                    self.dashboard_url + ENROLL_PATH, content=request.model_dump_json(), headers=_JSON
                )
        except httpx.ConnectError as exc:
            raise ProvisionError(
                f"cannot reach the dashboard at {self.dashboard_url}: {exc}; check the URL, the network and, "
                "for a certificate error, pass the dashboard's CA with --dashboard-ca"
            ) from exc
        except httpx.HTTPError as exc:
            raise ProvisionError(f"enrollment with {self.dashboard_url} failed: {exc}") from exc
        if response.status_code != 200:
            raise ProvisionError(
                f"the dashboard refused the enrollment ({response.status_code}): {_error_text(response)}"
            )
        try:
            answer = EnrollmentResponse.model_validate_json(response.content)
        except ValidationError as exc:
            raise ProvisionError(f"the dashboard's answer is not an enrollment: {exc}") from exc
        if (answer.site, answer.device) != (self.options.site, self.options.device):
            raise ProvisionError(
                f"the dashboard enrolled {answer.site}/{answer.device}, not {self.options.site}/{self.options.device}"
            )
        return answer

    def _write_credentials(self, answer: EnrollmentResponse) -> list[str]:
        mqtt_dir = self.layout.mqtt_dir
        grant = answer.mqtt
        if grant.ca_cert_pem is not None:
            self._install(mqtt_dir / "ca.crt", grant.ca_cert_pem.encode(), 0o644)
        if grant.password is not None:
            self._install(mqtt_dir / "password", grant.password.encode() + b"\n", 0o640)
        if grant.cert_pem is not None:
            self._install(mqtt_dir / "client.crt", grant.cert_pem.encode(), 0o644)
        self._install(self.layout.config_dir / "device_token", answer.device_token.encode() + b"\n", 0o640)
        if self.options.dashboard_ca is not None:
            self._install(self.layout.config_dir / "dashboard-ca.crt", self.options.dashboard_ca.read_bytes(), 0o644)
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        ids = []
        for pem in answer.trusted_keys:
            try:
                public = serialization.load_pem_public_key(pem.encode())
            except ValueError as exc:
                raise ProvisionError(f"the dashboard sent a trusted key that is not a PEM public key: {exc}") from exc
            if not isinstance(public, Ed25519PublicKey):
                raise ProvisionError("the dashboard sent a trusted key that is not Ed25519")
            ident = key_id(public)
            self._install(self.layout.trusted_keys_dir / f"{ident}.pub", public_key_pem(public), 0o644, runtime=True)
            ids.append(ident)
        self._on_step("credentials", f"broker credentials and {len(ids)} trusted key(s) written")
        return ids

    def _write_config(self, answer: EnrollmentResponse, profile: str) -> None:
        layout, options, grant = self.layout, self.options, answer.mqtt
        mqtt_dir = layout.mqtt_dir
        mqtt: dict[str, Any] = {"host": grant.host, "port": grant.port}
        if grant.password is not None:
            mqtt |= {"username": grant.username or f"{answer.site}/{answer.device}"}
            mqtt |= {"password_file": str(mqtt_dir / "password")}
        if grant.ca_cert_pem is not None:
            mqtt["ca_file"] = str(mqtt_dir / "ca.crt")
        if grant.cert_pem is not None:
            mqtt |= {"cert_file": str(mqtt_dir / "client.crt"), "key_file": str(mqtt_dir / DEVICE_KEY)}
        dashboard: dict[str, Any] = {
            "url": self.dashboard_url,
            "token_file": str(layout.config_dir / "device_token"),
        }
        if options.dashboard_ca is not None:
            dashboard["ca_file"] = str(layout.config_dir / "dashboard-ca.crt")
        document = {
            "appliance": {
                "site": answer.site,
                "device": answer.device,
                "profile": profile,
                "data_dir": str(layout.state_dir),
            },
            "dicom": {
                "ae_title": options.ae_title,
                "port": options.dicom_port,
                "allowed_calling_aes": list(options.scanner_aes),
            },
            "mqtt": mqtt,
            "packages": {
                "dir": str(layout.packages_dir),
                "trusted_keys_dir": str(layout.trusted_keys_dir),
            },
            "dashboard": dashboard,
        }
        header = (
            f"# Written by `medge provision` for {answer.site}/{answer.device}. Edit with care; "
            "`medge selftest --config` checks it.\n"
        )
        text = header + tomli_w.dumps(document)
        from sdk.appliance_config import ApplianceConfig

        try:
            ApplianceConfig.model_validate(tomllib.loads(text))
        except ValidationError as exc:
            raise ProvisionError(f"the config provisioning would write is invalid: {exc}") from exc
        self._install(layout.appliance_config, text.encode(), 0o640)

    def _install_package(self, offer: PackageOffer) -> Path:
        from firmware_integration.ota.download import PackageDownload
        from sdk.package import verify_package
        from sdk.trust import TrustStore

        token = (self.layout.config_dir / "device_token").read_text().strip()
        staging = self.layout.state_dir / "ota"
        download = PackageDownload(
            self.dashboard_url,
            token,
            ca_file=self.options.dashboard_ca,
            timeout_s=self.options.timeout_s,
        )
        try:
            fetched = download.fetch(offer, staging)
        except MedgeError as exc:
            raise ProvisionError(f"downloading {offer.name} {offer.version} failed: {exc}") from exc
        trusted = TrustStore.load(self.layout.trusted_keys_dir)
        verify_package(fetched, trusted)
        target = self.layout.packages_dir / f"{offer.name}-{offer.version}.medge"
        os.replace(fetched, target)
        fsync_dir(target.parent)
        if (owner := self._owner(runtime=True)) is not None:
            os.chown(target, *owner)
        self._written.append(target)
        return target

    # -- files ---------------------------------------------------------------------------------------------------

    def _install(self, path: Path, data: bytes, mode: int, *, runtime: bool = False) -> None:
        """Write ``path`` atomically with ``mode``; on a real root owned root:<service group> (state: the service's)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data, mode=mode, owner=self._owner(runtime))
        self._written.append(path)

    def _owner(self, runtime: bool) -> tuple[int, int] | None:
        if not self._chown:
            return None
        return self.layout.ids(Owner.RUNTIME if runtime else Owner.CONFIG)


_JSON = {"Content-Type": "application/json"}


def certificate_request(key: ec.EllipticCurvePrivateKey, common_name: str) -> str:
    """The PEM CSR an appliance sends at enrollment: its own public key, subject CN ``{site}/{device}``."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _is_loopback_url(url: str) -> bool:
    host = httpx.URL(url).host
    return host in ("localhost", "::1") or host.startswith("127.")


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("error") or body)[:300]
    return str(body)[:300]
