"""NSM request/response messages in the exact CBOR wire format of the real `/dev/nsm`.

The Nitro Secure Module speaks serde_cbor 0.11 (see docs/reference/nitro-attestation-nsm-eif.md
§1): a unit variant is a bare text string (`"DescribeNSM"`), a struct variant is
`{"Name": {field: value, ...}}` with fields in Rust declaration order, a newtype variant is
`{"Name": value}` (only `{"Error": "<ErrorCode>"}`), `None` is CBOR null, byte buffers are byte
strings. Decoders match fields by name and, like serde's derive, ignore unknown fields and treat a
missing `Option` field as absent. Both directions enforce the driver's size limits.

One codec serves every message: a message class is declared by its dataclass fields alone (the
wire variant name follows from the class name, each field's kind from its annotation), and the
validation, the encoder and the decoder all read that declaration.

This module is vendored into the enclave image: stdlib, cbor2 and enclavekit.errors only.
"""

from __future__ import annotations

import enum
import io
from dataclasses import dataclass
from typing import Any

import cbor2

from enclavekit.errors import NsmMessageError

MAX_REQUEST_LEN = 0x1000
MAX_RESPONSE_LEN = 0x3000
NSM_IOCTL_RAW = 0xC0200A00
_U16_MAX = 0xFFFF
_DIGESTS = ("SHA256", "SHA384", "SHA512")


class ErrorCode(enum.IntEnum):
    """The NSM's ErrorCode; the value is the C API number, the name is the wire string."""

    Success = 0
    InvalidArgument = 1
    InvalidIndex = 2
    InvalidResponse = 3
    ReadOnlyIndex = 4
    InvalidOperation = 5
    BufferTooSmall = 6
    InputTooLarge = 7
    InternalError = 8


# ---------------------------------------------------------------- field kinds

_U16 = "u16"
_BYTES = "bytes"
_OPTIONAL_BYTES = "bytes or None"
_BOOL = "bool"
_TEXT = "text"
_U16_SET = "u16 set"
_DIGEST = "digest"
_ERROR_CODE = "error code"


