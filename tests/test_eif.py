"""EIF format: layout and CRC as specified, PCRs computed independently, corruption refused."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import struct
import zlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclavekit.eif import (
    SectionType,
    describe_eif,
    read_eif,
    signature_section,
    write_eif,
)
from enclavekit.errors import EifFormatError, InvalidInput

KERNEL = b"K" * 100 + b"kernel-end"
CMDLINE = b"reboot=k panic=30 pci=off nomodules console=ttyS0"
RAMDISKS = [b"bootstrap ramdisk " * 5, b"customer ramdisk " * 7]
METADATA = {
    "ImageName": "unit",
    "ImageVersion": "1",
    "BuildMetadata": {"BuildTime": "1970-01-01T00:00:00+00:00", "BuildTool": "test"},
    "DockerInfo": None,
}


def _pcr(*parts: bytes) -> str:
    return hashlib.sha384(b"\0" * 48 + hashlib.sha384(b"".join(parts)).digest()).hexdigest()


def _parse(data: bytes) -> tuple[tuple, list[tuple[int, int, int, bytes]]]:
    """Independent reading of header and sections with struct (no enclavekit code)."""
    header = struct.unpack(">4sHHQQHH32Q32QII", data[:548])
    num = header[6]
    sections = []
    for i in range(num):
        off = header[7 + i]
        stype, flags, size = struct.unpack(">HHQ", data[off : off + 12])
        sections.append((stype, flags, size, data[off + 12 : off + 12 + size]))
    return header, sections


def _fix_crc(data: bytes | bytearray) -> bytes:
    data = bytearray(data)
    crc = zlib.crc32(bytes(data[:544]) + bytes(data[548:]))
    data[544:548] = struct.pack(">I", crc)
    return bytes(data)


@pytest.fixture(scope="module")
def eif() -> bytes:
    return write_eif(kernel=KERNEL, cmdline=CMDLINE, ramdisks=RAMDISKS, metadata=METADATA)


def test_layout_matches_the_specification(eif: bytes) -> None:
    header, sections = _parse(eif)
    magic, version, flags, mem, cpus, reserved, num = header[:7]
    assert (magic, version, flags, mem, cpus, reserved, num) == (b".eif", 4, 0, 1 << 30, 2, 0, 5)
    assert [s[0] for s in sections] == [1, 2, 5, 3, 3]  # kernel, cmdline, metadata, ramdisks
    assert [s[3] for s in sections][:2] == [KERNEL, CMDLINE]
    assert [s[3] for s in sections][3:] == RAMDISKS
    assert json.loads(sections[2][3]) == METADATA
    assert b" " not in sections[2][3]  # compact like serde_json::to_vec
    offsets, sizes = header[7:39], header[39:71]
    assert offsets[0] == 548
    for i in range(1, 5):
        assert offsets[i] == offsets[i - 1] + 12 + sizes[i - 1]
    assert offsets[5:] == (0,) * 27 and sizes[5:] == (0,) * 27
    assert header[71] == 0
    assert header[72] == zlib.crc32(eif[:544] + eif[548:])


def test_read_round_trip_and_measurements(eif: bytes) -> None:
    image = read_eif(eif)
    assert image.version == 4 and image.arch == "x86_64" and image.crc_ok
    assert image.kernel == KERNEL and image.cmdline == CMDLINE and image.ramdisks == RAMDISKS
    assert image.metadata == METADATA and image.signature is None
    assert [s.section_type for s in image.sections] == [
        SectionType.KERNEL,
        SectionType.CMDLINE,
        SectionType.METADATA,
        SectionType.RAMDISK,
        SectionType.RAMDISK,
    ]
    m = image.measurements
    assert m.pcr0.hex() == _pcr(KERNEL, CMDLINE, *RAMDISKS)
    assert m.pcr1.hex() == _pcr(KERNEL, CMDLINE, RAMDISKS[0])
    assert m.pcr2.hex() == _pcr(RAMDISKS[1])
    assert m.pcr8 is None


def test_metadata_is_not_measured_and_arch_flag() -> None:
    other = dict(METADATA, ImageName="renamed")
    a = read_eif(write_eif(kernel=KERNEL, cmdline=CMDLINE, ramdisks=RAMDISKS, metadata=METADATA))
    b = read_eif(
        write_eif(kernel=KERNEL, cmdline=CMDLINE, ramdisks=RAMDISKS, metadata=other, arch="aarch64")
    )
    assert a.measurements == b.measurements
    assert b.arch == "aarch64" and b.flags == 1


def test_read_from_path_and_describe(eif: bytes, tmp_path: Path) -> None:
    path = tmp_path / "x.eif"
    path.write_bytes(eif)
    out = describe_eif(path)
    assert list(out) == [
        "EifVersion",
        "Measurements",
        "IsSigned",
        "CheckCRC",
        "ImageName",
        "ImageVersion",
        "Metadata",
    ]
    assert out["Measurements"]["PCR0"] == _pcr(KERNEL, CMDLINE, *RAMDISKS)
    assert out["Measurements"]["HashAlgorithm"] == "Sha384 { ... }"
    assert out["IsSigned"] is False and out["CheckCRC"] is True
    assert out["Metadata"]["BuildTool"] == "test" and out["Metadata"]["DockerInfo"] is None
    with pytest.raises(InvalidInput, match="cannot be read"):
        read_eif(tmp_path / "missing.eif")


# ------------------------------------------------------------------------------ corruption


def _expect(data: bytes, pattern: str) -> None:
    with pytest.raises(EifFormatError, match=pattern):
        read_eif(data)


def test_bad_magic_and_version(eif: bytes) -> None:
    _expect(b"MZ\x90\x00" + eif[4:], r"not an EIF: magic at offset 0 is 4d5a9000")
    _expect(_fix_crc(eif[:4] + b"\x00\x05" + eif[6:]), r"version at offset 4 is 5, expected 2..4")
    _expect(eif[:6] + b"\x00\x02" + eif[8:], r"flags at offset 6 is 0x0002")


def test_num_sections_bounds(eif: bytes) -> None:
    for num in (0, 1, 33, 0xFFFF):
        bad = eif[:26] + struct.pack(">H", num) + eif[28:]
        _expect(bad, rf"num_sections at offset 26 is {num}, expected 2..32")
    bad = eif[:26] + struct.pack(">H", 4) + eif[28:]
    _expect(bad, r"section table entry 4 is set but num_sections is 4")


def test_section_table_mismatch(eif: bytes) -> None:
    table = bytearray(eif)
    struct.pack_into(">Q", table, 0x1C + 8 * 2, 999)
    _expect(bytes(table), r"section 2: table offset is 999, but the previous section ends at")
    sizes = bytearray(eif)
    struct.pack_into(">Q", sizes, 0x11C + 8 * 1, len(CMDLINE) + 1)
    n = len(CMDLINE)
    _expect(
        bytes(sizes),
        rf"section 1 at offset {548 + 12 + len(KERNEL)}: size in section header is {n}, "
        rf"section table says {n + 1}",
    )


def test_bogus_section_types(eif: bytes) -> None:
    first = 548
    for stype, word in ((0, "invalid"), (6, "unknown"), (0xFFFF, "unknown")):
        bad = bytearray(eif)
        struct.pack_into(">H", bad, first, stype)
        _expect(bytes(bad), rf"section 0 at offset 548: {word} section type {stype}")
    bad = bytearray(eif)
    struct.pack_into(">H", bad, first + 2, 1)
    _expect(bytes(bad), r"section 0 at offset 550: reserved section flags 0x0001")


def test_section_type_rules(eif: bytes) -> None:
    def retype(index: int, new: SectionType) -> bytes:
        bad = bytearray(eif)
        off = struct.unpack_from(">Q", bad, 0x1C + 8 * index)[0]
        struct.pack_into(">H", bad, off, int(new))
        return bytes(bad)

    _expect(
        retype(1, SectionType.KERNEL),
        r"expected exactly one kernel section, found 2 \(sections 0, 1\)",
    )
    _expect(retype(1, SectionType.RAMDISK), r"expected exactly one cmdline section, found 0")
    _expect(retype(2, SectionType.RAMDISK), r"version 4 requires a metadata section, found none")
    _expect(retype(0, SectionType.RAMDISK), r"expected exactly one kernel section, found 0")
    _expect(retype(4, SectionType.METADATA), r"expected at most one metadata section, found 2")
    no_ramdisk = write_eif(kernel=KERNEL, cmdline=CMDLINE, ramdisks=[b"x"], metadata=METADATA)
    bad = bytearray(no_ramdisk)
    off = struct.unpack_from(">Q", bad, 0x1C + 8 * 3)[0]
    struct.pack_into(">H", bad, off, int(SectionType.CMDLINE))
    with pytest.raises(EifFormatError, match="exactly one cmdline section, found 2"):
        read_eif(bytes(bad))
    # A ramdisk placed before the kernel: swap the first two sections' types.
    swapped = bytearray(retype(0, SectionType.RAMDISK))
    cmd_off = struct.unpack_from(">Q", swapped, 0x1C + 8 * 1)[0]
    struct.pack_into(">H", swapped, cmd_off, int(SectionType.KERNEL))
    meta_off = struct.unpack_from(">Q", swapped, 0x1C + 8 * 2)[0]
    struct.pack_into(">H", swapped, meta_off, int(SectionType.CMDLINE))
    _expect(bytes(swapped), r"section 0 \(ramdisk\) comes before the kernel \(section 1\)")


def test_bad_metadata(eif: bytes) -> None:
    def with_meta(raw: bytes) -> bytes:
        return _rebuild_meta(eif, raw)

    meta_offset = 548 + 12 + len(KERNEL) + 12 + len(CMDLINE)
    _expect(
        with_meta(b"{not json"),
        rf"section 2 \(metadata\) at offset {meta_offset}: not UTF-8 JSON",
    )
    _expect(with_meta(b"\xff\xfe"), r"section 2 \(metadata\).*not UTF-8 JSON")
    _expect(with_meta(b"[1]"), r"section 2 \(metadata\).*expected a JSON object, found list")
    _expect(with_meta(b'{"ImageName":"x"}'), r"missing required key\(s\) ImageVersion")
    _expect(with_meta(b"[" * 100000), r"not UTF-8 JSON")


def _rebuild_meta(eif: bytes, raw: bytes) -> bytes:
    """The same file with the metadata section's data replaced (table and CRC fixed)."""
    header, sections = _parse(eif)
    parts = [(s[0], raw if s[0] == 5 else s[3]) for s in sections]
    body = b""
    offsets, sizes = [], []
    pos = 548
    for stype, data in parts:
        offsets.append(pos)
        sizes.append(len(data))
        body += struct.pack(">HHQ", stype, 0, len(data)) + data
        pos += 12 + len(data)
    head = struct.pack(
        ">4sHHQQHH32Q32QII",
        *header[:6],
        len(parts),
        *(offsets + [0] * (32 - len(parts))),
        *(sizes + [0] * (32 - len(parts))),
        0,
        0,
    )
    return _fix_crc(head + body)


