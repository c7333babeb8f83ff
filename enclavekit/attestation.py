"""Nitro attestation documents (COSE_Sign1 / ES384): encode, decode and verify to a trust anchor.

Follows docs/reference/nitro-attestation-nsm-eif.md §2: an untagged COSE_Sign1 (tag 18 accepted
too) whose protected header is `{1: -35}`, whose payload is the CBOR AttestationDocument map and
whose signature is the raw 96-byte r||s of ECDSA P-384/SHA-384 over the Sig_structure.
`verify` walks the cabundle from an explicit trust anchor to the leaf exactly as AWS's procedure
(§2.4) prescribes; there is never a fallback from one anchor to another.

Why cabundle[0] must be byte-identical to the anchor (rather than "any cert the anchor signed"):
the anchor *is* the root in AWS's procedure; every real document carries Root-G1 itself at
position 0, so accepting a different certificate there would only ever admit a re-issued or
cross-signed root whose other fields (validity, constraints) we never pinned.

Error split: bytes that are not a document at all -> `AttestationDecodeError` (CLI exit 2);
a readable document that does not verify -> `AttestationError` with the reason (CLI exit 1).

Vendored into the enclave image: stdlib, cbor2, cryptography and enclavekit.errors/pcr only.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.oid import ExtensionOID, SignatureAlgorithmOID

from enclavekit.errors import AttestationDecodeError, AttestationError, InvalidInput
from enclavekit.nsm import cbor_item
from enclavekit.pcr import Measurements, load_certificate

COSE_SIGN1_TAG = 18
PROTECTED_ES384 = b"\xa1\x01\x38\x22"  # {1: -35}
ES384_SIGNATURE_LEN = 96
MAX_PAYLOAD_LEN = 16384  # bstr .size (1..16384)
MAX_DOCUMENT_LEN = MAX_PAYLOAD_LEN + 256
FIELD_ORDER = (
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
)
_MANDATORY = FIELD_ORDER[:6]
_PCR_LENGTHS = (32, 48, 64)
_MAX_CERT = 1024
_MAX_USER_FIELD = 1024
_U64 = 2**64
_AWS_ROOT_RESOURCE = "aws_nitro_enclaves_root_g1.pem"
_CERT_ERRORS = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)
_ALLOWED_CRITICAL = {ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE}


def _field_error(name: str, expected: str, value: object) -> AttestationDecodeError:
    found = f"{len(value)} bytes" if isinstance(value, bytes) else _short(value)
    return AttestationDecodeError(
        f"attestation document {name}: expected {expected}, found {found}"
    )


def _short(value: object) -> str:
    if isinstance(value, (dict, list, tuple)):
        return f"{type(value).__name__} of {len(value)} entries"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_bstr(name: str, value: object, lo: int, hi: int, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, bytes) or not lo <= len(value) <= hi:
        what = f"a byte string of {lo}..{hi} bytes" + (" or null" if optional else "")
        raise _field_error(name, what, value)


@dataclass(frozen=True)
class AttestationDocument:
    """The payload of an attestation document; types and sizes validated as AWS's CDDL says."""

    module_id: str
    digest: str
    timestamp: int
    pcrs: dict[int, bytes]
    certificate: bytes
    cabundle: tuple[bytes, ...]
    public_key: bytes | None = None
    user_data: bytes | None = None
    nonce: bytes | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.module_id, str) or not self.module_id:
            raise _field_error("module_id", "non-empty text", self.module_id)
        if self.digest != "SHA384" or not isinstance(self.digest, str):
            raise _field_error("digest", '"SHA384"', self.digest)
        ts = self.timestamp
        if isinstance(ts, bool) or not isinstance(ts, int) or not 0 < ts < _U64:
            raise _field_error("timestamp", "an unsigned integer > 0 (epoch ms)", ts)
        pcrs = self.pcrs
        if not isinstance(pcrs, dict) or not 1 <= len(pcrs) <= 32:
            raise _field_error("pcrs", "a map of 1..32 entries", pcrs)
        for index, value in pcrs.items():
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 32:
                raise _field_error("pcrs key", "an integer 0..31", index)
            if not isinstance(value, bytes) or len(value) not in _PCR_LENGTHS:
                raise _field_error(f"pcrs[{index}]", "a byte string of 32, 48 or 64 bytes", value)
        _check_bstr("certificate", self.certificate, 1, _MAX_CERT)
        if not isinstance(self.cabundle, (tuple, list)) or not self.cabundle:
            raise _field_error("cabundle", "a non-empty array of certificates", self.cabundle)
        for i, cert in enumerate(self.cabundle):
            _check_bstr(f"cabundle[{i}]", cert, 1, _MAX_CERT)
        object.__setattr__(self, "cabundle", tuple(self.cabundle))
        object.__setattr__(self, "pcrs", dict(sorted(pcrs.items())))
        for name in ("public_key", "user_data", "nonce"):
            _check_bstr(name, getattr(self, name), 0, _MAX_USER_FIELD, optional=True)

    @property
    def is_debug(self) -> bool:
        """Debug-mode enclaves attest PCR0 as all zero (PCR3/PCR4 stay set), §3.4."""
        pcr0 = self.pcrs.get(0)
        return pcr0 is not None and not any(pcr0)

    @property
    def measurements(self) -> Measurements:
        """PCR0/1/2 (and PCR8 when non-zero) as the image measurements."""
        missing = [i for i in (0, 1, 2) if len(self.pcrs.get(i, b"")) != 48]
        if missing:
            raise AttestationError(
                f"attestation document pcrs: expected 48-byte PCR0, PCR1 and PCR2, "
                f"found PCR{missing[0]} missing or of another length"
            )
        pcr8 = self.pcrs.get(8)
        if pcr8 is not None and (len(pcr8) != 48 or not any(pcr8)):
            pcr8 = None
        return Measurements(pcr0=self.pcrs[0], pcr1=self.pcrs[1], pcr2=self.pcrs[2], pcr8=pcr8)

    @property
    def time(self) -> datetime:
        """The document timestamp as an aware UTC datetime."""
        try:
            return datetime.fromtimestamp(self.timestamp / 1000, tz=UTC)
        except (OverflowError, ValueError, OSError):
            raise AttestationError(
                f"attestation document timestamp: expected a date, found {self.timestamp} ms"
            ) from None

    def payload_map(self) -> dict[str, Any]:
        """The CBOR payload map in the NSM's field order, absent optionals as null."""
        return {name: getattr(self, name) for name in FIELD_ORDER}


