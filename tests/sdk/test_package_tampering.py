"""Package tampering at every byte range: no changed byte of a signed package is ever accepted (sdk/package.py).

A real signed package of the reference model is altered one byte at a time
in every range of the file: each local file header (every byte), each
member's data (its first and last bytes and evenly spaced ones between),
the central directory and the end record (every byte); then cut short and
extended. :func:`verify_package` must refuse every variant with a
``VerificationError`` naming one of its checks: never another exception,
never acceptance.

No tampered byte can be harmless here, so no acceptance is tolerated: the
``archive`` check re-encodes the members in the canonical form and compares
the whole file, so a byte in a zip comment, an unused header field or the
padding of a timestamp changes the comparison even where the members read
back the same.
"""

from __future__ import annotations

import io
import logging
import struct
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from sdk.errors import VerificationError
from sdk.package import CHECKS, verify_package
from sdk.trust import TrustStore
from tests.conftest import ReferencePackages

logger = logging.getLogger(__name__)

_LOCAL_HEADER = 30  # fixed part of a local file header
_CENTRAL_END = 22  # end of central directory record without a comment
_DATA_SAMPLES = 48  # evenly spaced flips inside each member's data, beside its first and last 8 bytes


def _ranges(raw: bytes) -> dict[str, list[int]]:
    """Byte offsets to flip, by range of the ZIP file: every structural byte and a spread over each member's data."""
    ranges: dict[str, list[int]] = {}
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        infos = archive.infolist()
    for info in infos:
        start = info.header_offset
        name_len, extra_len = struct.unpack_from("<HH", raw, start + 26)
        data = start + _LOCAL_HEADER + name_len + extra_len
        ranges[f"local header {info.filename}"] = list(range(start, data))
        size = info.compress_size
        if size:
            spread = {data + size * k // _DATA_SAMPLES for k in range(_DATA_SAMPLES)}
            ends = set(range(data, data + min(8, size))) | set(range(data + size - min(8, size), data + size))
            ranges[f"data {info.filename}"] = sorted(spread | ends)
    end = len(raw) - _CENTRAL_END
    assert raw[end : end + 4] == b"PK\x05\x06", "the canonical archive has no comment"
    (central_size, central_start) = struct.unpack_from("<II", raw, end + 12)
    assert central_start + central_size == end
    ranges["central directory"] = list(range(central_start, end))
    ranges["end record"] = list(range(end, len(raw)))
    return ranges


def _refusal(path: Path, trusted: TrustStore) -> str:
    """The check that refused the package at ``path``, else ``accepted`` or the unexpected exception's name."""
    try:
        verify_package(path, trusted)
    except VerificationError as exc:
        return exc.check
    except Exception as exc:
        return f"unexpected {type(exc).__name__}: {exc}"
    return "accepted"


@pytest.fixture(scope="module")
def signed_package(reference_packages: ReferencePackages, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reference_packages.build(tmp_path_factory.mktemp("tamper") / "reference.medge")


def test_the_untampered_package_verifies(signed_package: Path, reference_packages: ReferencePackages) -> None:
    assert verify_package(signed_package, reference_packages.trusted).manifest.model.name == "chest-ct-nodule"


def test_every_byte_range_tampered_is_refused(
    signed_package: Path, reference_packages: ReferencePackages, tmp_path: Path
) -> None:
    raw = signed_package.read_bytes()
    ranges = _ranges(raw)
    assert sum(1 for name in ranges if name.startswith("local header")) >= 5, sorted(ranges)
    covered = sorted({offset for offsets in ranges.values() for offset in offsets})
    structural = {o for name, offsets in ranges.items() if not name.startswith("data ") for o in offsets}
    data_bytes = len(raw) - len(structural)
    assert data_bytes > 0 and len(structural) + data_bytes == len(raw), "the ranges tile the whole file"
    tampered = tmp_path / "tampered.medge"
    outcomes: dict[str, Counter[str]] = {}
    for name, offsets in ranges.items():
        for offset in offsets:
            changed = bytearray(raw)
            changed[offset] ^= 0x01  # the smallest change: one bit
            tampered.write_bytes(changed)
            outcome = _refusal(tampered, reference_packages.trusted)
            outcomes.setdefault(name.split(" ")[0], Counter())[outcome] += 1
    logger.info(
        "tampering: %d single-bit flips over %d ranges of a %d-byte package; outcomes by range %s",
        len(covered),
        len(ranges),
        len(raw),
        {name: dict(counter) for name, counter in outcomes.items()},
    )
    everything = sum(outcomes.values(), Counter())
    assert "accepted" not in everything, "a tampered package was accepted"
    unexpected = set(everything) - set(CHECKS)
    assert not unexpected, unexpected
    assert len(covered) >= 1000


def test_a_member_flagged_encrypted_is_a_verification_error(
    signed_package: Path, reference_packages: ReferencePackages, tmp_path: Path
) -> None:
    """Bit 0 of a central directory entry's flags marks the member encrypted.

    zipfile then raises ``RuntimeError`` ("password required"); found by this
    file's sweep, now refused as an unreadable archive like any other.
    """
    raw = signed_package.read_bytes()
    end = len(raw) - _CENTRAL_END
    (central_start,) = struct.unpack_from("<I", raw, end + 16)
    changed = bytearray(raw)
    changed[central_start + 8] ^= 0x01  # general purpose flags of the first entry
    tampered = tmp_path / "encrypted.medge"
    tampered.write_bytes(changed)
    assert _refusal(tampered, reference_packages.trusted) == "archive"


@pytest.mark.parametrize("change", ["cut", "append", "prepend"])
def test_a_package_cut_short_or_extended_is_refused(
    signed_package: Path, reference_packages: ReferencePackages, tmp_path: Path, change: str
) -> None:
    raw = signed_package.read_bytes()
    tampered = tmp_path / "tampered.medge"
    variants = {
        "cut": [raw[:n] for n in (0, 4, len(raw) // 2, len(raw) - _CENTRAL_END, len(raw) - 1)],
        "append": [raw + b"\x00", raw + b"PK\x05\x06" + bytes(18), raw + raw[-_CENTRAL_END:]],
        "prepend": [b"\x00" + raw, b"MZ" + bytes(62) + raw],
    }[change]
    for variant in variants:
        tampered.write_bytes(variant)
        assert _refusal(tampered, reference_packages.trusted) == "archive"