def test_truncation_at_many_offsets(eif: bytes) -> None:
    header, _ = _parse(eif)
    cuts = {0, 1, 4, 100, 543, 547, 548, 549, 559, 560, len(eif) - 1}
    cuts |= {o for o in header[7:12]} | {o + 12 for o in header[7:12]}
    cuts |= set(range(0, len(eif), 37))
    for cut in sorted(c for c in cuts if c < len(eif)):
        with pytest.raises(EifFormatError) as info:
            read_eif(eif[:cut])
        message = str(info.value)
        assert "\n" not in message
        assert "offset" in message or "truncated" in message, message


def test_trailing_bytes_refused(eif: bytes) -> None:
    _expect(eif + b"\0", rf"1 unexpected bytes after the last section \(offset {len(eif)}\)")


def test_flipped_data_byte_gives_crc_false(eif: bytes) -> None:
    for pos in (548 + 12 + 5, len(eif) - 3, 0x21C):  # kernel data, last ramdisk, unused word
        bad = bytearray(eif)
        bad[pos] ^= 0x01
        image = read_eif(bytes(bad))
        assert image.crc_ok is False
        with pytest.raises(EifFormatError, match=r"CRC mismatch: header at offset 544 says"):
            read_eif(bytes(bad), verify_crc=True)
    bad = bytearray(eif)
    bad[545] ^= 0xFF
    assert read_eif(bytes(bad)).crc_ok is False
    assert describe_eif(bytes(bad))["CheckCRC"] is False