@dataclass(frozen=True)
class _Cose:
    protected: bytes
    unprotected: Mapping[Any, Any]
    payload: bytes
    signature: bytes
    document: AttestationDocument


# ---------------------------------------------------------------- decoding


def _loads(data: bytes, what: str) -> Any:
    where = f"attestation document {what}"
    return cbor_item(data, max_depth=8, error=AttestationDecodeError, where=where)


def _split(raw: object) -> _Cose:
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise AttestationDecodeError(
            f"attestation document: expected bytes, found {type(raw).__name__}"
        )
    raw = bytes(raw)
    if not raw:
        raise AttestationDecodeError("attestation document: expected COSE_Sign1, found 0 bytes")
    if len(raw) > MAX_DOCUMENT_LEN:
        raise AttestationDecodeError(
            f"attestation document: expected at most {MAX_DOCUMENT_LEN} bytes, found {len(raw)}"
        )
    outer = _loads(raw, "COSE_Sign1")
    if isinstance(outer, cbor2.CBORTag):
        if outer.tag != COSE_SIGN1_TAG:
            raise AttestationDecodeError(
                f"attestation document: expected COSE_Sign1 (untagged or tag 18), "
                f"found tag {outer.tag}"
            )
        outer = outer.value
    if not isinstance(outer, (list, tuple)) or len(outer) != 4:
        raise AttestationDecodeError(
            f"attestation document: expected a COSE_Sign1 array of 4, found {_short(outer)}"
        )
    protected, unprotected, payload, signature = outer
    if not isinstance(protected, bytes):
        raise _field_error("protected header", "a byte string", protected)
    if not isinstance(unprotected, Mapping):
        raise _field_error("unprotected header", "a map", unprotected)
    if not isinstance(payload, bytes) or not 1 <= len(payload) <= MAX_PAYLOAD_LEN:
        raise _field_error("payload", f"a byte string of 1..{MAX_PAYLOAD_LEN} bytes", payload)
    if not isinstance(signature, bytes):
        raise _field_error("signature", "a byte string", signature)
    fields = _loads(payload, "payload")
    if not isinstance(fields, dict):
        raise _field_error("payload", "a map", fields)
    unknown = [k for k in fields if k not in FIELD_ORDER]
    if unknown:
        raise _field_error("payload", "only the 9 AttestationDocument keys", unknown[0])
    for name in _MANDATORY:
        if name not in fields:
            raise AttestationDecodeError(
                f"attestation document: expected mandatory field {name!r}, found it missing"
            )
    if not isinstance(fields["cabundle"], (list, tuple)):
        raise _field_error("cabundle", "an array", fields["cabundle"])
    document = AttestationDocument(**{k: fields.get(k) for k in FIELD_ORDER})
    return _Cose(protected, unprotected, payload, signature, document)


