"""The p11ne RPC wire format, as aws-nitro-enclaves-acm `src/vtok_rpc` defines it.

Transport (`transport.rs`): one request per connection, `POST /rpc/v1 HTTP/1.1`, only the
headers `Content-Type: application/json` and `Content-Length: N` (any other header is a parse
error), at most 1 KiB of head and 64 KiB of body, 1 s I/O timeout; the answer's status line is
`200 OK` (no HTTP version), then the same two headers and a JSON body. A request that does not
parse (bad line, header, URL, JSON or field) gets no answer: the server closes the connection.

Body (`api.rs`, serde's externally tagged enums): a request is `"DescribeDevice"` or
`{"<Call>": {fields}}`; an answer is `{"Ok": "None"}`, `{"Ok": {"DeviceDescription": ...}}`,
`{"Ok": {"TokenDescription": ...}}`, `{"Err": "<ApiError>"}` or
`{"Err": {"InvalidArgs": "<Error>"}}` (`{"InvalidArgs": {"DuplicateKeyId": 1}}` for the two
variants that carry a value). Struct fields missing → parse error, unknown fields ignored,
`Option` fields may be absent. Validation (`validators`) as AWS: PIN 4..64 bytes, label 1..32
bytes, key ids and key labels unique within a token.

Pure stdlib: this module is copied into the ACM enclave image and also used by parent-side
clients (tests, the ACM agent).
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any

API_URL = "/rpc/v1"
MAX_HEAD = 1024
MAX_BODY = 64 * 1024
TIMEOUT_S = 1.0
MIN_PIN, MAX_PIN = 4, 64
MIN_LABEL, MAX_LABEL = 1, 32
MAX_SLOTS = 128
TOKEN_EXPIRY_SECS = 48 * 3600
MODEL, MANUFACTURER = "p11ne-token", "Amazon"

CALLS = (
    "AddToken",
    "DescribeDevice",
    "DescribeToken",
    "RefreshToken",
    "RemoveToken",
    "UpdateToken",
)
API_ERRORS = (
    "AccessDenied",
    "EmptyToken",
    "InternalError",
    "TokenLabelInUse",
    "TokenNotFound",
    "TooManyTokens",
    "TokenProvisioningFailed",
    "TokenRefreshFailed",
    "TokenKeyDecodingFailed",
    "KmsDecryptFailed",
)


class ParseError(Exception):
    """The request does not parse: AWS's server answers nothing and closes the connection."""


class ApiError(Exception):
    """An `ApiError` answer: `value` is its JSON form (`"TokenNotFound"`, `{"InvalidArgs": ..}`)."""

    def __init__(self, value: Any) -> None:
        super().__init__(json.dumps(value))
        self.value = value


def invalid_args(error: Any) -> ApiError:
    return ApiError({"InvalidArgs": error})


# ------------------------------------------------------------------------------- schema


def _field(obj: dict[str, Any], name: str, kind: type, *, optional: bool = False) -> Any:
    if name not in obj or (optional and obj[name] is None):
        if optional:
            return None
        raise ParseError(f"missing field `{name}`")
    value = obj[name]
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
            raise ParseError(f"field `{name}`: expected u8, found {value!r}")
    elif not isinstance(value, kind):
        raise ParseError(f"field `{name}`: expected {kind.__name__}")
    return value


@dataclass(frozen=True)
class EnvelopeKey:
    """`EnvelopeKey::Kms`: the instance role's credentials the enclave calls KMS with."""

    region: str
    access_key_id: str
    secret_access_key: str
    session_token: str

    @classmethod
    def parse(cls, obj: Any) -> EnvelopeKey:
        if not isinstance(obj, dict) or list(obj) != ["Kms"] or not isinstance(obj["Kms"], dict):
            raise ParseError('envelope_key: expected {"Kms": {...}}')
        kms = obj["Kms"]
        return cls(*(_field(kms, f, str) for f in cls.__dataclass_fields__))

    def to_json(self) -> dict[str, Any]:
        return {"Kms": {f: getattr(self, f) for f in self.__dataclass_fields__}}

    def __repr__(self) -> str:  # never the secret parts
        return f"EnvelopeKey(region={self.region!r}, access_key_id={self.access_key_id!r})"