def test_corrupt_measured_byte_changes_pcrs(eif: bytes) -> None:
    bad = bytearray(eif)
    bad[len(eif) - 1] ^= 0x01  # last byte of the customer ramdisk
    a, b = read_eif(eif).measurements, read_eif(bytes(bad)).measurements
    assert a.pcr1 == b.pcr1 and a.pcr0 != b.pcr0 and a.pcr2 != b.pcr2


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_only_raise_eif_format_error(data: bytes) -> None:
    try:
        read_eif(data)
    except EifFormatError as exc:
        assert "\n" not in str(exc)


_VALID = write_eif(kernel=KERNEL, cmdline=CMDLINE, ramdisks=RAMDISKS, metadata=METADATA)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), min_size=1, max_size=6
    ),
    st.integers(0, len(_VALID)),
)
def test_mutated_eifs_only_raise_eif_format_error(edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(_VALID)
    for pos, value in edits:
        data[pos] = value
    for candidate in (bytes(data), bytes(data[:cut]), _fix_crc(data)):
        try:
            image = read_eif(candidate)
        except EifFormatError as exc:
            assert "\n" not in str(exc)
        else:
            assert len(image.measurements.pcr0) == 48


# ---------------------------------------------------------------------------------- signing


def _self_signed(curve: ec.EllipticCurve) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(curve)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "enclavekit test signer")])
    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=3650))
        .sign(key, hashes.SHA384())
    )
    return key, cert.public_bytes(Encoding.PEM)


