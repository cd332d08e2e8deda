"""DICOM Part 10 framing for ingest: identify and check an instance without decoding it; write file meta.

pydicom reads a truncated file without complaint (a cut-off Pixel Data value
simply comes back shorter), so ingest walks the top-level elements itself:
every element's declared length must fit in the bytes received, and every
undefined-length sequence or encapsulated pixel data must reach its
delimiter. The walk touches element headers only, so it costs microseconds
even for large instances, and it picks up the four UIDs that place the
instance in the spool.

:func:`file_meta_bytes` encodes the preamble and File Meta Information that turn
a dataset received over DIMSE into a Part 10 file, without building a pydicom
dataset (that costs more than the walk and the write together).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from runtime.spool import is_valid_uid
from sdk.errors import DicomInputError

__all__ = ["InstanceHeader", "InstanceIdentity", "file_meta_bytes", "read_header"]

DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
_IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
_EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_MAX_DEPTH = 16
_IDENTITY = {
    0x00080016: "sop_class_uid",
    0x00080018: "sop_instance_uid",
    0x0020000D: "study_instance_uid",
    0x0020000E: "series_instance_uid",
}
_DEFAULT_MAX_INFLATED = 2 * 1024**3


class _FirstElementVRError(DicomInputError):
    """The dataset does not start as explicit VR: it may be implicit VR mislabelled."""


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """What ingest needs to know about an instance: how it is encoded and the UIDs that place it.

    A UID is ``None`` when the dataset lacks it; it may still be invalid
    (see :meth:`problems`).
    """

    transfer_syntax_uid: str
    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None

    def identity(self) -> InstanceIdentity:
        """The identifying UIDs, all present and valid.

        Raises:
            DicomInputError: one or more are missing or invalid (the message lists them).
        """
        problems = self.problems()
        if problems:
            raise DicomInputError("; ".join(problems))
        return InstanceIdentity(
            transfer_syntax_uid=self.transfer_syntax_uid,
            sop_class_uid=str(self.sop_class_uid),
            sop_instance_uid=str(self.sop_instance_uid),
            study_instance_uid=str(self.study_instance_uid),
            series_instance_uid=str(self.series_instance_uid),
        )

    def problems(self) -> list[str]:
        """Why the identifying UIDs cannot be used (empty when they all can)."""
        out = []
        for keyword, value in (
            ("SOPClassUID", self.sop_class_uid),
            ("SOPInstanceUID", self.sop_instance_uid),
            ("StudyInstanceUID", self.study_instance_uid),
            ("SeriesInstanceUID", self.series_instance_uid),
        ):
            if value is None:
                out.append(f"{keyword} missing")
            elif not is_valid_uid(value):
                out.append(f"{keyword} invalid ({value[:70]!r})")
        return out


@dataclass(frozen=True, slots=True)
class InstanceIdentity:
    """The UIDs that place an instance in the spool, all validated (digits and dots, at most 64)."""

    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str


def read_header(
    data: bytes, *, transfer_syntax_uid: str | None = None, max_inflated_bytes: int = _DEFAULT_MAX_INFLATED
) -> InstanceHeader:
    """Walk a DICOM Part 10 file (or a bare dataset) and return its identity.

    Args:
        data: a Part 10 file (preamble, ``DICM``, file meta, dataset), or a bare
            dataset when ``transfer_syntax_uid`` is given (as received over DIMSE).
        transfer_syntax_uid: the encoding of a bare dataset; for a Part 10
            file the file meta's value is used.
        max_inflated_bytes: a deflated dataset may not inflate beyond this.

    Raises:
        DicomInputError: not DICOM, truncated, structurally broken, or a
            deflated dataset too large; the message says which and where.
    """
    view = memoryview(data)
    if len(view) >= 132 and view[128:132] == b"DICM":
        meta_ts, offset = _read_file_meta(view)
        ts = meta_ts
    elif transfer_syntax_uid is not None:
        ts, offset = transfer_syntax_uid, 0
    else:
        raise DicomInputError("not a DICOM Part 10 file (no 'DICM' marker at byte 128)")
    body = view[offset:]
    if ts == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        body = memoryview(_inflate(body, max_inflated_bytes))
    implicit = ts == _IMPLICIT_VR_LITTLE_ENDIAN
    little = ts != _EXPLICIT_VR_BIG_ENDIAN
    found: dict[str, str] = {}
    try:
        _walk_dataset(body, 0, implicit, little, 0, found, in_item=False)
    except _FirstElementVRError:
        # Some writers label a dataset explicit VR but encode it implicit; pydicom reads those, so do we.
        found.clear()
        _walk_dataset(body, 0, True, True, 0, found, in_item=False)
    return InstanceHeader(
        transfer_syntax_uid=ts,
        sop_class_uid=found.get("sop_class_uid"),
        sop_instance_uid=found.get("sop_instance_uid"),
        study_instance_uid=found.get("study_instance_uid"),
        series_instance_uid=found.get("series_instance_uid"),
    )


def _read_file_meta(view: memoryview) -> tuple[str, int]:
    found: dict[str, str] = {}
    pos = 132
    end = len(view)
    while end - pos >= 8:
        (group,) = struct.unpack_from("<H", view, pos)
        if group != 0x0002:
            break
        pos = _element(view, pos, False, True, 0, found if _is_ts(view, pos) else None, meta=True)
    ts = found.get("transfer_syntax_uid")
    if not ts:
        raise DicomInputError("file meta has no Transfer Syntax UID (0002,0010)")
    return ts, pos


def _is_ts(view: memoryview, pos: int) -> bool:
    return struct.unpack_from("<HH", view, pos) == (0x0002, 0x0010)


def _inflate(body: memoryview, limit: int) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit)
    except zlib.error as exc:
        raise DicomInputError(f"deflated dataset cannot be inflated: {exc}") from exc
    if inflater.unconsumed_tail:
        raise DicomInputError(f"deflated dataset inflates beyond {limit} bytes")
    if not inflater.eof:
        raise DicomInputError("deflated dataset is truncated (the deflate stream does not end)")
    return out


def _walk_dataset(
    view: memoryview, pos: int, implicit: bool, little: bool, depth: int, found: dict[str, str] | None, *, in_item: bool
) -> int:
    end = len(view)
    u32 = "<I" if little else ">I"
    tag_fmt = "<HH" if little else ">HH"
    while pos < end:
        if end - pos < 8:
            raise DicomInputError(f"truncated: {end - pos} stray byte(s) at the end, at byte {pos}")
        group, elem = struct.unpack_from(tag_fmt, view, pos)
        if group == 0xFFFE:
            if in_item and (group << 16 | elem) == _ITEM_END:
                return pos + 8
            raise DicomInputError(f"unexpected delimiter ({group:04X},{elem:04X}) at byte {pos}")
        pos = _element(view, pos, implicit, little, depth, found, u32=u32, tag_fmt=tag_fmt)
    if in_item:
        raise DicomInputError("truncated: data ends inside a sequence item")
    return pos


def _element(
    view: memoryview,
    pos: int,
    implicit: bool,
    little: bool,
    depth: int,
    found: dict[str, str] | None,
    *,
    u32: str = "<I",
    tag_fmt: str = "<HH",
    meta: bool = False,
) -> int:
    """Check one element at ``pos`` and return where the next one starts."""
    end = len(view)
    group, elem = struct.unpack_from(tag_fmt, view, pos)
    tag = group << 16 | elem
    vr = b""
    if implicit:
        (length,) = struct.unpack_from(u32, view, pos + 4)
        pos += 8
    else:
        vr = bytes(view[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            if end - pos < 12:
                raise DicomInputError(f"truncated: element ({group:04X},{elem:04X}) header cut off")
            (length,) = struct.unpack_from(u32, view, pos + 8)
            pos += 12
        elif len(vr) == 2 and 65 <= vr[0] <= 90 and 65 <= vr[1] <= 90:
            (length,) = struct.unpack_from("<H" if little else ">H", view, pos + 6)
            pos += 8
        elif pos == 0 and little:
            raise _FirstElementVRError(f"invalid VR 0x{vr.hex()} for the first element ({group:04X},{elem:04X})")
        else:
            raise DicomInputError(f"invalid VR 0x{vr.hex()} for element ({group:04X},{elem:04X}) at byte {pos}")
    if length == _UNDEFINED:
        # UN of undefined length holds implicit VR little endian items (PS3.5 6.2.2).
        nested_implicit = implicit or vr == b"UN"
        return _skip_items(view, pos, nested_implicit, little or vr == b"UN", depth + 1, (group, elem))
    if length > end - pos:
        raise DicomInputError(
            f"truncated: element ({group:04X},{elem:04X}) declares {length} bytes but {end - pos} remain"
        )
    if found is not None:
        key = "transfer_syntax_uid" if meta else _IDENTITY.get(tag)
        if key is not None:
            found[key] = bytes(view[pos : pos + length]).decode("ascii", "replace").rstrip("\x00 ").strip()
    return pos + length


def _skip_items(view: memoryview, pos: int, implicit: bool, little: bool, depth: int, owner: tuple[int, int]) -> int:
    if depth > _MAX_DEPTH:
        raise DicomInputError(f"sequences nested deeper than {_MAX_DEPTH} levels")
    end = len(view)
    fmt = "<HHI" if little else ">HHI"
    where = f"({owner[0]:04X},{owner[1]:04X})"
    while True:
        if end - pos < 8:
            raise DicomInputError(f"truncated: {where} of undefined length ends before its delimiter")
        group, elem, length = struct.unpack_from(fmt, view, pos)
        tag = group << 16 | elem
        pos += 8
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise DicomInputError(f"{where}: expected an item, found ({group:04X},{elem:04X}) at byte {pos - 8}")
        if length == _UNDEFINED:
            pos = _walk_dataset(view, pos, implicit, little, depth, None, in_item=True)
        elif length > end - pos:
            raise DicomInputError(f"truncated: an item of {where} declares {length} bytes but {end - pos} remain")
        else:
            pos += length


def file_meta_bytes(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    implementation_class_uid: str,
    implementation_version_name: str | None = None,
    source_ae_title: str | None = None,
) -> bytes:
    """The 128-byte preamble, ``DICM`` and an explicit VR little endian File Meta Information group.

    Raises:
        DicomInputError: a value cannot be encoded (not ASCII, or too long for its VR).
    """
    elements = [
        _meta_element(0x0001, b"OB", b"\x00\x01"),
        _meta_element(0x0002, b"UI", _padded(sop_class_uid, b"\x00", 64, "MediaStorageSOPClassUID")),
        _meta_element(0x0003, b"UI", _padded(sop_instance_uid, b"\x00", 64, "MediaStorageSOPInstanceUID")),
        _meta_element(0x0010, b"UI", _padded(transfer_syntax_uid, b"\x00", 64, "TransferSyntaxUID")),
        _meta_element(0x0012, b"UI", _padded(implementation_class_uid, b"\x00", 64, "ImplementationClassUID")),
    ]
    if implementation_version_name:
        elements.append(
            _meta_element(0x0013, b"SH", _padded(implementation_version_name, b" ", 16, "ImplementationVersionName"))
        )
    if source_ae_title:
        elements.append(
            _meta_element(0x0016, b"AE", _padded(source_ae_title, b" ", 16, "SourceApplicationEntityTitle"))
        )
    body = b"".join(elements)
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body


def _padded(value: str, pad: bytes, max_len: int, keyword: str) -> bytes:
    try:
        raw = value.encode("ascii")
    except UnicodeEncodeError as exc:
        raise DicomInputError(f"{value[:70]!r} is not ASCII", field=keyword) from exc
    if len(raw) > max_len:
        raise DicomInputError(f"{len(raw)} characters, at most {max_len} allowed", field=keyword)
    return raw + pad if len(raw) % 2 else raw


def _meta_element(elem: int, vr: bytes, value: bytes) -> bytes:
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHI", 0x0002, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, elem, vr, len(value)) + value
