"""The parent <-> enclave control protocol: what the parent hands the enclave, and what it asks.

Why a protocol of our own: on AWS the ACM agent on the parent fetches the instance-role
credentials (IMDS) and the certificate bundle (S3) and hands them to its enclave over vsock;
our enclave program plays that enclave's part, and both the emulated parent and a real parent
speak to it the same way. Shared by both sides, so it lives in the core and is vendored into the
enclave image (pure: stdlib only).

Wire format, on a vsock stream to the enclave's control port (5005): each message is a 4-byte
big-endian length followed by that many bytes of UTF-8 JSON, an object with
``"version": 1`` and ``"type": <name>``. One request -> one reply, in order, on one connection.

Requests (parent -> enclave): ``Provision``, ``Status``, ``Challenge``, ``Attest``.
Replies (enclave -> parent): ``Provisioned``, ``StatusReport``, ``ChallengeAnswer``,
``AttestResult``, ``Error``.

Secrets never travel back: a parent proves the enclave holds a secret by a ``Challenge``
(HMAC-SHA256 of its nonce under the secret), never by a digest of the secret.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

# The ports this protocol runs on (re-exported: prov.CONTROL_PORT reads where it is used).
from enclavekit.contract import CONTROL_PORT as CONTROL_PORT
from enclavekit.contract import KMS_PROXY_PORT as KMS_PROXY_PORT
from enclavekit.errors import InvalidInput

PROTOCOL_VERSION = 1
MAX_MESSAGE_LEN = 1 << 20
DEFAULT_REFRESH_INTERVAL_SECS = 43200  # the ACM agent's default token refresh (12 h)
MIN_NONCE_LEN = 16
MAX_NONCE_LEN = 512  # the NSM's limit for nonce / user_data
STATES = ("waiting", "provisioning", "ready", "degraded", "failed")
_FRAME = struct.Struct(">I")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")


# ---------------------------------------------------------------------------------------------
# field readers: one-line errors that name the field, the expected form and what was found


def _found(value: object) -> str:
    if isinstance(value, str):
        return f"{value[:40]!r}" + ("..." if len(value) > 40 else "")
    if value is None:
        return "null"
    return type(value).__name__


def _bad(where: str, expected: str, value: object) -> InvalidInput:
    return InvalidInput(f"provisioning message {where}: expected {expected}, found {_found(value)}")


def _obj(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _bad(where, "a JSON object", value)
    return value


def _only(obj: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise InvalidInput(
            f"provisioning message {where}: expected only the fields {sorted(allowed)}, "
            f"found unknown field {extra[0]!r}"
        )


def _str(obj: Mapping[str, Any], key: str, where: str, *, optional: bool = False) -> Any:
    if key not in obj or obj[key] is None:
        if optional:
            return None
        raise InvalidInput(f"provisioning message {where}.{key}: expected a string, found nothing")
    value = obj[key]
    if not isinstance(value, str) or not value:
        raise _bad(f"{where}.{key}", "a non-empty string", value)
    return value


def _int(obj: Mapping[str, Any], key: str, where: str, lo: int, hi: int, default: int) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(f"{where}.{key}", f"an integer {lo}..{hi}", value)
    return value


def _b64(value: object, where: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise _bad(where, "non-empty base64 text", value)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(where, "base64 text", value) from None


def _enc(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _check_nonce(nonce: object, where: str) -> None:
    if not isinstance(nonce, bytes) or not MIN_NONCE_LEN <= len(nonce) <= MAX_NONCE_LEN:
        size = f"{len(nonce)} bytes" if isinstance(nonce, bytes) else _found(nonce)
        raise InvalidInput(
            f"provisioning message {where}: expected {MIN_NONCE_LEN}..{MAX_NONCE_LEN} bytes, "
            f"found {size}"
        )


def _check_text(value: object, where: str, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise _bad(where, "a non-empty string", value)


def _names(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _bad(where, "a JSON array of names", value)
    return tuple(value)


def _epoch(obj: Mapping[str, Any], key: str, where: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"{where}.{key}", "epoch seconds or null", value)
    return float(value)


def _pem_text(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key, "")
    if not isinstance(value, str):
        raise _bad(f"{where}.{key}", "PEM text", value)
    return value


# How each kind of field crosses the wire: (to JSON, from the JSON object's `key` at `where`).
# A field's kind is its annotation (strings: see the __future__ import); bytes travel as base64
# under the attribute's key + "_b64".
PemText = str  # PEM text, possibly empty (a certificate chain): its own annotation, its own kind
_KINDS: dict[str, tuple[Callable[[Any], Any], Callable[[Mapping[str, Any], str, str], Any]]] = {
    "str": (lambda v: v, lambda o, k, w: _str(o, k, w)),
    "str | None": (lambda v: v, lambda o, k, w: _str(o, k, w, optional=True)),
    "PemText": (lambda v: v, _pem_text),
    "bytes": (_enc, lambda o, k, w: _b64(o.get(k), f"{w}.{k}")),
    "bytes | None": (
        lambda v: None if v is None else _enc(v),
        lambda o, k, w: None if o.get(k) is None else _b64(o[k], f"{w}.{k}"),
    ),
    "tuple[str, ...]": (list, lambda o, k, w: _names(o.get(k, []), f"{w}.{k}")),
    "float | None": (lambda v: v, _epoch),
    "int": (lambda v: v, lambda o, k, w: _int(o, k, w, 0, 2**63, 0)),
}


def _json_key(attr: str, kind: str, style: str) -> str:
    if style == "PascalCase":
        return "".join(part.title() for part in attr.split("_"))
    if style == "camelCase":
        first, *rest = attr.split("_")
        return first + "".join(part.title() for part in rest)
    return f"{attr}_b64" if kind.startswith("bytes") else attr


class WireObject:
    """A JSON object on the control wire, declared by its dataclass fields alone.

    One codec for every message and value object: `FIELDS` (attribute, kind, JSON key) follows
    from the annotations and `KEYS` (the JSON key style: snake_case, camelCase or PascalCase);
    `wire_body()` writes the fields, `parse` refuses unknown keys and reads each field with the
    one-line errors above. A class writing its own body sets `CUSTOM = True`.
    """

    FIELDS: ClassVar[tuple[tuple[str, str, str], ...]] = ()
    KEYS: ClassVar[str] = "snake_case"
    CUSTOM: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.CUSTOM:
            return
        annotations = cls.__dict__.get("__annotations__", {})
        cls.FIELDS = tuple(
            (attr, kind, _json_key(attr, kind, cls.KEYS))
            for attr, kind in annotations.items()
            if not kind.startswith("ClassVar")
        )
        for _, kind, _ in cls.FIELDS:
            _KINDS[kind]  # a KeyError at import for an annotation with no wire kind

    def wire_body(self) -> dict[str, Any]:
        return {key: _KINDS[kind][0](getattr(self, attr)) for attr, kind, key in self.FIELDS}

    @classmethod
    def parse(cls, obj: Mapping[str, Any], where: str) -> Any:
        _only(obj, where, {key for _, _, key in cls.FIELDS})
        return cls(**{attr: _KINDS[kind][1](obj, key, where) for attr, kind, key in cls.FIELDS})


class WireValue(WireObject):
    """A value object nested in a message (or stored, as the certificate bundle in S3)."""

    WHERE: ClassVar[str] = ""  # where a value read without a named place is, in errors

    def to_json(self) -> dict[str, Any]:
        return self.wire_body()

    @classmethod
    def from_json(cls, value: object, where: str | None = None) -> Any:
        where = where or cls.WHERE
        return cls.parse(_obj(value, where), where)


# ---------------------------------------------------------------------------------------------
# value objects


@dataclass(frozen=True)
class Credentials(WireValue):
    """Temporary AWS credentials of the parent's instance role (IMDS field names on the wire).

    The secret parts are left out of repr so a logged object never shows them.
    """

    WHERE: ClassVar[str] = "Provision.credentials"
    KEYS: ClassVar[str] = "PascalCase"
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    expiration: str | None = None

    def __post_init__(self) -> None:
        _check_text(self.access_key_id, "credentials.AccessKeyId")
        _check_text(self.secret_access_key, "credentials.SecretAccessKey")
        _check_text(self.session_token, "credentials.SessionToken", optional=True)
        _check_text(self.expiration, "credentials.Expiration", optional=True)


@dataclass(frozen=True)
class CertificateBundle(WireValue):
    """The S3 object an ACM for Nitro Enclaves association creates (field names as AWS's).

    `encrypted_private_key` is the base64 KMS ciphertext of the PEM private key: only an
    attested enclave can turn it back into a key.
    """

    WHERE: ClassVar[str] = "Provision.certificate"
    KEYS: ClassVar[str] = "camelCase"
    certificate: str
    certificate_chain: PemText
    encrypted_private_key: str = field(repr=False)
    encryption_method: str

    def __post_init__(self) -> None:
        _check_text(self.certificate, "certificate.certificate")
        if "-----BEGIN CERTIFICATE-----" not in self.certificate:
            raise _bad("certificate.certificate", "a PEM certificate", self.certificate)
        if not isinstance(self.certificate_chain, str):
            raise _bad("certificate.certificateChain", "PEM text", self.certificate_chain)
        _b64(self.encrypted_private_key, "certificate.encryptedPrivateKey")
        _check_text(self.encryption_method, "certificate.encryptionMethod")

    @property
    def private_key_ciphertext(self) -> bytes:
        """The KMS CiphertextBlob to Decrypt (with attestation) into the PEM private key."""
        return base64.b64decode(self.encrypted_private_key, validate=True)

    @classmethod
    def from_s3_object(cls, data: bytes | str) -> CertificateBundle:
        """Parse the body of the association's S3 object, as the parent downloads it."""
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInput(
                f"certificate bundle S3 object: expected JSON, found unreadable bytes ({exc})"
            ) from None
        return cls.from_json(obj, "certificate bundle S3 object")


@dataclass(frozen=True)
class SecretSpec(WireValue):
    """One application secret: a KMS CiphertextBlob the enclave decrypts with attestation."""

    name: str
    ciphertext_b64: str = field(repr=False)
    key_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise _bad("secrets[].name", "1..128 characters of [A-Za-z0-9._/-]", self.name)
        _b64(self.ciphertext_b64, f"secrets[{self.name}].ciphertext_b64")
        _check_text(self.key_id, f"secrets[{self.name}].key_id", optional=True)

    @property
    def ciphertext(self) -> bytes:
        return base64.b64decode(self.ciphertext_b64, validate=True)


# ---------------------------------------------------------------------------------------------
# messages


class Message(WireObject):
    """Base of every control message; `TYPE` is its name on the wire."""

    TYPE: ClassVar[str] = ""

    def body(self) -> dict[str, Any]:
        return self.wire_body()

    def to_json(self) -> dict[str, Any]:
        return {"version": PROTOCOL_VERSION, "type": self.TYPE, **self.body()}

    @classmethod
    def from_body(cls, obj: Mapping[str, Any]) -> Message:
        return cls.parse(obj, cls.TYPE)


@dataclass(frozen=True)
class Provision(Message):
    """Everything the enclave needs from its parent; a later Provision replaces the earlier.

    KMS is reached through the parent's vsock-proxy on (CID 3, `kms_proxy_port`), always over
    TLS to ``kms.<region>.amazonaws.com``, verified against the enclave's own trust store. The
    parent chooses only the region and the vsock port, neither of which can weaken that: it
    carries the bytes and sees only ciphertext. (Earlier versions let the parent choose the
    scheme and host, so a parent could plant a fake KMS; those fields are refused now.)
    """

    TYPE: ClassVar[str] = "Provision"
    CUSTOM: ClassVar[bool] = True
    region: str
    credentials: Credentials
    kms_proxy_port: int = KMS_PROXY_PORT
    certificate: CertificateBundle | None = None
    secrets: tuple[SecretSpec, ...] = ()
    refresh_interval_secs: int = DEFAULT_REFRESH_INTERVAL_SECS

    def __post_init__(self) -> None:
        if not isinstance(self.region, str) or not _REGION.match(self.region):
            raise _bad("Provision.region", "an AWS region name like us-east-1", self.region)
        if not isinstance(self.credentials, Credentials):
            raise _bad("Provision.credentials", "Credentials", self.credentials)
        port = self.kms_proxy_port
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 0xFFFFFFFF:
            raise _bad("Provision.kms_proxy_port", "a vsock port 1..4294967295", port)
        if self.certificate is not None and not isinstance(self.certificate, CertificateBundle):
            raise _bad("Provision.certificate", "a certificate bundle or null", self.certificate)
        secrets = tuple(self.secrets)
        object.__setattr__(self, "secrets", secrets)
        names = [s.name for s in secrets]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise _bad("Provision.secrets", "unique secret names", dup)
        interval = self.refresh_interval_secs
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise _bad("Provision.refresh_interval_secs", "an integer >= 1", interval)

    @property
    def kms_host(self) -> str:
        """The region's KMS host name, the only one the enclave talks to."""
        suffix = "amazonaws.com.cn" if self.region.startswith("cn-") else "amazonaws.com"
        return f"kms.{self.region}.{suffix}"

    def body(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "credentials": self.credentials.to_json(),
            "kms_proxy_port": self.kms_proxy_port,
            "certificate": None if self.certificate is None else self.certificate.to_json(),
            "secrets": [s.to_json() for s in self.secrets],
            "refresh_interval_secs": self.refresh_interval_secs,
        }

    @classmethod
    def from_body(cls, obj: Mapping[str, Any]) -> Provision:
        w = "Provision"
        _only(
            obj,
            w,
            {
                "region",
                "credentials",
                "kms_proxy_port",
                "certificate",
                "secrets",
                "refresh_interval_secs",
            },
        )
        if "credentials" not in obj:
            raise InvalidInput(
                f"provisioning message {w}.credentials: expected an object, found nothing"
            )
        secrets = obj.get("secrets", [])
        if not isinstance(secrets, list):
            raise _bad(f"{w}.secrets", "a JSON array", secrets)
        cert = obj.get("certificate")
        return cls(
            region=_str(obj, "region", w),
            credentials=Credentials.from_json(obj["credentials"]),
            kms_proxy_port=_int(obj, "kms_proxy_port", w, 1, 0xFFFFFFFF, KMS_PROXY_PORT),
            certificate=None if cert is None else CertificateBundle.from_json(cert),
            secrets=tuple(
                SecretSpec.from_json(s, f"{w}.secrets[{i}]") for i, s in enumerate(secrets)
            ),
            refresh_interval_secs=_int(
                obj, "refresh_interval_secs", w, 1, 10**9, DEFAULT_REFRESH_INTERVAL_SECS
            ),
        )


@dataclass(frozen=True)
class Status(Message):
    """Ask the enclave what state it is in (answered by StatusReport)."""

    TYPE: ClassVar[str] = "Status"


@dataclass(frozen=True)
class Challenge(Message):
    """Prove the enclave holds secret `name`: it answers HMAC-SHA256(secret, nonce)."""

    TYPE: ClassVar[str] = "Challenge"
    name: str
    nonce: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise _bad("Challenge.name", "a secret name", self.name)
        _check_nonce(self.nonce, "Challenge.nonce_b64")


@dataclass(frozen=True)
class Attest(Message):
    """Ask for a fresh attestation document carrying `nonce` and the enclave's public key."""

    TYPE: ClassVar[str] = "Attest"
    nonce: bytes | None = None

    def __post_init__(self) -> None:
        if self.nonce is not None:
            _check_nonce(self.nonce, "Attest.nonce_b64")


@dataclass(frozen=True)
class Provisioned(Message):
    """Reply to Provision: what was loaded (the certificate by its SHA-256 fingerprint)."""

    TYPE: ClassVar[str] = "Provisioned"
    state: str
    certificate_sha256: str | None = None
    secrets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise _bad("Provisioned.state", f"one of {list(STATES)}", self.state)
        object.__setattr__(self, "secrets", tuple(self.secrets))


@dataclass(frozen=True)
class StatusReport(Message):
    """Reply to Status. Times are epoch seconds; nothing in it is secret."""

    TYPE: ClassVar[str] = "StatusReport"
    state: str
    module_id: str
    public_key_sha256: str
    certificate_sha256: str | None = None
    certificate_subject: str | None = None
    certificate_not_after: str | None = None
    secrets: tuple[str, ...] = ()
    provisioned_at: float | None = None
    refreshed_at: float | None = None
    refresh_count: int = 0
    last_error: str | None = None

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise _bad("StatusReport.state", f"one of {list(STATES)}", self.state)
        object.__setattr__(self, "secrets", tuple(self.secrets))


@dataclass(frozen=True)
class ChallengeAnswer(Message):
    """Reply to Challenge: `mac` = HMAC-SHA256(secret, nonce)."""

    TYPE: ClassVar[str] = "ChallengeAnswer"
    name: str
    mac: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.mac, bytes) or len(self.mac) != 32:
            raise _bad("ChallengeAnswer.mac_b64", "32 bytes (HMAC-SHA256)", self.mac)


