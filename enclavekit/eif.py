"""Enclave Image File (EIF): write, read, check and measure, as nitro-cli does.

Why: the PCRs that KMS key policies name are computed from an EIF, so we must read real EIFs
(built by nitro-cli) and write ones nitro-cli would accept, and refuse anything malformed with a
message saying what is wrong and where. Facts (docs/reference/nitro-attestation-nsm-eif.md §4,
from aws-nitro-enclaves-image-format): a 548-byte big-endian header (magic ``.eif``, version 4,
flags bit0 = aarch64, default mem/cpus, ``num_sections``, 32 section offsets, 32 section sizes,
an unused word, CRC-32), then per section a 12-byte header (u16 type, u16 flags, u64 size) and its
data. CRC-32/ISO-HDLC (zlib) covers the file in order except the 4-byte CRC field itself.
Sections are written kernel, cmdline, metadata, ramdisks, [signature].
"""

from __future__ import annotations

import enum
import json
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclavekit.errors import EifFormatError, InvalidInput, os_reason
from enclavekit.pcr import HASH_ALGORITHM, Measurements, pcr8_of_certificate, pcr_of_content

MAGIC = b".eif"
CURRENT_VERSION = 4
MIN_VERSION = 2
MAX_NUM_SECTIONS = 32
HEADER_SIZE = 548
SECTION_HEADER_SIZE = 12
CRC_OFFSET = 0x220
ARCH_ARM64_FLAG = 0x1
DEFAULT_MEM = 1 << 30
DEFAULT_CPUS = 2
SIGNATURE_MAX_SIZE = 32768
REQUIRED_METADATA_KEYS = ("ImageName", "ImageVersion", "BuildMetadata", "DockerInfo")

_HEADER = struct.Struct(">4sHHQQHH32Q32QII")
_SECTION_HEADER = struct.Struct(">HHQ")
assert _HEADER.size == HEADER_SIZE and _SECTION_HEADER.size == SECTION_HEADER_SIZE


class SectionType(enum.IntEnum):
    """EIF section types (value 0 is invalid, >= 6 unknown)."""

    INVALID = 0
    KERNEL = 1
    CMDLINE = 2
    RAMDISK = 3
    SIGNATURE = 4
    METADATA = 5


@dataclass(frozen=True)
class EifSection:
    """One section as found in the file: its header offset, type, flags and data."""

    index: int
    section_type: SectionType
    offset: int
    size: int
    flags: int = 0
    data: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class EifImage:
    """A parsed, structurally valid EIF with its measurements."""

    version: int
    flags: int
    arch: str
    sections: list[EifSection]
    kernel: bytes = field(repr=False)
    cmdline: bytes
    ramdisks: list[bytes] = field(repr=False)
    metadata: dict[str, Any] | None
    signature: bytes | None = field(repr=False)
    crc_ok: bool
    measurements: Measurements
    crc_stored: int = 0
    crc_computed: int = 0
    signing_certificate: bytes | None = field(default=None, repr=False)  # PEM, as stored

    @property
    def is_signed(self) -> bool:
        return self.signature is not None


# ---------------------------------------------------------------------------------------- write


def _check_metadata(metadata: object, where: str) -> dict[str, Any]:
    if not isinstance(metadata, dict):
        raise EifFormatError(f"{where}: expected a JSON object, found {type(metadata).__name__}")
    missing = [k for k in REQUIRED_METADATA_KEYS if k not in metadata]
    if missing:
        raise EifFormatError(f"{where}: missing required key(s) {', '.join(missing)}")
    for key in ("ImageName", "ImageVersion"):
        if not isinstance(metadata[key], str):
            raise EifFormatError(
                f"{where}: {key} must be a string, found {type(metadata[key]).__name__}"
            )
    if not isinstance(metadata["BuildMetadata"], dict):
        raise EifFormatError(f"{where}: BuildMetadata must be a JSON object")
    return metadata


