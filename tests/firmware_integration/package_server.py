"""What OTA tests need: an HTTPS package server, real signed packages of several versions, an appliance's folders.

The server stands in for the dashboard's package endpoint (``GET {offer.url}``
with ``Authorization: Bearer <device token>``) over real TLS, with a
certificate from the broker's PKI helpers. It records every request, can cut
a download off half-way once (the connection closes mid-body) and can
trickle the body slowly so a test can stop the appliance mid-download.

The packages are compiled from the reference model (a version per compile)
or derived from one and signed again: an unsigned copy, a tampered copy, one
whose golden samples fail, one whose analyses fail on real images.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import shutil
import ssl
import threading
import time
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_profiles import get_profile
from firmware_integration.broker.pki import cert_pem, issue, make_ca
from firmware_integration.layout import Layout
from firmware_integration.ota import OtaAgent, OtaPaths
from quantization.compile import CompileOptions, compile_package
from runtime.appliance import Appliance
from sdk.appliance_config import ApplianceConfig
from sdk.fleet_contracts import OTA_EVENT, OtaReport, PackageOffer, UpdateRequest
from sdk.messages import Command
from sdk.model_config import load_model_config
from sdk.package import MANIFEST_NAME, SIGNATURE_NAME, open_package, write_package
from sdk.reference_model import config_path, onnx_path
from sdk.signing import key_id, load_public_key
from sdk.tcp_nodelay import set_tcp_nodelay

_RANGE = re.compile(r"^bytes=(\d+)-$")
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Served:
    """One request the server answered."""

    path: str
    range: str | None
    status: int
    sent: int


class PackageServer:
    """Serves registered files over HTTPS on a free loopback port.

    Args:
        folder: where the CA, the server certificate and key are written.
        token: the bearer token a request must carry.
    """

    def __init__(self, folder: Path, token: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        ca_cert, ca_key = make_ca("medge test dashboard CA")
        server = issue(ca_cert, ca_key, "127.0.0.1", server_names=["127.0.0.1", "localhost"])
        self.ca_file = folder / "ca.crt"
        self.ca_file.write_bytes(cert_pem(ca_cert))
        (folder / "server.crt").write_bytes(server.cert_pem)
        (folder / "server.key").write_bytes(server.key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(folder / "server.crt", folder / "server.key")
        self.token = token
        self.files: dict[str, Path] = {}
        self.requests: list[Served] = []
        self.cut_once: set[str] = set()  # paths whose next download is cut off half-way
        self.chunk_delay_s = 0.0  # sleep between 64 KiB chunks (a slow link)
        self.ignore_range = False  # answer every request with the whole file (200), as a server without ranges
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="package-server", daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._httpd.server_address[1]}"

    def offer(self, package: Path, name: str, version: str) -> PackageOffer:
        """Serve ``package`` and return the offer of it (its real size and hash)."""
        data = package.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        path = f"/api/v1/packages/{name}/{version}/{digest[:12]}.medge"
        self.files[path] = package
        return PackageOffer(name=name, version=version, sha256=digest, size=len(data), url=path)

    def start(self) -> PackageServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> PackageServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _record(self, served: Served) -> None:
        with self._lock:
            self.requests.append(served)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                set_tcp_nodelay(self.connection)

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _status(self, status: int, text: str) -> None:
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                server._record(Served(self.path, self.headers.get("Range"), status, 0))

            def do_GET(self) -> None:
                if self.headers.get("Authorization") != f"Bearer {server.token}":
                    self._status(401, "unauthorized")
                    return
                package = server.files.get(self.path)
                if package is None:
                    self._status(404, "no such package")
                    return
                data = package.read_bytes()
                wanted = self.headers.get("Range")
                start = 0
                if wanted is not None and not server.ignore_range:
                    match = _RANGE.match(wanted)
                    if match is None or int(match.group(1)) >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        server._record(Served(self.path, wanted, 416, 0))
                        return
                    start = int(match.group(1))
                    status = 206
                    self.send_response(status)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    status = 200
                    self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                limit = len(body)
                if self.path in server.cut_once:
                    server.cut_once.discard(self.path)
                    limit = len(body) // 2
                    self.close_connection = True
                sent = 0
                while sent < limit:
                    chunk = body[sent : min(sent + _CHUNK, limit)]
                    try:
                        self.wfile.write(chunk)
                        self.wfile.flush()
                    except OSError:
                        break
                    sent += len(chunk)
                    if server.chunk_delay_s:
                        time.sleep(server.chunk_delay_s)
                server._record(Served(self.path, wanted, status, sent))

        return Handler


# -- packages ---------------------------------------------------------------------------------------------------------

PROFILE = "generic-x86_64-cpu"
MODEL = "chest-ct-nodule"


def compile_version(calibration: Path, key: Ed25519PrivateKey, out: Path, version: str) -> Path:
    """A real FP32 package of the reference model, with the model config's version set to ``version``."""
    config = load_model_config(config_path()).model_copy(update={"version": version})
    compile_package(onnx_path(), config, get_profile(PROFILE), calibration, key, out, CompileOptions(precision="fp32"))
    return out