def decode(raw: bytes) -> AttestationDocument:
    """The document's payload without any signature or chain check (`AttestationDecodeError`)."""
    return _split(raw).document


# ---------------------------------------------------------------- trust anchors


@dataclass(frozen=True)
class TrustAnchor:
    """One explicit root certificate; a verifier trusts exactly this and nothing else."""

    name: str
    certificate: bytes  # DER

    def __post_init__(self) -> None:
        try:
            x509.load_der_x509_certificate(self.certificate)
        except _CERT_ERRORS as exc:
            raise InvalidInput(
                f"trust anchor {self.name}: expected a DER X.509 certificate, found {exc}"
            ) from None

    @classmethod
    def aws(cls) -> TrustAnchor:
        """AWS Nitro Enclaves Root-G1, shipped in enclavekit/data."""
        pem = resources.files("enclavekit.data").joinpath(_AWS_ROOT_RESOURCE).read_bytes()
        return cls.from_pem(pem, name="aws-nitro-enclaves-root-g1")

    @classmethod
    def from_pem(cls, pem: bytes, *, name: str = "PEM trust anchor") -> TrustAnchor:
        """A root from PEM (or DER) bytes."""
        try:
            cert = load_certificate(pem)
        except _CERT_ERRORS as exc:
            raise InvalidInput(
                f"trust anchor {name}: expected a PEM certificate, found {exc}"
            ) from None
        return cls(name=name, certificate=cert.public_bytes(serialization.Encoding.DER))

    @classmethod
    def local(cls, state_dir: str | Path) -> TrustAnchor:
        """The emulator root of this state dir (created by `pki.LocalPki`); never created here."""
        path = Path(state_dir) / "pki" / "root.pem"
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise InvalidInput(
                f"local trust anchor: expected the emulator root at {path}, "
                f"found {exc.strerror or exc} (start the local endpoint first)"
            ) from None
        return cls.from_pem(pem, name=f"local root ({path})")

    @property
    def sha256(self) -> str:
        """SHA-256 fingerprint of the DER, lower-case hex."""
        return hashlib.sha256(self.certificate).hexdigest()


# ---------------------------------------------------------------- verification


@functools.lru_cache(maxsize=256)
def _load_cert(der: bytes) -> x509.Certificate:
    """Parsed certificate; cached on the exact bytes, so a re-parse is only skipped for equals."""
    return x509.load_der_x509_certificate(der)


@functools.lru_cache(maxsize=256)
def _check_issued(issuer_der: bytes, subject_der: bytes) -> bool:
    """ES384 signature of `subject` by `issuer`'s key; a pure function of the two byte strings,
    so a success is cached for identical bytes (failures raise and are never cached)."""
    issuer, subject = _load_cert(issuer_der), _load_cert(subject_der)
    if subject.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA384:
        raise AttestationError(
            f"certificate {_cn(subject)}: expected signature ecdsa-with-SHA384, "
            f"found {subject.signature_algorithm_oid.dotted_string}"
        )
    key = issuer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise AttestationError(f"certificate {_cn(issuer)}: expected an EC key")
    try:
        key.verify(
            subject.signature,
            subject.tbs_certificate_bytes,
            ec.ECDSA(hashes.SHA384()),
        )
    except InvalidSignature:
        raise AttestationError(
            f"certificate {_cn(subject)}: signature does not verify with the key of {_cn(issuer)}"
        ) from None
    return True


def _cn(cert: x509.Certificate) -> str:
    try:
        attrs = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    except ValueError:
        attrs = []
    value = attrs[0].value if attrs else cert.subject.rfc4514_string()
    return repr(value if isinstance(value, str) else value.decode("latin-1"))


