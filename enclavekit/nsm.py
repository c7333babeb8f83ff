"""NSM request/response messages in the exact CBOR wire format of the real `/dev/nsm`.

The Nitro Secure Module speaks serde_cbor 0.11 (see docs/reference/nitro-attestation-nsm-eif.md
§1): a unit variant is a bare text string (`"DescribeNSM"`), a struct variant is
`{"Name": {field: value, ...}}` with fields in Rust declaration order, a newtype variant is
`{"Name": value}` (only `{"Error": "<ErrorCode>"}`), `None` is CBOR null, byte buffers are byte
strings. Decoders match fields by name and, like serde's derive, ignore unknown fields and treat a
missing `Option` field as absent. Both directions enforce the driver's size limits.

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


def _check_u16(owner: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U16_MAX:
        raise NsmMessageError(f"NSM {owner}.{name}: expected an integer 0..65535, found {value!r}")


def _check_bytes(owner: str, name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, bytes):
        kind = "bytes or None" if optional else "bytes"
        raise NsmMessageError(f"NSM {owner}.{name}: expected {kind}, found {type(value).__name__}")


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class DescribePCR:
    """Read one PCR and its lock state."""

    index: int

    def __post_init__(self) -> None:
        _check_u16("DescribePCR", "index", self.index)


@dataclass(frozen=True)
class ExtendPCR:
    """Extend one PCR: new = SHA384(old || data)."""

    index: int
    data: bytes

    def __post_init__(self) -> None:
        _check_u16("ExtendPCR", "index", self.index)
        _check_bytes("ExtendPCR", "data", self.data)


@dataclass(frozen=True)
class LockPCR:
    """Lock one PCR against further extension."""

    index: int

    def __post_init__(self) -> None:
        _check_u16("LockPCR", "index", self.index)


@dataclass(frozen=True)
class LockPCRs:
    """Lock PCRs [0, range)."""

    range: int

    def __post_init__(self) -> None:
        _check_u16("LockPCRs", "range", self.range)


@dataclass(frozen=True)
class DescribeNSM:
    """Ask for the NSM's version, module id and PCR facts."""


@dataclass(frozen=True)
class Attestation:
    """Ask for a signed attestation document carrying these optional fields."""

    user_data: bytes | None = None
    nonce: bytes | None = None
    public_key: bytes | None = None

    def __post_init__(self) -> None:
        for name in ("user_data", "nonce", "public_key"):
            _check_bytes("Attestation", name, getattr(self, name), optional=True)


@dataclass(frozen=True)
class GetRandom:
    """Ask for random bytes."""


Request = DescribePCR | ExtendPCR | LockPCR | LockPCRs | DescribeNSM | Attestation | GetRandom


# ---------------------------------------------------------------- responses


@dataclass(frozen=True)
class DescribePCRResponse:
    """A PCR's lock state and value."""

    lock: bool
    data: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.lock, bool):
            raise NsmMessageError(
                f"NSM DescribePCR.lock: expected a bool, found {type(self.lock).__name__}"
            )
        _check_bytes("DescribePCR", "data", self.data)


@dataclass(frozen=True)
class ExtendPCRResponse:
    """The PCR's value after the extension."""

    data: bytes

    def __post_init__(self) -> None:
        _check_bytes("ExtendPCR", "data", self.data)


@dataclass(frozen=True)
class LockPCRResponse:
    """LockPCR succeeded."""


@dataclass(frozen=True)
class LockPCRsResponse:
    """LockPCRs succeeded."""


@dataclass(frozen=True)
class DescribeNSMResponse:
    """The NSM's description; locked_pcrs is kept sorted and unique like Rust's BTreeSet."""

    version_major: int
    version_minor: int
    version_patch: int
    module_id: str
    max_pcrs: int
    locked_pcrs: tuple[int, ...]
    digest: str

    def __post_init__(self) -> None:
        for name in ("version_major", "version_minor", "version_patch", "max_pcrs"):
            _check_u16("DescribeNSM", name, getattr(self, name))
        if not isinstance(self.module_id, str):
            raise NsmMessageError(
                f"NSM DescribeNSM.module_id: expected text, found {type(self.module_id).__name__}"
            )
        if not isinstance(self.locked_pcrs, (tuple, list, set, frozenset)):
            raise NsmMessageError(
                "NSM DescribeNSM.locked_pcrs: expected a set of integers, "
                f"found {type(self.locked_pcrs).__name__}"
            )
        for index in self.locked_pcrs:
            _check_u16("DescribeNSM", "locked_pcrs[]", index)
        object.__setattr__(self, "locked_pcrs", tuple(sorted(set(self.locked_pcrs))))
        if self.digest not in _DIGESTS:
            raise NsmMessageError(
                f"NSM DescribeNSM.digest: expected one of {', '.join(_DIGESTS)}, "
                f"found {self.digest!r}"
            )