def encode_metadata(metadata: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON like serde_json::to_vec (key order as given)."""
    return json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def write_eif(
    *,
    kernel: bytes,
    cmdline: bytes | str,
    ramdisks: Sequence[bytes],
    metadata: dict[str, Any],
    arch: str = "x86_64",
    signature: bytes | None = None,
) -> bytes:
    """EIF bytes in nitro-cli's section order: kernel, cmdline, metadata, ramdisks, signature."""
    if arch not in ("x86_64", "aarch64"):
        raise InvalidInput(f"EIF arch: expected 'x86_64' or 'aarch64', found {arch!r}")
    if isinstance(cmdline, str):
        cmdline = cmdline.encode("utf-8")
    if not ramdisks:
        raise InvalidInput("EIF ramdisks: expected at least one ramdisk, found none")
    if not kernel:
        raise InvalidInput("EIF kernel: expected a non-empty kernel image, found 0 bytes")
    meta = encode_metadata(_check_metadata(metadata, "EIF metadata"))
    sections: list[tuple[SectionType, bytes]] = [
        (SectionType.KERNEL, bytes(kernel)),
        (SectionType.CMDLINE, bytes(cmdline)),
        (SectionType.METADATA, meta),
        *((SectionType.RAMDISK, bytes(r)) for r in ramdisks),
    ]
    if signature is not None:
        if len(signature) > SIGNATURE_MAX_SIZE:
            raise InvalidInput(
                f"EIF signature: expected at most {SIGNATURE_MAX_SIZE} bytes, "
                f"found {len(signature)}"
            )
        sections.append((SectionType.SIGNATURE, bytes(signature)))
    if len(sections) > MAX_NUM_SECTIONS:
        raise InvalidInput(
            f"EIF sections: expected at most {MAX_NUM_SECTIONS}, found {len(sections)}"
        )
    offsets = [0] * MAX_NUM_SECTIONS
    sizes = [0] * MAX_NUM_SECTIONS
    body: list[bytes] = []
    pos = HEADER_SIZE
    for i, (kind, data) in enumerate(sections):
        offsets[i] = pos
        sizes[i] = len(data)
        body += (_SECTION_HEADER.pack(int(kind), 0, len(data)), data)
        pos += SECTION_HEADER_SIZE + len(data)
    flags = ARCH_ARM64_FLAG if arch == "aarch64" else 0
    header = _HEADER.pack(
        MAGIC,
        CURRENT_VERSION,
        flags,
        DEFAULT_MEM,
        DEFAULT_CPUS,
        0,
        len(sections),
        *offsets,
        *sizes,
        0,
        0,
    )
    crc = zlib.crc32(header[:CRC_OFFSET])
    for part in body:
        crc = zlib.crc32(part, crc)
    return b"".join((header[:CRC_OFFSET], struct.pack(">I", crc), *body))


def compute_crc(data: bytes) -> int:
    """CRC-32 of an EIF: the whole file except the 4-byte CRC field, in file order."""
    view = memoryview(data)
    return zlib.crc32(view[HEADER_SIZE:], zlib.crc32(view[:CRC_OFFSET]))


# ----------------------------------------------------------------------------------------- read


def _load(source: str | Path | bytes | bytearray | memoryview) -> tuple[bytes, str]:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), "EIF"
    path = Path(source)
    try:
        return path.read_bytes(), f"EIF {path}"
    except OSError as exc:
        raise InvalidInput(f"EIF file {path}: cannot be read ({os_reason(exc)})") from None


def _parse_signature(data: bytes, where: str) -> tuple[bytes, bytes]:
    """(PEM certificate bytes, COSE_Sign1 bytes) from a signature section (§4.5)."""
    import cbor2

    try:
        decoded = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types on garbage; all mean "not CBOR"
        raise EifFormatError(
            f"{where}: signature is not valid CBOR ({type(exc).__name__})"
        ) from None
    if not isinstance(decoded, list) or not decoded or not isinstance(decoded[0], dict):
        raise EifFormatError(f"{where}: signature must be a CBOR array of PcrSignature maps")
    first = decoded[0]
    out = []
    for key in ("signing_certificate", "signature"):
        value = first.get(key)
        if isinstance(value, bytes):
            out.append(value)
        elif isinstance(value, list) and all(isinstance(b, int) and 0 <= b <= 255 for b in value):
            out.append(bytes(value))
        else:
            raise EifFormatError(f"{where}: signature entry 0 lacks {key} as an array of bytes")
    return out[0], out[1]