def _to_datetime(at: datetime | int | None) -> datetime:
    if at is None:
        return datetime.now(UTC)
    if isinstance(at, datetime):
        if at.tzinfo is None:
            raise InvalidInput(f"verification time: expected a timezone-aware datetime, found {at}")
        return at.astimezone(UTC)
    if isinstance(at, int) and not isinstance(at, bool):
        try:
            return datetime.fromtimestamp(at / 1000, tz=UTC)
        except (OverflowError, ValueError, OSError):
            raise InvalidInput(
                f"verification time: expected epoch milliseconds, found {at}"
            ) from None
    raise InvalidInput(
        f"verification time: expected a datetime or epoch ms, found {type(at).__name__}"
    )


def _check_cert(cert: x509.Certificate, role: str, below: int, at: datetime) -> None:
    """Validity at `at`, P-384 key, and the critical extensions §2.4 requires for `role`."""
    name = f"{role} certificate {_cn(cert)}"
    if cert.serial_number <= 0:
        raise AttestationError(f"{name}: expected a positive serial number (RFC 5280)")
    if cert.version != x509.Version.v3:
        raise AttestationError(f"{name}: expected X.509 v3, found {cert.version.name}")
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise AttestationError(
            f"{name}: not valid at {_iso(at)} (valid {_iso(cert.not_valid_before_utc)} "
            f"to {_iso(cert.not_valid_after_utc)})"
        )
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise AttestationError(f"{name}: expected a P-384 public key")
    try:
        exts = cert.extensions
    except ValueError as exc:
        raise AttestationError(f"{name}: unreadable extensions ({exc})") from None
    for ext in exts:
        if ext.critical and ext.oid not in _ALLOWED_CRITICAL:
            raise AttestationError(
                f"{name}: unsupported critical extension {ext.oid.dotted_string}"
            )
    bc = _ext(exts, x509.BasicConstraints)
    ku = _ext(exts, x509.KeyUsage)
    if role == "leaf":
        if bc is not None and bc.ca:
            raise AttestationError(f"{name}: expected a non-CA leaf, found CA:TRUE")
        if ku is None or not ku.digital_signature:
            raise AttestationError(f"{name}: expected key usage digitalSignature")
        return
    if bc is None or not bc.ca:
        raise AttestationError(f"{name}: expected basic constraints CA:TRUE")
    if ku is None or not ku.key_cert_sign:
        raise AttestationError(f"{name}: expected key usage keyCertSign")
    if bc.path_length is not None and bc.path_length < below:
        raise AttestationError(
            f"{name}: path length constraint {bc.path_length} is exceeded by {below} "
            "intermediate certificates below it"
        )


def _ext(exts: x509.Extensions, kind: type) -> Any:
    try:
        return exts.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _ms(moment: datetime) -> int:
    return int(moment.timestamp()) * 1000


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _check_chain(chain: list[bytes], certs: list[x509.Certificate], at: datetime) -> None:
    """Root (the anchor) -> intermediates -> leaf: each valid, constrained, issued by the last."""
    n_inter = len(chain) - 2
    for i, cert in enumerate(certs):
        role = "root" if i == 0 else "leaf" if i == len(certs) - 1 else "intermediate"
        _check_cert(cert, role, max(n_inter - i, 0), at)
        if i > 0:
            if cert.issuer != certs[i - 1].subject:
                raise AttestationError(
                    f"{role} certificate {_cn(cert)}: issuer does not name {_cn(certs[i - 1])}"
                )
            _check_issued(chain[i - 1], chain[i])


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected, b"", payload])


