"""Fetch an offered package from the dashboard over HTTPS, resuming a download that was cut off.

``GET {dashboard}{offer.url}`` with the device's bearer token; a ``.part``
file that already holds the first N bytes is continued with
``Range: bytes=N-`` (a ``206`` whose ``Content-Range`` starts at N; a ``200``
means the server sends the whole file again, so it starts over). A dropped
connection or a timeout is retried a few times from where it stopped; an
HTTP error, a TLS failure or a file whose size or SHA-256 is not the offer's
ends the download with an :class:`OtaError` saying which.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import httpx

from firmware_integration.ota.errors import OtaError
from sdk.fleet_contracts import DEVICE_TOKEN_HEADER, PackageOffer
from sdk.tcp_nodelay import NODELAY_SOCKET_OPTIONS

__all__ = ["PackageDownload", "download_client"]

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")

Progress = Callable[[int, int], None]
"""``(bytes_done, bytes_total)`` as the download goes."""


class _Retry(Exception):
    """A failure worth another attempt (the connection dropped, a timeout, a 5xx)."""


def download_client(ca_file: Path | None = None, *, timeout_s: float = 30.0) -> httpx.Client:
    """An HTTPS client for the dashboard: its CA (or the system's), TCP_NODELAY, no proxies from the environment.

    TCP_NODELAY is set through the transport's socket options, before the connection is made.
    """
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else ssl.create_default_context()
    transport = httpx.HTTPTransport(verify=context, socket_options=NODELAY_SOCKET_OPTIONS, retries=0)
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
    return httpx.Client(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False)


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


class PackageDownload:
    """Downloads offers from one dashboard into a folder (``{sha256}.part`` until complete).

    Args:
        base_url: the dashboard's base URL (``https://host:port``).
        token: the device token (sent as ``Authorization: Bearer``; never logged).
        ca_file: the CA to verify the dashboard with (default: the system's CAs).
        timeout_s: connect and read timeout.
        attempts: tries per download (a cut-off one continues where it stopped).
        backoff_s: wait before the second try; doubles each time.
        stop: set to abandon the download at the next chunk (the ``.part`` stays for later).

    Raises:
        OtaError: (from :meth:`fetch`) HTTP status, TLS, timeout after every attempt, wrong size or hash.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        ca_file: Path | None = None,
        *,
        timeout_s: float = 30.0,
        attempts: int = 3,
        backoff_s: float = 1.0,
        stop: threading.Event | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.ca_file = ca_file
        self.timeout_s = timeout_s
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self._stop = stop or threading.Event()

    @staticmethod
    def part_path(offer: PackageOffer, folder: Path) -> Path:
        """Where the download of ``offer`` is kept in ``folder`` (named by its hash, so a re-offer resumes it)."""
        return Path(folder) / f"{offer.sha256}.part"

    def fetch(self, offer: PackageOffer, folder: Path, on_progress: Progress | None = None) -> Path:
        """Download ``offer`` into ``folder``, continuing what an earlier try left; the file once size and hash match.

        The returned file (``{sha256}.part``) is complete and checked; the
        caller moves or deletes it. A file whose hash does not match is
        deleted (a later try starts over); a download cut off for good keeps
        its ``.part`` for the next try.
        """
        url = f"{self.base_url}{offer.url}"
        part = self.part_path(offer, folder)
        part.parent.mkdir(parents=True, exist_ok=True)
        report = on_progress or (lambda done, total: None)
        delay = self.backoff_s
        with download_client(self.ca_file, timeout_s=self.timeout_s) as client:
            for attempt in range(1, self.attempts + 1):
                try:
                    self._once(client, url, offer, part, report)
                    break
                except _Retry as exc:
                    if attempt == self.attempts:
                        have = part.stat().st_size if part.exists() else 0
                        raise OtaError(
                            f"download of {url} failed after {attempt} attempts: {exc} "
                            f"({have} of {offer.size} bytes kept; sending the update again resumes it)",
                            step="download",
                        ) from exc
                    log.warning("download of %s: %s; trying again in %.1f s (attempt %d)", url, exc, delay, attempt + 1)
                    if self._stop.wait(delay):
                        raise OtaError("download stopped (the service is stopping)", step="download") from exc
                    delay *= 2
        size = part.stat().st_size
        if size != offer.size:
            part.unlink()
            raise OtaError(f"downloaded {size} bytes, the offer says {offer.size}", step="download")
        digest = _sha256(part)
        if digest != offer.sha256:
            part.unlink()
            raise OtaError(f"sha256 of the download is {digest}, the offer says {offer.sha256}", step="download")
        return part

    def _once(self, client: httpx.Client, url: str, offer: PackageOffer, part: Path, report: Progress) -> None:
        have = part.stat().st_size if part.exists() else 0
        if have > offer.size:
            part.unlink()
            have = 0
        if have == offer.size:
            return  # complete already; the hash decides
        headers = {DEVICE_TOKEN_HEADER: f"Bearer {self._token}", "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with client.stream("GET", url, headers=headers) as response:
                start = self._start_of(response, url, offer, have, part)
                self._write(response, part, start, offer, report)
        except httpx.TransportError as exc:
            if (tls := _tls_failure(exc)) is not None:
                raise OtaError(f"TLS with {url} failed: {tls}", step="download") from exc
            raise _Retry(f"{type(exc).__name__}: {exc or 'connection lost'}") from exc

    def _start_of(self, response: httpx.Response, url: str, offer: PackageOffer, have: int, part: Path) -> int:
        """Where the response's body goes in the file; raises on a status that gives no body to use."""
        status = response.status_code
        if status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
            if match is None or int(match.group(1)) != have or match.group(3) not in ("*", str(offer.size)):
                part.unlink(missing_ok=True)
                raise _Retry(f"the server answered range {have}- with {response.headers.get('content-range')!r}")
            return have
        if status == 200:
            length = response.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) != offer.size:
                raise OtaError(f"{url} serves {length} bytes, the offer says {offer.size}", step="download")
            return 0
        if status == 416:
            part.unlink(missing_ok=True)
            raise _Retry("the server refused the range; starting over")
        if status >= 500:
            raise _Retry(f"HTTP {status} from {url}")
        raise OtaError(f"HTTP {status} {response.reason_phrase} from {url}", step="download")

    def _write(self, response: httpx.Response, part: Path, start: int, offer: PackageOffer, report: Progress) -> None:
        done = start
        fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o640)
        with os.fdopen(fd, "wb") as handle:
            handle.truncate(start)
            handle.seek(start)
            try:
                for chunk in response.iter_raw():  # as received: a cut-off keeps every byte that arrived
                    if self._stop.is_set():
                        raise OtaError("download stopped (the service is stopping)", step="download")
                    if done + len(chunk) > offer.size:
                        handle.truncate(0)  # not the offered file: nothing of it is worth resuming
                        raise OtaError(f"the server sends more than the {offer.size} bytes offered", step="download")
                    handle.write(chunk)
                    done += len(chunk)
                    report(done, offer.size)
            finally:
                handle.flush()
                os.fsync(handle.fileno())
        if done < offer.size:
            raise _Retry(f"the connection ended after {done} of {offer.size} bytes")
