"""Resumable HTTPS downloads of offered packages (firmware_integration/ota/download.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from firmware_integration.ota import OtaError, PackageDownload, download_client
from tests.firmware_integration.package_server import PackageServer

TOKEN = "device-token-0123456789abcdef"


@pytest.fixture
def server(tmp_path: Path):
    with PackageServer(tmp_path / "tls", TOKEN) as running_server:
        yield running_server


@pytest.fixture
def package(tmp_path: Path) -> Path:
    path = tmp_path / "package.medge"
    path.write_bytes(bytes(range(256)) * 3000)  # 768 000 bytes: several reads
    return path


def _download(server: PackageServer, **options) -> PackageDownload:
    options = {"ca_file": server.ca_file, "attempts": 2, "backoff_s": 0.01, "timeout_s": 5.0, **options}
    return PackageDownload(server.url, options.pop("token", TOKEN), **options)


def test_a_partial_file_is_continued_with_a_range_request(server: PackageServer, package: Path, tmp_path: Path) -> None:
    offer = server.offer(package, "m", "1.0.0")
    folder = tmp_path / "downloads"
    part = PackageDownload.part_path(offer, folder)
    folder.mkdir()
    part.write_bytes(package.read_bytes()[:1000])
    seen: list[tuple[int, int]] = []
    fetched = _download(server).fetch(offer, folder, lambda done, total: seen.append((done, total)))
    assert fetched == part and fetched.read_bytes() == package.read_bytes()
    assert [(r.range, r.status, r.sent) for r in server.requests] == [("bytes=1000-", 206, offer.size - 1000)]
    assert seen[-1] == (offer.size, offer.size) and seen[0][0] > 1000


def test_a_server_ignoring_the_range_makes_it_start_over(server: PackageServer, package: Path, tmp_path: Path) -> None:
    offer = server.offer(package, "m", "1.0.0")
    server.ignore_range = True
    part = PackageDownload.part_path(offer, tmp_path)
    part.write_bytes(b"\0" * 1000)  # not even the right bytes: a 200 overwrites them
    assert _download(server).fetch(offer, tmp_path).read_bytes() == package.read_bytes()
    assert [r.status for r in server.requests] == [200]


def test_a_file_that_is_not_the_offered_one_is_refused_and_not_kept(
    server: PackageServer, package: Path, tmp_path: Path
) -> None:
    offer = server.offer(package, "m", "1.0.0").model_copy(update={"sha256": "0" * 64})
    with pytest.raises(OtaError, match=r"sha256 of the download is [0-9a-f]{64}, the offer says 0{64}"):
        _download(server).fetch(offer, tmp_path)
    assert not PackageDownload.part_path(offer, tmp_path).exists()
    bigger = server.offer(package, "m", "1.0.0").model_copy(update={"size": 10})
    with pytest.raises(OtaError, match="serves 768000 bytes, the offer says 10"):
        _download(server).fetch(bigger, tmp_path)


def test_http_and_tls_failures_name_the_problem(server: PackageServer, package: Path, tmp_path: Path) -> None:
    offer = server.offer(package, "m", "1.0.0")
    with pytest.raises(OtaError, match="HTTP 401 Unauthorized"):
        _download(server, token="wrong-token-0123456789").fetch(offer, tmp_path)
    with pytest.raises(OtaError, match="HTTP 404"):
        _download(server).fetch(offer.model_copy(update={"url": "/api/v1/packages/none"}), tmp_path)
    with pytest.raises(OtaError, match=r"TLS with https://127\.0\.0\.1:\d+/.* failed: .*CERTIFICATE_VERIFY_FAILED"):
        _download(server, ca_file=None).fetch(offer, tmp_path)  # the system's CAs do not know the test CA


def test_a_connection_cut_off_every_time_keeps_what_arrived(
    server: PackageServer, package: Path, tmp_path: Path
) -> None:
    offer = server.offer(package, "m", "1.0.0")
    server.cut_once.add(offer.url)
    with pytest.raises(OtaError, match=r"failed after 1 attempts: .* \(\d+ of 768000 bytes kept"):
        _download(server, attempts=1).fetch(offer, tmp_path)
    kept = PackageDownload.part_path(offer, tmp_path).stat().st_size
    assert kept == server.requests[0].sent
    _download(server).fetch(offer, tmp_path)  # sending the update again resumes it
    assert server.requests[-1].range == f"bytes={kept}-"


def test_the_download_socket_has_tcp_nodelay(server: PackageServer, package: Path) -> None:
    offer = server.offer(package, "m", "1.0.0")
    with (
        download_client(server.ca_file) as client,
        client.stream("GET", f"{server.url}{offer.url}", headers={"Authorization": f"Bearer {TOKEN}"}) as response,
    ):
        sock = response.extensions["network_stream"].get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        response.read()