def verify(raw: bytes, trust: TrustAnchor, at: datetime | int | None = None) -> AttestationDocument:
    """The document, after the full AWS procedure against `trust` at time `at` (default now).

    Raises `AttestationDecodeError` for bytes that are not a document and `AttestationError`
    with the reason for a document that does not verify.
    """
    if not isinstance(trust, TrustAnchor):
        raise InvalidInput(f"trust anchor: expected a TrustAnchor, found {type(trust).__name__}")
    moment = _to_datetime(at)
    cose = _split(raw)
    doc = cose.document
    if cose.protected != PROTECTED_ES384:
        try:
            header = cbor2.loads(cose.protected)
        except Exception:  # noqa: BLE001 - only used to phrase the error
            header = cose.protected
        if header != {1: -35}:
            raise AttestationError(
                f"attestation document: expected protected header {{1: -35}} (ES384), "
                f"found {_short(header)}"
            )
    if cose.unprotected:
        raise AttestationError(
            f"attestation document: expected an empty unprotected header, "
            f"found {len(cose.unprotected)} entries"
        )
    if len(cose.signature) != ES384_SIGNATURE_LEN:
        raise AttestationError(
            f"attestation document signature: expected {ES384_SIGNATURE_LEN} bytes (raw r||s), "
            f"found {len(cose.signature)}"
        )
    if doc.cabundle[0] != trust.certificate:
        raise AttestationError(
            f"attestation document: cabundle[0] is not the trust anchor {trust.name} "
            f"(sha256 {hashlib.sha256(doc.cabundle[0]).hexdigest()[:16]}..., "
            f"expected {trust.sha256[:16]}...)"
        )
    chain = [*doc.cabundle, doc.certificate]  # ROOT, INTERM_1..N, TARGET
    certs = []
    for i, der in enumerate(chain):
        try:
            certs.append(_load_cert(der))
        except _CERT_ERRORS as exc:
            where = "certificate" if i == len(chain) - 1 else f"cabundle[{i}]"
            raise AttestationError(f"attestation document {where}: not X.509 DER ({exc})") from None
    try:
        _check_chain(chain, certs, moment)
    except _CERT_ERRORS as exc:
        # cryptography parses some fields lazily; a malformed one surfaces only here.
        raise AttestationError(f"attestation document: unreadable certificate ({exc})") from None
    leaf = certs[-1]
    if not _ms(leaf.not_valid_before_utc) <= doc.timestamp <= _ms(leaf.not_valid_after_utc):
        raise AttestationError(
            f"attestation document timestamp {doc.timestamp} ms is outside its leaf "
            f"certificate's validity ({_iso(leaf.not_valid_before_utc)} to "
            f"{_iso(leaf.not_valid_after_utc)})"
        )
    r, s = (
        int.from_bytes(cose.signature[:48], "big"),
        int.from_bytes(cose.signature[48:], "big"),
    )
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)  # checked in _check_cert
    try:
        key.verify(
            encode_dss_signature(r, s),
            _sig_structure(cose.protected, cose.payload),
            ec.ECDSA(hashes.SHA384()),
        )
    except InvalidSignature:
        raise AttestationError(
            "attestation document: COSE_Sign1 signature does not verify with the leaf key"
        ) from None
    return doc


# ---------------------------------------------------------------- encoding


def encode(
    *,
    module_id: str,
    pcrs: dict[int, bytes],
    signing_key: ec.EllipticCurvePrivateKey,
    certificate: bytes,
    cabundle: list[bytes] | tuple[bytes, ...],
    timestamp: int | None = None,
    public_key: bytes | None = None,
    user_data: bytes | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """A signed document laid out byte for byte like the NSM's (map(9), nulls, int PCR keys)."""
    if not isinstance(signing_key, ec.EllipticCurvePrivateKey) or (
        signing_key.curve.name != "secp384r1"
    ):
        raise InvalidInput("attestation signing key: expected a P-384 EC private key")
    try:
        cert_key = _load_cert(bytes(certificate)).public_key()
    except _CERT_ERRORS as exc:
        raise InvalidInput(f"attestation certificate: expected X.509 DER, found {exc}") from None
    if cert_key != signing_key.public_key():
        raise InvalidInput("attestation certificate: its public key is not the signing key's")
    doc = AttestationDocument(
        module_id=module_id,
        digest="SHA384",
        timestamp=int(time.time() * 1000) if timestamp is None else timestamp,
        pcrs=dict(pcrs),
        certificate=bytes(certificate),
        cabundle=tuple(cabundle),
        public_key=public_key,
        user_data=user_data,
        nonce=nonce,
    )
    payload = cbor2.dumps(doc.payload_map())
    der = signing_key.sign(_sig_structure(PROTECTED_ES384, payload), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    signature = r.to_bytes(48, "big") + s.to_bytes(48, "big")
    return cbor2.dumps([PROTECTED_ES384, {}, payload, signature])