@dataclass(frozen=True)
class AttestResult(Message):
    """Reply to Attest: the raw COSE_Sign1 attestation document from the NSM."""

    TYPE: ClassVar[str] = "AttestResult"
    document: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.document, bytes) or not self.document:
            raise _bad("AttestResult.document_b64", "non-empty bytes", self.document)


ERROR_CODES = ("BadRequest", "NotProvisioned", "UnknownSecret", "KmsError", "Internal")


@dataclass(frozen=True)
class ErrorReply(Message):
    """A request that could not be served: a code from ERROR_CODES and a one-line reason."""

    TYPE: ClassVar[str] = "Error"
    code: str
    message: str

    def __post_init__(self) -> None:
        if self.code not in ERROR_CODES:
            raise _bad("Error.code", f"one of {list(ERROR_CODES)}", self.code)
        _check_text(self.message, "Error.message")


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Provision,
        Status,
        Challenge,
        Attest,
        Provisioned,
        StatusReport,
        ChallengeAnswer,
        AttestResult,
        ErrorReply,
    )
}
REQUEST_TYPES = (Provision, Status, Challenge, Attest)


# ---------------------------------------------------------------------------------------------
# codec and framing


def encode_message(msg: Message) -> bytes:
    """The JSON payload of `msg` (without the length prefix)."""
    if not isinstance(msg, Message) or msg.TYPE not in MESSAGE_TYPES:
        raise InvalidInput(f"provisioning message: expected a Message, found {_found(msg)}")
    data = json.dumps(msg.to_json(), separators=(",", ":"), sort_keys=True).encode("utf-8")
    if len(data) > MAX_MESSAGE_LEN:
        raise InvalidInput(
            f"provisioning message {msg.TYPE}: expected at most "
            f"{MAX_MESSAGE_LEN} bytes, found {len(data)}"
        )
    return data