@dataclass(frozen=True)
class AttestationResponse:
    """The COSE_Sign1 attestation document bytes."""

    document: bytes

    def __post_init__(self) -> None:
        _check_bytes("Attestation", "document", self.document)


@dataclass(frozen=True)
class GetRandomResponse:
    """Random bytes from the NSM."""

    random: bytes

    def __post_init__(self) -> None:
        _check_bytes("GetRandom", "random", self.random)


@dataclass(frozen=True)
class ErrorResponse:
    """The NSM refused the request with this code."""

    code: ErrorCode

    def __post_init__(self) -> None:
        if not isinstance(self.code, ErrorCode):
            raise NsmMessageError(f"NSM Error.code: expected an ErrorCode, found {self.code!r}")


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


# ---------------------------------------------------------------- encoding


def _dumps(value: Any, what: str, limit: int) -> bytes:
    raw = cbor2.dumps(value)
    if len(raw) > limit:
        raise NsmMessageError(f"NSM {what}: expected at most {limit} bytes, found {len(raw)}")
    return raw


def encode_request(request: Request) -> bytes:
    """The request's CBOR bytes exactly as the Rust client serializes them."""
    match request:
        case DescribeNSM():
            value: Any = "DescribeNSM"
        case GetRandom():
            value = "GetRandom"
        case DescribePCR(index=index):
            value = {"DescribePCR": {"index": index}}
        case ExtendPCR(index=index, data=data):
            value = {"ExtendPCR": {"index": index, "data": data}}
        case LockPCR(index=index):
            value = {"LockPCR": {"index": index}}
        case LockPCRs(range=rng):
            value = {"LockPCRs": {"range": rng}}
        case Attestation(user_data=user_data, nonce=nonce, public_key=public_key):
            value = {
                "Attestation": {"user_data": user_data, "nonce": nonce, "public_key": public_key}
            }
        case _:
            raise NsmMessageError(
                f"NSM request: expected a request object, found {type(request).__name__}"
            )
    return _dumps(value, "request", MAX_REQUEST_LEN)