@pytest.fixture(scope="module")
def signer() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    return _self_signed(ec.SECP384R1())


def test_signed_image_pcr8_and_signature_check(
    eif: bytes, signer: tuple[ec.EllipticCurvePrivateKey, bytes]
) -> None:
    key, pem = signer
    pcr0 = read_eif(eif).measurements.pcr0
    sig = signature_section(pcr0, pem, key)
    signed = write_eif(
        kernel=KERNEL, cmdline=CMDLINE, ramdisks=RAMDISKS, metadata=METADATA, signature=sig
    )
    image = read_eif(signed)
    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    assert image.measurements.pcr0 == pcr0  # the signature section is not measured
    assert image.measurements.pcr8 is not None
    assert image.measurements.pcr8.hex() == _pcr(der)
    assert image.sections[-1].section_type == SectionType.SIGNATURE
    out = describe_eif(signed)
    assert out["IsSigned"] is True and out["SignatureCheck"] is True
    assert out["Measurements"]["PCR8"] == _pcr(der)
    assert out["SigningCertificate"]["IssuerName"] == {"commonName": "enclavekit test signer"}
    assert out["SigningCertificate"]["Algorithm"] == "ecdsa-with-SHA384"
    assert list(out).index("SigningCertificate") < list(out).index("CheckCRC")

    # Signature made for another PCR0 (e.g. copied from another image) does not check.
    other = signature_section(b"\x11" * 48, pem, key)
    moved = write_eif(
        kernel=KERNEL, cmdline=CMDLINE, ramdisks=RAMDISKS, metadata=METADATA, signature=other
    )
    assert describe_eif(moved)["SignatureCheck"] is False
    # A key that does not match the certificate is refused up front.
    wrong, _ = _self_signed(ec.SECP384R1())
    with pytest.raises(InvalidInput, match="does not match the public key"):
        signature_section(pcr0, pem, wrong)


def test_garbage_signature_section(eif: bytes) -> None:
    bad = write_eif(
        kernel=KERNEL, cmdline=CMDLINE, ramdisks=RAMDISKS, metadata=METADATA, signature=b"\xff"
    )
    _expect(bad, r"section 5 \(signature\) at offset \d+: signature is not valid CBOR")