def read_eif(
    source: str | Path | bytes | bytearray | memoryview, *, verify_crc: bool = False
) -> EifImage:
    """Parse and check an EIF; raise ``EifFormatError`` with what is wrong and where.

    A CRC mismatch is reported in ``crc_ok`` (like nitro-cli's describe-eif ``CheckCRC``) unless
    ``verify_crc`` asks for it to be an error.
    """
    data, name = _load(source)
    if len(data) < HEADER_SIZE:
        raise EifFormatError(
            f"{name}: truncated header: expected {HEADER_SIZE} bytes, file has {len(data)}"
        )
    fields = _HEADER.unpack_from(data, 0)
    magic, version, flags, _mem, _cpus, _reserved, num = fields[:7]
    offsets = fields[7 : 7 + MAX_NUM_SECTIONS]
    sizes = fields[7 + MAX_NUM_SECTIONS : 7 + 2 * MAX_NUM_SECTIONS]
    crc_stored = fields[-1]
    if magic != MAGIC:
        raise EifFormatError(
            f"{name}: not an EIF: magic at offset 0 is {magic.hex()}, expected 2e656966 ('.eif')"
        )
    if not MIN_VERSION <= version <= CURRENT_VERSION:
        raise EifFormatError(
            f"{name}: version at offset 4 is {version}, expected {MIN_VERSION}..{CURRENT_VERSION}"
        )
    if flags & ~ARCH_ARM64_FLAG:
        raise EifFormatError(
            f"{name}: flags at offset 6 is {flags:#06x}, only bit 0 (aarch64) is defined"
        )
    if not 2 <= num <= MAX_NUM_SECTIONS:
        raise EifFormatError(
            f"{name}: num_sections at offset 26 is {num}, expected 2..{MAX_NUM_SECTIONS}"
        )
    for i in range(num, MAX_NUM_SECTIONS):
        if offsets[i] or sizes[i]:
            raise EifFormatError(
                f"{name}: section table entry {i} is set but num_sections is {num} "
                f"(offset {offsets[i]}, size {sizes[i]})"
            )

    sections: list[EifSection] = []
    pos = HEADER_SIZE
    for i in range(num):
        if offsets[i] != pos:
            raise EifFormatError(
                f"{name}: section {i}: table offset is {offsets[i]}, but the previous section "
                f"ends at {pos}"
            )
        if pos + SECTION_HEADER_SIZE > len(data):
            raise EifFormatError(
                f"{name}: section {i}: truncated section header at offset {pos} "
                f"(file has {len(data)} bytes)"
            )
        stype, sflags, ssize = _SECTION_HEADER.unpack_from(data, pos)
        if stype == SectionType.INVALID or stype > SectionType.METADATA:
            what = "invalid" if stype == 0 else "unknown"
            raise EifFormatError(
                f"{name}: section {i} at offset {pos}: {what} section type {stype} (expected 1..5)"
            )
        if sflags != 0:
            raise EifFormatError(
                f"{name}: section {i} at offset {pos + 2}: reserved section flags {sflags:#06x}"
            )
        if ssize != sizes[i]:
            raise EifFormatError(
                f"{name}: section {i} at offset {pos}: size in section header is {ssize}, "
                f"section table says {sizes[i]}"
            )
        start = pos + SECTION_HEADER_SIZE
        if start + ssize > len(data):
            raise EifFormatError(
                f"{name}: section {i} ({SectionType(stype).name.lower()}) at offset {pos}: "
                f"data of {ssize} bytes runs past the end of the file ({len(data)} bytes)"
            )
        sections.append(
            EifSection(i, SectionType(stype), pos, ssize, sflags, data[start : start + ssize])
        )
        pos = start + ssize
    if pos != len(data):
        raise EifFormatError(
            f"{name}: {len(data) - pos} unexpected bytes after the last section (offset {pos})"
        )

    def of_type(kind: SectionType) -> list[EifSection]:
        return [s for s in sections if s.section_type == kind]

    kernels, cmdlines = of_type(SectionType.KERNEL), of_type(SectionType.CMDLINE)
    ramdisks, metas = of_type(SectionType.RAMDISK), of_type(SectionType.METADATA)
    sigs = of_type(SectionType.SIGNATURE)
    for kind, found in (("kernel", kernels), ("cmdline", cmdlines)):
        if len(found) != 1:
            where = ", ".join(str(s.index) for s in found) or "none"
            raise EifFormatError(
                f"{name}: expected exactly one {kind} section, found {len(found)} "
                f"(sections {where})"
            )
    if not ramdisks:
        raise EifFormatError(f"{name}: expected at least one ramdisk section, found none")
    for r in ramdisks:
        if r.index < kernels[0].index:
            raise EifFormatError(
                f"{name}: section {r.index} (ramdisk) comes before the kernel "
                f"(section {kernels[0].index}); ramdisks must follow it"
            )
    if len(metas) > 1 or len(sigs) > 1:
        kind, found = ("metadata", metas) if len(metas) > 1 else ("signature", sigs)
        raise EifFormatError(
            f"{name}: expected at most one {kind} section, found {len(found)} "
            f"(sections {', '.join(str(s.index) for s in found)})"
        )
    if version >= 4 and not metas:
        raise EifFormatError(f"{name}: version {version} requires a metadata section, found none")
    if version < 4 and metas:
        raise EifFormatError(f"{name}: section {metas[0].index}: metadata needs version 4")
    if version < 3 and sigs:
        raise EifFormatError(f"{name}: section {sigs[0].index}: signature needs version >= 3")

    metadata: dict[str, Any] | None = None
    if metas:
        where = f"{name}: section {metas[0].index} (metadata) at offset {metas[0].offset}"
        try:
            parsed = json.loads(metas[0].data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            msg = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
            raise EifFormatError(f"{where}: not UTF-8 JSON ({msg})") from None
        metadata = _check_metadata(parsed, where)

    signature = cert_pem = None
    pcr8 = None
    if sigs:
        where = f"{name}: section {sigs[0].index} (signature) at offset {sigs[0].offset}"
        if sigs[0].size > SIGNATURE_MAX_SIZE:
            raise EifFormatError(
                f"{where}: {sigs[0].size} bytes, expected at most {SIGNATURE_MAX_SIZE}"
            )
        signature = sigs[0].data
        cert_pem, _cose = _parse_signature(signature, where)
        try:
            pcr8 = pcr8_of_certificate(cert_pem)
        except InvalidInput as exc:
            raise EifFormatError(f"{where}: {exc}") from None

    first, rest = ramdisks[0], ramdisks[1:]
    measured = [
        s
        for s in sections
        if s.section_type in (SectionType.KERNEL, SectionType.CMDLINE, SectionType.RAMDISK)
    ]
    boot = [s for s in measured if s.section_type != SectionType.RAMDISK or s is first]
    measurements = Measurements(
        pcr_of_content(*(s.data for s in measured)),
        pcr_of_content(*(s.data for s in boot)),
        pcr_of_content(*(s.data for s in rest)),
        pcr8,
    )
    crc_computed = compute_crc(data)
    if verify_crc and crc_computed != crc_stored:
        raise EifFormatError(
            f"{name}: CRC mismatch: header at offset {CRC_OFFSET} says {crc_stored:08x}, "
            f"file content gives {crc_computed:08x}"
        )
    return EifImage(
        version=version,
        flags=flags,
        arch="aarch64" if flags & ARCH_ARM64_FLAG else "x86_64",
        sections=sections,
        kernel=kernels[0].data,
        cmdline=cmdlines[0].data,
        ramdisks=[r.data for r in ramdisks],
        metadata=metadata,
        signature=signature,
        crc_ok=crc_computed == crc_stored,
        measurements=measurements,
        crc_stored=crc_stored,
        crc_computed=crc_computed,
        signing_certificate=cert_pem,
    )


# ------------------------------------------------------------------------------------- describe


def describe_image(image: EifImage) -> dict[str, Any]:
    """nitro-cli describe-eif JSON for an already parsed image."""
    out: dict[str, Any] = {
        "EifVersion": image.version,
        "Measurements": image.measurements.to_nitro_cli(),
        "IsSigned": image.is_signed,
    }
    if image.signing_certificate is not None:
        out["SigningCertificate"] = certificate_info(image.signing_certificate)
    out["CheckCRC"] = image.crc_ok
    if image.is_signed:
        out["SignatureCheck"] = check_signature(image)
    if image.metadata is not None:
        meta = image.metadata
        out["ImageName"] = meta["ImageName"]
        out["ImageVersion"] = meta["ImageVersion"]
        build = meta.get("BuildMetadata") or {}
        described: dict[str, Any] = {
            "BuildTime": build.get("BuildTime", ""),
            "BuildTool": build.get("BuildTool", ""),
            "BuildToolVersion": build.get("BuildToolVersion", ""),
            "OperatingSystem": build.get("OperatingSystem", ""),
            "KernelVersion": build.get("KernelVersion", ""),
            "DockerInfo": meta.get("DockerInfo"),
        }
        custom = meta.get("CustomMetadata")
        if isinstance(custom, dict):  # nitro-cli flattens CustomMetadata into Metadata
            described.update(custom)
        out["Metadata"] = described
    return out


def describe_eif(source: str | Path | bytes | bytearray | memoryview) -> dict[str, Any]:
    """The keys ``nitro-cli describe-eif`` prints, for the EIF at ``source``."""
    return describe_image(read_eif(source))


# -------------------------------------------------------------------------------------- signing
# Signature section (§4.5): CBOR [{"signing_certificate": [PEM bytes as uints],
# "signature": [untagged COSE_Sign1 bytes as uints]}]; the COSE payload is the CBOR of
# PcrInfo {"register_index": 0, "register_value": [PCR0 as 48 uints]}.

_CURVES = {
    "secp256r1": (-7, "SHA256", 32),
    "secp384r1": (-35, "SHA384", 48),
    "secp521r1": (-36, "SHA512", 66),
}
_ALGS = {alg: (hname, size) for alg, hname, size in _CURVES.values()}


def pcr_info_payload(pcr0: bytes) -> bytes:
    """serde_cbor bytes of PcrInfo(0, PCR0): the payload an EIF signature signs."""
    import cbor2

    return cbor2.dumps({"register_index": 0, "register_value": list(pcr0)})


def signature_section(pcr0: bytes, certificate_pem: bytes, private_key: Any) -> bytes:
    """Signature section content for an image with ``pcr0``, signed with an ECDSA key."""
    import cbor2
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    from enclavekit.pcr import certificate_der

    if not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise InvalidInput(
            f"signing key: expected an ECDSA private key (nitro-cli signs with ECDSA only), "
            f"found {type(private_key).__name__}"
        )
    curve = private_key.curve.name
    if curve not in _CURVES:
        raise InvalidInput(f"signing key: expected curve P-256/P-384/P-521, found {curve}")
    from cryptography import x509

    cert = x509.load_der_x509_certificate(certificate_der(certificate_pem))
    if cert.public_key() != private_key.public_key():
        raise InvalidInput("signing key: does not match the public key of the signing certificate")
    alg, hname, size = _CURVES[curve]
    protected = cbor2.dumps({1: alg})
    payload = pcr_info_payload(pcr0)
    to_sign = cbor2.dumps(["Signature1", protected, b"", payload])
    r, s = decode_dss_signature(private_key.sign(to_sign, ec.ECDSA(getattr(hashes, hname)())))
    cose = cbor2.dumps([protected, {}, payload, r.to_bytes(size, "big") + s.to_bytes(size, "big")])
    pem = certificate_pem if isinstance(certificate_pem, bytes) else certificate_pem.encode()
    return cbor2.dumps([{"signing_certificate": list(pem), "signature": list(cose)}])


def check_signature(image: EifImage) -> bool:
    """describe-eif's SignatureCheck: the COSE signature verifies and signs this PCR0."""
    import cbor2
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    from enclavekit.pcr import certificate_der

    if image.signature is None or image.signing_certificate is None:
        return False
    try:
        _cert, cose_bytes = _parse_signature(image.signature, "signature")
        cose = cbor2.loads(cose_bytes)
        if isinstance(cose, cbor2.CBORTag) and cose.tag == 18:
            cose = cose.value
        protected, _unprotected, payload, sig = cose
        alg = cbor2.loads(protected).get(1)
        hname, size = _ALGS[alg]
        if len(sig) != 2 * size or payload != pcr_info_payload(image.measurements.pcr0):
            return False
        key = x509.load_der_x509_certificate(
            certificate_der(image.signing_certificate)
        ).public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            return False
        der = encode_dss_signature(
            int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big")
        )
        key.verify(
            der,
            cbor2.dumps(["Signature1", protected, b"", payload]),
            ec.ECDSA(getattr(hashes, hname)()),
        )
        return True
    except (
        InvalidSignature,
        InvalidInput,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        cbor2.CBORDecodeError,
    ):
        return False


def certificate_info(certificate_pem: bytes) -> dict[str, Any]:
    """describe-eif's SigningCertificate object (issuer, algorithm, validity, signature)."""
    from cryptography import x509

    from enclavekit.pcr import certificate_der

    cert = x509.load_der_x509_certificate(certificate_der(certificate_pem))
    issuer = {
        getattr(attr.oid, "_name", attr.oid.dotted_string): str(attr.value) for attr in cert.issuer
    }
    algo = cert.signature_algorithm_oid
    return {
        "IssuerName": dict(sorted(issuer.items())),
        "Algorithm": getattr(algo, "_name", algo.dotted_string),
        "NotBefore": cert.not_valid_before_utc.strftime("%b %e %H:%M:%S %Y GMT"),
        "NotAfter": cert.not_valid_after_utc.strftime("%b %e %H:%M:%S %Y GMT"),
        "Signature": ":".join(f"{b:02X}" for b in cert.signature),
    }


__all__ = [
    "CURRENT_VERSION",
    "HASH_ALGORITHM",
    "HEADER_SIZE",
    "MAGIC",
    "SECTION_HEADER_SIZE",
    "EifImage",
    "EifSection",
    "SectionType",
    "check_signature",
    "compute_crc",
    "describe_eif",
    "describe_image",
    "encode_metadata",
    "pcr_info_payload",
    "read_eif",
    "signature_section",
    "write_eif",
]