def encode_response(response: Response) -> bytes:
    """The response's CBOR bytes exactly as the NSM serializes them."""
    match response:
        case LockPCRResponse():
            value: Any = "LockPCR"
        case LockPCRsResponse():
            value = "LockPCRs"
        case DescribePCRResponse(lock=lock, data=data):
            value = {"DescribePCR": {"lock": lock, "data": data}}
        case ExtendPCRResponse(data=data):
            value = {"ExtendPCR": {"data": data}}
        case DescribeNSMResponse():
            r = response
            value = {
                "DescribeNSM": {
                    "version_major": r.version_major,
                    "version_minor": r.version_minor,
                    "version_patch": r.version_patch,
                    "module_id": r.module_id,
                    "max_pcrs": r.max_pcrs,
                    "locked_pcrs": list(r.locked_pcrs),
                    "digest": r.digest,
                }
            }
        case AttestationResponse(document=document):
            value = {"Attestation": {"document": document}}
        case GetRandomResponse(random=random):
            value = {"GetRandom": {"random": random}}
        case ErrorResponse(code=code):
            value = {"Error": code.name}
        case _:
            raise NsmMessageError(
                f"NSM response: expected a response object, found {type(response).__name__}"
            )
    return _dumps(value, "response", MAX_RESPONSE_LEN)


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
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(stream, max_depth=16, allow_duplicate_keys=False).decode()
    except Exception as exc:  # cbor2 raises assorted types on hostile input; all mean "not CBOR"
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise NsmMessageError(
            f"NSM {what}: expected CBOR, found undecodable bytes ({reason})"
        ) from None
    if stream.tell() != len(data):
        raise NsmMessageError(
            f"NSM {what}: expected one CBOR item, found {len(data) - stream.tell()} trailing bytes"
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


def _fields(name: str, body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        found = "a bare string" if body is _UNIT else _describe(body)
        raise NsmMessageError(f"NSM {what} {name}: expected a map of fields, found {found}")
    return body


def _get(fields: dict[str, Any], owner: str, key: str, *, optional: bool = False) -> Any:
    if key not in fields:
        if optional:
            return None
        raise NsmMessageError(f"NSM {owner}: expected field {key!r}, found it missing")
    return fields[key]


_UNIT_REQUESTS: dict[str, type] = {"DescribeNSM": DescribeNSM, "GetRandom": GetRandom}


def decode_request(data: bytes) -> Request:
    """Parse request bytes the way the NSM's serde_cbor does (`NsmMessageError` if invalid)."""
    name, body = _variant(_loads(data, "request", MAX_REQUEST_LEN), "request")
    if body is _UNIT and name in _UNIT_REQUESTS:
        return _UNIT_REQUESTS[name]()
    if name == "DescribePCR":
        f = _fields(name, body, "request")
        return DescribePCR(index=_get(f, name, "index"))
    if name == "ExtendPCR":
        f = _fields(name, body, "request")
        return ExtendPCR(index=_get(f, name, "index"), data=_get(f, name, "data"))
    if name == "LockPCR":
        f = _fields(name, body, "request")
        return LockPCR(index=_get(f, name, "index"))
    if name == "LockPCRs":
        f = _fields(name, body, "request")
        return LockPCRs(range=_get(f, name, "range"))
    if name == "Attestation":
        f = _fields(name, body, "request")
        return Attestation(
            user_data=_get(f, name, "user_data", optional=True),
            nonce=_get(f, name, "nonce", optional=True),
            public_key=_get(f, name, "public_key", optional=True),
        )
    raise NsmMessageError(
        "NSM request: expected one of DescribePCR, ExtendPCR, LockPCR, LockPCRs, DescribeNSM, "
        f"Attestation, GetRandom, found {_describe(name)}{_shape(body)}"
    )


_UNIT_RESPONSES: dict[str, type] = {"LockPCR": LockPCRResponse, "LockPCRs": LockPCRsResponse}


def decode_response(data: bytes) -> Response:
    """Parse response bytes from the NSM (`NsmMessageError` if invalid)."""
    name, body = _variant(_loads(data, "response", MAX_RESPONSE_LEN), "response")
    if body is _UNIT and name in _UNIT_RESPONSES:
        return _UNIT_RESPONSES[name]()
    if name == "Error":
        if not isinstance(body, str) or body not in ErrorCode.__members__:
            raise NsmMessageError(
                f"NSM response Error: expected an ErrorCode name, found {_describe(body)}"
            )
        return ErrorResponse(ErrorCode[body])
    if name == "DescribePCR":
        f = _fields(name, body, "response")
        return DescribePCRResponse(lock=_get(f, name, "lock"), data=_get(f, name, "data"))
    if name == "ExtendPCR":
        f = _fields(name, body, "response")
        return ExtendPCRResponse(data=_get(f, name, "data"))
    if name == "DescribeNSM":
        f = _fields(name, body, "response")
        locked = _get(f, name, "locked_pcrs")
        if not isinstance(locked, list):
            raise NsmMessageError(
                f"NSM DescribeNSM.locked_pcrs: expected an array, found {_describe(locked)}"
            )
        return DescribeNSMResponse(
            version_major=_get(f, name, "version_major"),
            version_minor=_get(f, name, "version_minor"),
            version_patch=_get(f, name, "version_patch"),
            module_id=_get(f, name, "module_id"),
            max_pcrs=_get(f, name, "max_pcrs"),
            locked_pcrs=tuple(locked),
            digest=_get(f, name, "digest"),
        )
    if name == "Attestation":
        f = _fields(name, body, "response")
        return AttestationResponse(document=_get(f, name, "document"))
    if name == "GetRandom":
        f = _fields(name, body, "response")
        return GetRandomResponse(random=_get(f, name, "random"))
    raise NsmMessageError(
        "NSM response: expected one of DescribePCR, ExtendPCR, LockPCR, LockPCRs, DescribeNSM, "
        f"Attestation, GetRandom, Error, found {_describe(name)}{_shape(body)}"
    )