def derive(
    source: Path,
    out: Path,
    key: Ed25519PrivateKey,
    *,
    version: str,
    extra_label: bool = False,
    break_golden: bool = False,
) -> Path:
    """A validly signed variant of ``source``.

    Args:
        extra_label: the config names one more label than the model outputs:
            golden samples (raw outputs) pass, every analysis of an image fails.
        break_golden: the expected outputs of the golden samples are off by 1.
    """
    package = open_package(source)
    model = package.manifest.model
    update: dict[str, object] = {"version": version}
    if extra_label:
        update["labels"] = [*model.labels, "extra"]
        update["thresholds"] = {**model.thresholds, "extra": 0.5}
    manifest = package.manifest.model_copy(update={"model": model.model_copy(update=update)})
    files = {name: data for name, data in package.members.items() if name not in (MANIFEST_NAME, SIGNATURE_NAME)}
    if break_golden:
        for sample in manifest.golden:
            for member in sample.outputs.values():
                raw = files[member]
                compressed = member.endswith(".gz")
                array = np.load(io.BytesIO(gzip.decompress(raw) if compressed else raw), allow_pickle=False)
                buffer = io.BytesIO()
                np.save(buffer, array + 1.0)
                files[member] = gzip.compress(buffer.getvalue()) if compressed else buffer.getvalue()
    write_package(out, manifest, files, key)
    return out


def _canonical(members: dict[str, bytes]) -> bytes:
    """The package archive form (as sdk.package writes it), so a check past ``archive`` is what fails."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            archive.writestr(info, members[name])
    return buffer.getvalue()


def unsigned_copy(source: Path, out: Path) -> Path:
    """``source`` without its signature (otherwise intact)."""
    members = dict(open_package(source).members)
    del members[SIGNATURE_NAME]
    out.write_bytes(_canonical(members))
    return out


def tampered_copy(source: Path, out: Path) -> Path:
    """``source`` with one byte of its model flipped (the signature and manifest untouched)."""
    data = bytearray(source.read_bytes())
    at = data.find(b"onnx") + len(data) // 3  # well inside the model's weights
    data[at] ^= 0xFF
    out.write_bytes(bytes(data))
    return out


# -- an appliance's folders ------------------------------------------------------------------------------------------


@dataclass
class OtaSite:
    """An appliance's layout under a test folder, its config and the events it emitted."""

    layout: Layout
    config: ApplianceConfig
    events: list[tuple[str, str, str, dict[str, object]]] = field(default_factory=list)

    def record(self, kind: str, severity: str, message: str, detail: Mapping[str, object]) -> None:
        self.events.append((kind, severity, message, dict(detail)))

    def reports(self, update_id: str | None = None) -> list[OtaReport]:
        """The ``ota`` reports so far (of one update)."""
        found = [OtaReport.model_validate(detail) for kind, _, _, detail in list(self.events) if kind == OTA_EVENT]
        return [report for report in found if update_id is None or report.update_id == update_id]

    @property
    def paths(self) -> OtaPaths:
        return OtaPaths.from_layout(self.layout)


def make_site(root: Path, server: PackageServer, public_key: Path, first_package: Path) -> OtaSite:
    """A fresh layout with one package installed the pre-OTA way (a plain packages folder) and one trusted key."""
    layout = Layout(prefix=root)
    layout.create(chown=False, dashboard=False)
    key = load_public_key(public_key)
    (layout.trusted_keys_dir / f"{key_id(key)}.pub").write_bytes(public_key.read_bytes())
    shutil.copyfile(first_package, layout.packages_dir / first_package.name)
    token_file = layout.config_dir / "device_token"
    token_file.write_text(server.token + "\n")
    config = ApplianceConfig(
        appliance={
            "site": "st-marys",
            "device": "ct-1",
            "demo": True,
            "data_dir": layout.state_dir,
            "profile": PROFILE,
        },
        dicom={"ae_title": "MEDGE", "host": "127.0.0.1"},
        mqtt={"port": 1883},
        packages={"dir": layout.packages_dir, "trusted_keys_dir": layout.trusted_keys_dir},
        dashboard={"url": server.url, "ca_file": server.ca_file, "token_file": token_file},
    )
    return OtaSite(layout, config)


@contextmanager
def running(site: OtaSite, **agent_options: Any) -> Iterator[tuple[OtaAgent, Appliance]]:
    """The service as ``medge serve`` runs it: recover, the appliance with the agent's commands, the agent."""
    options: dict[str, Any] = {"poll_s": 0.05, "download_backoff_s": 0.05, **agent_options}
    agent = OtaAgent(site.config, paths=site.paths, **options)
    agent.recover()
    appliance = Appliance(site.config, dicom_port=0, report=False, on_event=site.record, commands=agent.commands())
    appliance.start()
    try:
        agent.start(appliance, site.record)
        yield agent, appliance
    finally:
        agent.stop()
        appliance.stop()


def update_command(
    site: OtaSite, offer: PackageOffer, update_id: str, *, force: bool = False, probation_s: float = 0.0
) -> Command:
    request = UpdateRequest(update_id=update_id, package=offer, force=force, probation_s=probation_s)
    return Command(
        site=site.config.appliance.site,
        device=site.config.appliance.device,
        command="update",
        args=request.model_dump(mode="json"),
    )


def live_versions(appliance: Appliance) -> dict[str, str]:
    return {ref.name: ref.version for ref in appliance.package_refs()}