@dataclass(frozen=True)
class PrivateKey:
    encrypted_pem_b64: str
    id: int
    label: str
    cert_pem: str | None = None

    @classmethod
    def parse(cls, obj: Any) -> PrivateKey:
        if not isinstance(obj, dict):
            raise ParseError("keys[]: expected an object")
        return cls(
            _field(obj, "encrypted_pem_b64", str),
            _field(obj, "id", int),
            _field(obj, "label", str),
            _field(obj, "cert_pem", str, optional=True),
        )

    def to_json(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass(frozen=True)
class Token:
    label: str
    pin: str
    envelope_key: EnvelopeKey
    keys: tuple[PrivateKey, ...]

    @classmethod
    def parse(cls, obj: Any) -> Token:
        if not isinstance(obj, dict):
            raise ParseError("token: expected an object")
        keys = _field(obj, "keys", list)
        return cls(
            _field(obj, "label", str),
            _field(obj, "pin", str),
            EnvelopeKey.parse(obj.get("envelope_key")),
            tuple(PrivateKey.parse(k) for k in keys),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "pin": self.pin,
            "envelope_key": self.envelope_key.to_json(),
            "keys": [k.to_json() for k in self.keys],
        }

    def __repr__(self) -> str:
        return f"Token(label={self.label!r}, keys={[k.label for k in self.keys]})"


@dataclass(frozen=True)
class Request:
    """One call and its arguments (`args` holds parsed values: str, Token, EnvelopeKey)."""

    call: str
    args: dict[str, Any]

    def to_json(self) -> Any:
        if self.call == "DescribeDevice":
            return "DescribeDevice"
        args = {k: v.to_json() if hasattr(v, "to_json") else v for k, v in self.args.items()}
        return {self.call: args}


_ARGS: dict[str, tuple[tuple[str, Any], ...]] = {
    "AddToken": (("token", Token.parse),),
    "DescribeToken": (("label", str), ("pin", str)),
    "RefreshToken": (("label", str), ("pin", str), ("envelope_key", EnvelopeKey.parse)),
    "RemoveToken": (("label", str), ("pin", str)),
    "UpdateToken": (("label", str), ("pin", str), ("token", Token.parse)),
}


def parse_request(body: bytes) -> Request:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError(f"body: expected JSON ({exc})") from None
    if obj == "DescribeDevice":
        return Request("DescribeDevice", {})
    if not isinstance(obj, dict) or len(obj) != 1:
        raise ParseError("body: expected one ApiRequest variant")
    ((call, inner),) = obj.items()
    if call not in _ARGS or not isinstance(inner, dict):
        raise ParseError(f"body: unknown variant `{call}`")
    args: dict[str, Any] = {}
    for name, kind in _ARGS[call]:
        if kind is str:
            args[name] = _field(inner, name, str)
        else:
            if name not in inner:
                raise ParseError(f"missing field `{name}`")
            args[name] = kind(inner[name])
    return Request(call, args)


def _check_size(text: str, what: str, lo: int, hi: int) -> None:
    """`InvalidArgs` `<what>TooShort` / `<what>TooLong` outside lo..hi UTF-8 bytes."""
    n = len(text.encode())
    if n < lo:
        raise invalid_args(f"{what}TooShort")
    if n > hi:
        raise invalid_args(f"{what}TooLong")


def _check_pin(pin: str) -> None:
    _check_size(pin, "Pin", MIN_PIN, MAX_PIN)


def _check_label(label: str) -> None:
    _check_size(label, "Label", MIN_LABEL, MAX_LABEL)


def _check_token(token: Token) -> None:
    _check_pin(token.pin)
    _check_label(token.label)
    ids: set[int] = set()
    labels: set[str] = set()
    for key in token.keys:
        if key.id in ids:
            raise invalid_args({"DuplicateKeyId": key.id})
        ids.add(key.id)
        if key.label in labels:
            raise invalid_args({"DuplicateKeyLabel": key.label})
        labels.add(key.label)


def validate(request: Request) -> None:
    """`ApiRequest::validate_args`: raises ApiError({"InvalidArgs": ...})."""
    a = request.args
    if request.call == "AddToken":
        _check_token(a["token"])
    elif request.call != "DescribeDevice":
        _check_pin(a["pin"])
        _check_label(a["label"])
        if request.call == "UpdateToken":
            _check_token(a["token"])


def key_uri(slot_id: int, token_label: str, key_id: int, key_label: str) -> str:
    """The key's PKCS#11 URI as vtok_srv's DescribeToken states it."""
    return (
        f"pkcs11:model={MODEL};manufacturer={MANUFACTURER};serial=EVT{slot_id:02X};"
        f"token={token_label};id=%{key_id:02x};object={key_label};type=private"
    )


# ------------------------------------------------------------------------------- transport


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """(head, start of body) with the head capped at MAX_HEAD bytes, as AWS's Take(1 KiB)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(MAX_HEAD + 1 - len(data))
        if not chunk:
            raise ParseError("connection closed in the head")
        data += chunk
        if len(data) > MAX_HEAD and b"\r\n\r\n" not in data:
            raise ParseError(f"head: expected at most {MAX_HEAD} bytes")
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _content_length(lines: list[bytes]) -> int:
    length = None
    for raw in lines:
        line = raw.decode("latin-1").strip()
        name, sep, value = line.partition(": ")
        if sep and name == "Content-Length":
            if not value.isdigit():
                raise ParseError("Content-Length: expected a number")
            length = int(value)
        elif not (sep and name == "Content-Type" and value == "application/json"):
            raise ParseError(f"header: unexpected {line[:80]!r}")
    if length is None:
        raise ParseError("header: expected Content-Length")
    if length > MAX_BODY:
        raise ParseError(f"Content-Length: expected at most {MAX_BODY}")
    return length


def _read_body(sock: socket.socket, rest: bytes, length: int) -> bytes:
    body = rest[:length]
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            raise ParseError("connection closed in the body")
        body += chunk
    return body


def read_request(sock: socket.socket) -> bytes:
    """The body of one request on `sock` (ParseError: answer nothing, close)."""
    head, rest = _read_head(sock)
    first, *headers = head.split(b"\r\n")
    parts = first.decode("latin-1").split()
    if len(parts) != 3 or parts[0] != "POST" or parts[2] != "HTTP/1.1":
        raise ParseError("request line: expected POST <url> HTTP/1.1")
    if parts[1] != API_URL:
        raise ParseError(f"request line: expected the URL {API_URL}")
    return _read_body(sock, rest, _content_length(headers))


def _frame(first_line: str, body: bytes) -> bytes:
    return (
        f"{first_line}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def encode_response(value: Any) -> bytes:
    return _frame("200 OK", json.dumps(value, separators=(",", ":")).encode())


def encode_request(request: Request) -> bytes:
    return _frame(f"POST {API_URL} HTTP/1.1", json.dumps(request.to_json()).encode())


def read_response(sock: socket.socket) -> Any:
    """The JSON answer on `sock`; ConnectionError if the server answered nothing."""
    try:
        head, rest = _read_head(sock)
    except ParseError as exc:
        raise ConnectionError(f"p11ne RPC: no answer ({exc})") from None
    first, *headers = head.split(b"\r\n")
    if first.split()[:2] != [b"200", b"OK"]:
        raise ConnectionError(f"p11ne RPC: expected '200 OK', got {first[:60]!r}")
    return json.loads(_read_body(sock, rest, _content_length(headers)))


def call(sock: socket.socket, request: Request) -> Any:
    """Send `request` on a connected socket and return the decoded answer (`{"Ok": ..}` or
    `{"Err": ..}`). The socket serves this one request."""
    sock.sendall(encode_request(request))
    return read_response(sock)
