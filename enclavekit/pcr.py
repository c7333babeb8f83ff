"""Platform Configuration Registers of a Nitro Enclave: SHA-384 extend and the PCR recipes.

Why this module exists: every part (constructs, local KMS, emulator, enclave program) must agree
byte for byte on what a measurement is, so the rules live once, here. Facts from
docs/reference/nitro-attestation-nsm-eif.md §3:

* extend: ``new = SHA384(old || data)``; every PCR starts as 48 zero bytes.
* PCR0/1/2/8 extend a 48-byte SHA-384 *digest* once: ``SHA384(0^48 || digest)``.
* PCR3 / PCR4 extend the raw UTF-8 string of the role ARN / instance id (not pre-hashed).

Pure module (stdlib + cryptography): it is vendored into enclave images.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from enclavekit.errors import InvalidInput

PCR_LEN = 48
ZERO_PCR = bytes(PCR_LEN)
HASH_ALGORITHM = "Sha384 { ... }"  # the exact string nitro-cli prints

_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
_INSTANCE_ID = re.compile(r"^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$")


def _check_pcr(name: str, value: object) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise InvalidInput(f"{name}: expected {PCR_LEN} bytes, found {type(value).__name__}")
    if len(value) != PCR_LEN:
        raise InvalidInput(f"{name}: expected {PCR_LEN} bytes, found {len(value)}")
    return bytes(value)


def extend(old: bytes, data: bytes) -> bytes:
    """Return SHA384(old || data): what the NSM does on ExtendPCR."""
    _check_pcr("PCR value to extend", old)
    return hashlib.sha384(bytes(old) + bytes(data)).digest()


def pcr_of_digest(digest: bytes) -> bytes:
    """PCR0/1/2/8 rule: one extend of a zero PCR with a 48-byte SHA-384 digest."""
    _check_pcr("digest", digest)
    return extend(ZERO_PCR, digest)


def pcr_of_content(*parts: bytes) -> bytes:
    """PCR over the concatenation of ``parts`` (nitro-cli's section hashing)."""
    h = hashlib.sha384()
    for part in parts:
        h.update(part)
    return pcr_of_digest(h.digest())


def pcr3_of_role_arn(arn: str) -> bytes:
    """PCR3 of a parent whose instance profile holds the IAM role ``arn`` (AWS user guide)."""
    if not isinstance(arn, str) or not _ROLE_ARN.match(arn):
        raise InvalidInput(
            f"IAM role ARN: expected arn:aws:iam::<12 digits>:role/<name>, found {arn!r}"
        )
    return extend(ZERO_PCR, arn.encode("utf-8"))


def pcr4_of_instance_id(iid: str) -> bytes:
    """PCR4 of a parent EC2 instance with id ``iid`` (AWS user guide)."""
    if not isinstance(iid, str) or not _INSTANCE_ID.match(iid):
        raise InvalidInput(
            f"EC2 instance id: expected i- followed by 8 or 17 lower-case hex digits, found {iid!r}"
        )
    return extend(ZERO_PCR, iid.encode("ascii"))


def load_certificate(raw: bytes) -> Any:
    """The `x509.Certificate` in `raw`, PEM if it starts with a PEM header, else DER (the
    loader's own errors, ValueError mostly, go on to the caller, which names the certificate)."""
    from cryptography import x509

    if raw.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(raw)
    return x509.load_der_x509_certificate(raw)


def certificate_der(cert: bytes | str) -> bytes:
    """DER bytes of an X.509 certificate given as PEM (text or bytes) or DER."""
    from cryptography.hazmat.primitives.serialization import Encoding

    raw = cert.encode("ascii", "replace") if isinstance(cert, str) else bytes(cert)
    try:
        loaded = load_certificate(raw)
    except ValueError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidInput(
            f"signing certificate: expected an X.509 certificate in PEM or DER, found {len(raw)} "
            f"bytes that do not parse ({first})"
        ) from None
    return loaded.public_bytes(Encoding.DER)


def pcr8_of_certificate(cert: bytes | str) -> bytes:
    """PCR8 of an EIF signed with ``cert``: SHA384(0^48 || SHA384(DER(cert)))."""
    return pcr_of_digest(hashlib.sha384(certificate_der(cert)).digest())


def _from_hex(name: str, value: object) -> bytes:
    if isinstance(value, bytes | bytearray):
        return _check_pcr(name, value)
    if not isinstance(value, str):
        raise InvalidInput(
            f"{name}: expected {2 * PCR_LEN} hex digits, found {type(value).__name__}"
        )
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise InvalidInput(f"{name}: expected {2 * PCR_LEN} hex digits, found {value!r}") from None
    if len(raw) != PCR_LEN:
        raise InvalidInput(
            f"{name}: expected {2 * PCR_LEN} hex digits, found {len(value)} characters"
        )
    return raw


@dataclass(frozen=True)
class Measurements:
    """PCR0/1/2 (and PCR8 for a signed image) of one enclave image: the identity KMS binds to."""

    pcr0: bytes
    pcr1: bytes
    pcr2: bytes
    pcr8: bytes | None = None

    def __post_init__(self) -> None:
        for n in (0, 1, 2):
            object.__setattr__(self, f"pcr{n}", _check_pcr(f"PCR{n}", getattr(self, f"pcr{n}")))
        if self.pcr8 is not None:
            object.__setattr__(self, "pcr8", _check_pcr("PCR8", self.pcr8))

    @classmethod
    def from_hex(cls, *, pcr0: str, pcr1: str, pcr2: str, pcr8: str | None = None) -> Measurements:
        """Measurements from hex strings (either case)."""
        return cls(
            _from_hex("PCR0", pcr0),
            _from_hex("PCR1", pcr1),
            _from_hex("PCR2", pcr2),
            None if pcr8 is None else _from_hex("PCR8", pcr8),
        )

    @classmethod
    def from_nitro_cli_json(cls, obj: Mapping[str, Any]) -> Measurements:
        """Measurements from nitro-cli build-enclave/describe-eif JSON or its inner dict."""
        if not isinstance(obj, Mapping):
            raise InvalidInput(
                f"nitro-cli measurements: expected a JSON object, found {type(obj).__name__}"
            )
        inner = obj.get("Measurements", obj)
        if not isinstance(inner, Mapping):
            raise InvalidInput(
                f"nitro-cli Measurements: expected a JSON object, found {type(inner).__name__}"
            )
        algo = inner.get("HashAlgorithm", HASH_ALGORITHM)
        if not isinstance(algo, str) or not algo.startswith("Sha384"):
            raise InvalidInput(
                f"nitro-cli HashAlgorithm: expected {HASH_ALGORITHM!r}, found {algo!r}"
            )
        missing = [k for k in ("PCR0", "PCR1", "PCR2") if k not in inner]
        if missing:
            raise InvalidInput(
                "nitro-cli Measurements: expected keys PCR0, PCR1, PCR2, "
                f"missing {', '.join(missing)}"
            )
        return cls.from_hex(
            pcr0=inner["PCR0"], pcr1=inner["PCR1"], pcr2=inner["PCR2"], pcr8=inner.get("PCR8")
        )

    @classmethod
    def debug(cls) -> Measurements:
        """What a debug-mode enclave reports: PCR0/1/2 all zero."""
        return cls(ZERO_PCR, ZERO_PCR, ZERO_PCR)

    @property
    def is_debug(self) -> bool:
        """Debug mode is recognised by PCR0 all zero (AWS zeroes PCR0/1/2/8, not PCR3/4)."""
        return self.pcr0 == ZERO_PCR

    def by_index(self) -> dict[int, bytes]:
        """The PCRs keyed by index (8 only when present)."""
        out = {0: self.pcr0, 1: self.pcr1, 2: self.pcr2}
        if self.pcr8 is not None:
            out[8] = self.pcr8
        return out

    def hex(self, n: int) -> str:
        """Lower-case hex of PCR ``n`` (0, 1, 2 or 8 when signed)."""
        values = self.by_index()
        if n not in values:
            raise InvalidInput(f"PCR index: expected one of {sorted(values)}, found {n!r}")
        return values[n].hex()

    @property
    def image_sha384(self) -> str:
        """KMS's ``kms:RecipientAttestation:ImageSha384`` is PCR0."""
        return self.pcr0.hex()

    def to_nitro_cli(self) -> dict[str, str]:
        """The inner ``Measurements`` object nitro-cli prints (keys sorted like its BTreeMap)."""
        out = {"HashAlgorithm": HASH_ALGORITHM}
        for n, value in self.by_index().items():
            out[f"PCR{n}"] = value.hex()
        return out