def _check_u16(owner: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U16_MAX:
        raise NsmMessageError(f"NSM {owner}.{name}: expected an integer 0..65535, found {value!r}")


def _checked(owner: str, name: str, kind: str, value: Any) -> Any:
    """`value` as the field keeps it (a u16 set: sorted, unique tuple); else NsmMessageError."""
    where = f"NSM {owner}.{name}"
    if kind == _U16:
        _check_u16(owner, name, value)
    elif kind in (_BYTES, _OPTIONAL_BYTES):
        if not (isinstance(value, bytes) or (value is None and kind == _OPTIONAL_BYTES)):
            raise NsmMessageError(f"{where}: expected {kind}, found {type(value).__name__}")
    elif kind == _BOOL:
        if not isinstance(value, bool):
            raise NsmMessageError(f"{where}: expected a bool, found {type(value).__name__}")
    elif kind == _TEXT:
        if not isinstance(value, str):
            raise NsmMessageError(f"{where}: expected text, found {type(value).__name__}")
    elif kind == _U16_SET:
        if not isinstance(value, (tuple, list, set, frozenset)):
            raise NsmMessageError(
                f"{where}: expected a set of integers, found {type(value).__name__}"
            )
        for index in value:
            _check_u16(owner, f"{name}[]", index)
        return tuple(sorted(set(value)))
    elif kind == _DIGEST:
        if value not in _DIGESTS:
            raise NsmMessageError(
                f"{where}: expected one of {', '.join(_DIGESTS)}, found {value!r}"
            )
    elif not isinstance(value, ErrorCode):  # _ERROR_CODE
        raise NsmMessageError(f"{where}: expected an ErrorCode, found {value!r}")
    return value


Digest = str  # one of _DIGESTS: its own annotation, so the field gets its own kind
# A field's kind follows from its annotation (the annotations are strings: see the __future__
# import above).
_KIND_OF_ANNOTATION = {
    "int": _U16,
    "bytes": _BYTES,
    "bytes | None": _OPTIONAL_BYTES,
    "bool": _BOOL,
    "str": _TEXT,
    "tuple[int, ...]": _U16_SET,
    "Digest": _DIGEST,
    "ErrorCode": _ERROR_CODE,
}


class _Message:
    """Base of every message, declared by its dataclass fields alone.

    `wire` (the serde variant name) is the class name less a `Response` suffix, `kinds` each
    field's kind from its annotation; `newtype` marks the one variant whose body is its single
    field's value, not a map.
    """

    wire = ""
    kinds: dict[str, str] = {}
    newtype = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.wire = cls.__name__.removesuffix("Response")
        annotations = cls.__dict__.get("__annotations__", {})
        cls.kinds = {name: _KIND_OF_ANNOTATION[ann] for name, ann in annotations.items()}

    def __post_init__(self) -> None:
        for name, kind in self.kinds.items():
            object.__setattr__(self, name, _checked(self.wire, name, kind, getattr(self, name)))


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class DescribePCR(_Message):
    """Read one PCR and its lock state."""

    index: int


@dataclass(frozen=True)
class ExtendPCR(_Message):
    """Extend one PCR: new = SHA384(old || data)."""

    index: int
    data: bytes


@dataclass(frozen=True)
class LockPCR(_Message):
    """Lock one PCR against further extension."""

    index: int


@dataclass(frozen=True)
class LockPCRs(_Message):
    """Lock PCRs [0, range)."""

    range: int


@dataclass(frozen=True)
class DescribeNSM(_Message):
    """Ask for the NSM's version, module id and PCR facts."""


@dataclass(frozen=True)
class Attestation(_Message):
    """Ask for a signed attestation document carrying these optional fields."""

    user_data: bytes | None = None
    nonce: bytes | None = None
    public_key: bytes | None = None


@dataclass(frozen=True)
class GetRandom(_Message):
    """Ask for random bytes."""


Request = DescribePCR | ExtendPCR | LockPCR | LockPCRs | DescribeNSM | Attestation | GetRandom


# ---------------------------------------------------------------- responses


@dataclass(frozen=True)
class DescribePCRResponse(_Message):
    """A PCR's lock state and value."""

    lock: bool
    data: bytes


@dataclass(frozen=True)
class ExtendPCRResponse(_Message):
    """The PCR's value after the extension."""

    data: bytes


@dataclass(frozen=True)
class LockPCRResponse(_Message):
    """LockPCR succeeded."""


@dataclass(frozen=True)
class LockPCRsResponse(_Message):
    """LockPCRs succeeded."""


@dataclass(frozen=True)
class DescribeNSMResponse(_Message):
    """The NSM's description; locked_pcrs is kept sorted and unique like Rust's BTreeSet."""

    version_major: int
    version_minor: int
    version_patch: int
    module_id: str
    max_pcrs: int
    locked_pcrs: tuple[int, ...]
    digest: Digest


@dataclass(frozen=True)
class AttestationResponse(_Message):
    """The COSE_Sign1 attestation document bytes."""

    document: bytes


@dataclass(frozen=True)
class GetRandomResponse(_Message):
    """Random bytes from the NSM."""

    random: bytes


@dataclass(frozen=True)
class ErrorResponse(_Message):
    """The NSM refused the request with this code."""

    newtype = True

    code: ErrorCode


Response = (
    DescribePCRResponse
    | ExtendPCRResponse
    | LockPCRResponse
    | LockPCRsResponse
    | DescribeNSMResponse
    | AttestationResponse
    | GetRandomResponse
    | ErrorResponse
)

_REQUESTS: tuple[type[_Message], ...] = (
    DescribePCR,
    ExtendPCR,
    LockPCR,
    LockPCRs,
    DescribeNSM,
    Attestation,
    GetRandom,
)
_RESPONSES: tuple[type[_Message], ...] = (
    DescribePCRResponse,
    ExtendPCRResponse,
    LockPCRResponse,
    LockPCRsResponse,
    DescribeNSMResponse,
    AttestationResponse,
    GetRandomResponse,
    ErrorResponse,
)


# ---------------------------------------------------------------- encoding


def _to_wire(kind: str, value: Any) -> Any:
    if kind == _U16_SET:
        return list(value)
    if kind == _ERROR_CODE:
        return value.name
    return value


def _encode(message: object, what: str, kinds: tuple[type[_Message], ...], limit: int) -> bytes:
    if not isinstance(message, kinds):
        raise NsmMessageError(
            f"NSM {what}: expected a {what} object, found {type(message).__name__}"
        )
    names = list(message.kinds)  # the dataclass fields, in order
    body = {n: _to_wire(message.kinds[n], getattr(message, n)) for n in names}
    if not names:
        value: Any = message.wire
    elif message.newtype:
        value = {message.wire: body[names[0]]}
    else:
        value = {message.wire: body}
    raw = cbor2.dumps(value)
    if len(raw) > limit:
        raise NsmMessageError(f"NSM {what}: expected at most {limit} bytes, found {len(raw)}")
    return raw


def encode_request(request: Request) -> bytes:
    """The request's CBOR bytes exactly as the Rust client serializes them."""
    return _encode(request, "request", _REQUESTS, MAX_REQUEST_LEN)


def encode_response(response: Response) -> bytes:
    """The response's CBOR bytes exactly as the NSM serializes them."""
    return _encode(response, "response", _RESPONSES, MAX_RESPONSE_LEN)


# ---------------------------------------------------------------- decoding


def _loads(data: object, what: str, limit: int) -> Any:
    """One CBOR item filling `data` exactly; any failure becomes NsmMessageError."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise NsmMessageError(f"NSM {what}: expected bytes, found {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise NsmMessageError(f"NSM {what}: expected a CBOR message, found 0 bytes")
    if len(data) > limit:
        raise NsmMessageError(f"NSM {what}: expected at most {limit} bytes, found {len(data)}")
    return cbor_item(data, max_depth=16, error=NsmMessageError, where=f"NSM {what}")


def cbor_item(data: bytes, *, max_depth: int, error: type[Exception], where: str) -> Any:
    """The one CBOR item filling `data` exactly: bounded nesting, duplicate map keys refused.

    The strict reader of what the NSM writes (its messages here, its attestation documents in
    enclavekit.attestation); any failure is raised as `error("<where>: expected ...")`.
    """
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(stream, max_depth=max_depth, allow_duplicate_keys=False).decode()
    except Exception as exc:  # cbor2 raises assorted types on hostile input; all mean "not CBOR"
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise error(f"{where}: expected CBOR, found undecodable bytes ({reason})") from None
    if stream.tell() != len(data):
        raise error(
            f"{where}: expected one CBOR item, found {len(data) - stream.tell()} trailing bytes"
        )
    return value


_UNIT = object()  # the body of a unit variant, which serde_cbor writes as a bare string


def _variant(value: Any, what: str) -> tuple[str, Any]:
    """(name, body) of a serde enum value: a bare text string or a map with one text key."""
    if isinstance(value, str):
        return value, _UNIT
    if isinstance(value, dict) and len(value) == 1:
        ((name, body),) = value.items()
        if isinstance(name, str):
            return name, body
    raise NsmMessageError(
        f"NSM {what}: expected a text variant name or a one-entry map, found {_describe(value)}"
    )


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return f"a map of {len(value)} entries"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _shape(body: Any) -> str:
    return " as a bare string" if body is _UNIT else " as a map"


def _from_wire(owner: str, name: str, kind: str, value: Any, what: str) -> Any:
    if kind == _U16_SET:
        if not isinstance(value, list):
            raise NsmMessageError(
                f"NSM {owner}.{name}: expected an array, found {_describe(value)}"
            )
        return tuple(value)
    if kind == _ERROR_CODE:
        if not isinstance(value, str) or value not in ErrorCode.__members__:
            raise NsmMessageError(
                f"NSM {what} {owner}: expected an ErrorCode name, found {_describe(value)}"
            )
        return ErrorCode[value]
    return value


def _decode(data: object, what: str, kinds: tuple[type[_Message], ...], limit: int) -> Any:
    """Parse one message the way serde_cbor does (`NsmMessageError` if invalid)."""
    name, body = _variant(_loads(data, what, limit), what)
    cls = next((k for k in kinds if k.wire == name), None)
    names = list(cls.kinds) if cls is not None else []
    if cls is not None and cls.newtype:
        field = names[0]
        return cls(_from_wire(name, field, cls.kinds[field], body, what))
    if cls is not None and not names and body is _UNIT:
        return cls()
    if cls is not None and names:
        if not isinstance(body, dict):
            found = "a bare string" if body is _UNIT else _describe(body)
            raise NsmMessageError(f"NSM {what} {name}: expected a map of fields, found {found}")
        values = {}
        for field in names:
            kind = cls.kinds[field]
            if field not in body:
                if kind == _OPTIONAL_BYTES:
                    values[field] = None
                    continue
                raise NsmMessageError(f"NSM {name}: expected field {field!r}, found it missing")
            values[field] = _from_wire(name, field, kind, body[field], what)
        return cls(**values)
    raise NsmMessageError(
        f"NSM {what}: expected one of {', '.join(k.wire for k in kinds)}, "
        f"found {_describe(name)}{_shape(body)}"
    )


def decode_request(data: bytes) -> Request:
    """Parse request bytes the way the NSM's serde_cbor does (`NsmMessageError` if invalid)."""
    return _decode(data, "request", _REQUESTS, MAX_REQUEST_LEN)


def decode_response(data: bytes) -> Response:
    """Parse response bytes from the NSM (`NsmMessageError` if invalid)."""
    return _decode(data, "response", _RESPONSES, MAX_RESPONSE_LEN)