def decode_message(data: bytes) -> Message:
    """Parse one JSON payload into its message object (InvalidInput on anything else)."""
    if len(data) > MAX_MESSAGE_LEN:
        raise InvalidInput(
            f"provisioning message: expected at most {MAX_MESSAGE_LEN} bytes, found {len(data)}"
        )
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = (str(exc).splitlines() or ["too deeply nested"])[0][:80]
        raise InvalidInput(
            f"provisioning message: expected UTF-8 JSON, found invalid bytes ({reason})"
        ) from None
    obj = _obj(obj, "payload")
    version = obj.get("version")
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise _bad("version", f"{PROTOCOL_VERSION}", version)
    kind = obj.get("type")
    if kind not in MESSAGE_TYPES:
        raise _bad("type", f"one of {sorted(MESSAGE_TYPES)}", kind)
    body = {k: v for k, v in obj.items() if k not in ("version", "type")}
    try:
        return MESSAGE_TYPES[kind].from_body(body)
    except RecursionError:
        raise _bad(kind, "a JSON object of bounded depth", body) from None


def frame(msg: Message) -> bytes:
    """`msg` as it travels: 4-byte big-endian length, then the JSON payload."""
    data = encode_message(msg)
    return _FRAME.pack(len(data)) + data


def _recv_exact(sock: socket.socket, n: int, *, at_start: bool = False) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            if at_start and not buf:
                raise EOFError("control connection closed")
            raise ConnectionError(f"control connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def write_message(sock: socket.socket, msg: Message) -> None:
    """Send one framed message."""
    sock.sendall(frame(msg))


def read_message(sock: socket.socket) -> Message:
    """Read one framed message. EOFError on a clean close between messages; ConnectionError
    on a close mid-message; InvalidInput on a frame that is too long or not a message."""
    (length,) = _FRAME.unpack(_recv_exact(sock, _FRAME.size, at_start=True))
    if length > MAX_MESSAGE_LEN:
        raise InvalidInput(
            f"provisioning frame: expected a length of at most {MAX_MESSAGE_LEN}, found {length}"
        )
    return decode_message(_recv_exact(sock, length))


def exchange(sock: socket.socket, request: Message) -> Message:
    """Send `request`, return the enclave's reply (an ErrorReply is returned, not raised)."""
    write_message(sock, request)
    return read_message(sock)
