"""Strictness of the declaration-driven codecs (nsm's _Message, provisioning's WireObject) and
of the shared accept loop, pinned field by field.

The codecs derive validation from each class's annotations, so a new field or a loosened kind
table would weaken every decoder at once without any one test noticing. These tests walk every
message class and every field the way an attacker (a hostile NSM reply, a hostile parent)
would: wrong types, bools for integers, out-of-range values, unknown keys, wrong shapes.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import cbor2
import pytest

from enclavekit import nsm
from enclavekit.errors import InvalidInput, NsmMessageError
from enclavekit.provisioning import (
    Attest,
    AttestResult,
    CertificateBundle,
    Challenge,
    ChallengeAnswer,
    Credentials,
    ErrorReply,
    Message,
    Provision,
    Provisioned,
    SecretSpec,
    Status,
    StatusReport,
    decode_message,
    encode_message,
)

# ------------------------------------------------------------------------------------- NSM

_NSM_SAMPLE: dict[str, Any] = {
    "int": 3,
    "bytes": b"d",
    "bytes | None": b"o",
    "bool": True,
    "str": "i-0-enc",
    "tuple[int, ...]": (1, 2),
    "Digest": "SHA384",
    "ErrorCode": nsm.ErrorCode.InvalidIndex,
}
# Wire values each field kind must refuse (every one of them is some other CBOR type).
_NSM_HOSTILE: dict[str, list[Any]] = {
    "int": [True, False, -1, 65536, 2**64, 1.0, "1", b"\x01", None, [1], {"a": 1}],
    "bytes": [None, "x", 1, True, [], {}, [b"x"]],
    "bytes | None": ["x", 1, True, [], {}, [b"x"]],
    "bool": [0, 1, None, "true", b"\x01", []],
    "str": [b"x", 1, None, True, [], {}],
    "tuple[int, ...]": [None, 1, "1", b"\x01", {1: 1}, [True], [65536], [-1], ["1"], [None]],
    "Digest": ["SHA1", "sha384", b"SHA384", None, 1, True, ["SHA384"]],
    "ErrorCode": ["bogus", "invalidindex", 1, None, True, ["InvalidIndex"], {"InvalidIndex": 1}],
}
_NSM_CLASSES = [
    (cls, nsm.decode_response if cls.__name__.endswith("Response") else nsm.decode_request)
    for cls in (
        nsm.DescribePCR,
        nsm.ExtendPCR,
        nsm.LockPCR,
        nsm.LockPCRs,
        nsm.DescribeNSM,
        nsm.Attestation,
        nsm.GetRandom,
        nsm.DescribePCRResponse,
        nsm.ExtendPCRResponse,
        nsm.LockPCRResponse,
        nsm.LockPCRsResponse,
        nsm.DescribeNSMResponse,
        nsm.AttestationResponse,
        nsm.GetRandomResponse,
        nsm.ErrorResponse,
    )
]


def _nsm_sample(cls: type) -> Any:
    return cls(**{f.name: _NSM_SAMPLE[f.type] for f in dataclasses.fields(cls)})


def _nsm_encode(obj: Any) -> bytes:
    if type(obj).__name__.endswith("Response"):
        return nsm.encode_response(obj)
    return nsm.encode_request(obj)


@pytest.mark.parametrize(("cls", "decode"), _NSM_CLASSES, ids=lambda c: getattr(c, "__name__", ""))
def test_nsm_every_field_refuses_every_wrong_kind(cls: type, decode: Any) -> None:
    """A hostile NSM (or client) cannot slip a wrong-typed value past any field's decoder."""
    sample = _nsm_sample(cls)
    wire = cbor2.loads(_nsm_encode(sample))
    assert decode(cbor2.dumps(wire)) == sample
    fields = dataclasses.fields(cls)
    if not fields:
        assert isinstance(wire, str)
        for body in ({}, [], None, 0, {"x": 1}):
            with pytest.raises(NsmMessageError):
                decode(cbor2.dumps({wire: body}))
        return
    ((name, body),) = wire.items()
    if not isinstance(body, dict):  # the newtype variant ({"Error": "<code>"})
        (field,) = fields
        for bad in _NSM_HOSTILE[field.type]:
            with pytest.raises(NsmMessageError):
                decode(cbor2.dumps({name: bad}))
        with pytest.raises(NsmMessageError):
            decode(cbor2.dumps(name))
        return
    for field in fields:
        for bad in _NSM_HOSTILE[field.type]:
            with pytest.raises(NsmMessageError):
                decode(cbor2.dumps({name: {**body, field.name: bad}}))
        missing = {k: v for k, v in body.items() if k != field.name}
        if field.type == "bytes | None":
            assert getattr(decode(cbor2.dumps({name: missing})), field.name) is None
        else:
            with pytest.raises(NsmMessageError, match=f"expected field '{field.name}'"):
                decode(cbor2.dumps({name: missing}))
    # serde's derive ignores unknown fields, exactly as before the codec was generic
    assert decode(cbor2.dumps({name: {**body, "unknown": 1, "x": b"y"}})) == sample
    for shape in (name, {name: [list(body.values())]}, {name: None}, {name: 1}, [wire]):
        with pytest.raises(NsmMessageError):
            decode(cbor2.dumps(shape))
    raw = cbor2.dumps(wire)
    for broken in (raw + b"\x00", raw[:-1], raw * 2):
        with pytest.raises(NsmMessageError):
            decode(broken)


def test_nsm_variant_names_do_not_cross_directions() -> None:
    """A response variant is not a request (and back): Error is a response only."""
    with pytest.raises(NsmMessageError):
        nsm.decode_request(cbor2.dumps({"Error": "InvalidIndex"}))
    with pytest.raises(NsmMessageError):
        nsm.decode_response(cbor2.dumps("DescribeNSM"))
    with pytest.raises(NsmMessageError):
        nsm.decode_request(cbor2.dumps("LockPCR"))


# ------------------------------------------------------------------------------ provisioning

_B64 = base64.b64encode
_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
_PROVISIONING_SAMPLES: list[Message] = [
    Provision(
        region="eu-west-2",
        credentials=Credentials("AKIA", "secret", "token", "2030-01-01T00:00:00Z"),
        kms_proxy_port=8001,
        certificate=CertificateBundle(_PEM, _PEM, _B64(b"ct").decode(), "kms"),
        secrets=(SecretSpec("app", "AAAA", "alias/app"),),
        refresh_interval_secs=5,
    ),
    Provision(region="us-east-1", credentials=Credentials("AKIA", "secret")),
    Status(),
    Challenge("app", b"n" * 16),
    Attest(),
    Attest(nonce=b"n" * 16),
    Provisioned("ready", "ab" * 32, ("app",)),
    StatusReport(
        "ready", "i-0-enc", "cd" * 32, "ab", "CN=x", "2030", ("app",), 1.5, 2.0, 3, "oops"
    ),
    StatusReport("waiting", "i-0-enc", "cd" * 32),
    ChallengeAnswer("app", b"m" * 32),
    AttestResult(b"doc"),
    ErrorReply("BadRequest", "no"),
]


def _hostile_json(value: Any) -> list[Any]:
    """JSON values of another type than `value` (plus the type's own bad cases)."""
    if isinstance(value, bool):
        return [1, "true", None, [], {}]
    if isinstance(value, str):
        return [1, True, 1.5, [], {}, [value]]
    if isinstance(value, int | float):
        return [True, False, str(value), [], {}, [value]]
    if isinstance(value, list):
        return [True, 1, "x", {}, [1], [None], [True]]
    if isinstance(value, dict):
        return [True, 1, "x", [], [value]]
    return [True, [], {}]  # None: an optional field left out


def _objects(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every JSON object in `obj` (the message itself and nested value objects)."""
    found = [path] if isinstance(obj, dict) else []
    items = (
        obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    )
    for key, value in items:
        found += _objects(value, (*path, key))
    return found


def _at(obj: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


@pytest.mark.parametrize("msg", _PROVISIONING_SAMPLES, ids=lambda m: type(m).__name__)
def test_provisioning_refuses_unknown_keys_and_wrong_types_everywhere(msg: Message) -> None:
    """A hostile parent cannot add a key or mistype a value anywhere in a message."""
    wire = json.loads(encode_message(msg))
    assert decode_message(json.dumps(wire).encode()) == msg
    for path in _objects(wire):
        for extra in ("extra", "endpoint", "kms_endpoint", "nonce", "Region", "ACCESSKEYID"):
            if extra in _at(wire, path):
                continue
            mutated = json.loads(json.dumps(wire))
            _at(mutated, path)[extra] = "x"
            with pytest.raises(InvalidInput, match="unknown field"):
                decode_message(json.dumps(mutated).encode())
        for key, value in list(_at(wire, path).items()):
            if not path and key in ("version", "type"):
                continue
            for bad in _hostile_json(value):
                mutated = json.loads(json.dumps(wire))
                _at(mutated, path)[key] = bad
                with pytest.raises(InvalidInput):
                    decode_message(json.dumps(mutated).encode())
            if isinstance(key, str) and key.endswith("_b64") and value is not None:
                for bad in ("!!", "", "AAA", "AA==\n", " AAAA"):
                    mutated = json.loads(json.dumps(wire))
                    _at(mutated, path)[key] = bad
                    with pytest.raises(InvalidInput):
                        decode_message(json.dumps(mutated).encode())


@pytest.mark.parametrize("version", [True, "1", 2, 0, None])
def test_provisioning_version_is_exactly_the_integer_one(version: Any) -> None:
    with pytest.raises(InvalidInput):
        decode_message(json.dumps({"version": version, "type": "Status"}).encode())


# ---------------------------------------------------------------------- accept loops


def test_vsock_proxy_serves_at_most_workers_connections_at_once(tmp_path: Path) -> None:
    """A flood of vsock connections is served by the bounded pool, never a thread each."""
    from enclavekit.transport import EmulatedVsock
    from local_backend.emulator.vsock_proxy import Allowlist, VsockProxy

    upstream = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    accepting = threading.Event()

    def hold() -> None:
        upstream.settimeout(0.2)
        while not accepting.is_set():
            try:
                held.append(upstream.accept()[0])
            except OSError:
                continue

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    config = tmp_path / "vsock-proxy.yaml"
    config.write_text("allowlist:\n- {address: kms.us-east-1.amazonaws.com, port: 443}\n")
    (tmp_path / "vsock" / "3").mkdir(parents=True)
    proxy = VsockProxy(
        8000,
        "kms.us-east-1.amazonaws.com",
        443,
        allowlist=Allowlist.load(config),
        vsock=EmulatedVsock(tmp_path / "vsock", 3),
        tls_endpoint=f"https://127.0.0.1:{upstream.getsockname()[1]}",
        workers=2,
    ).start()
    clients = []
    try:
        for _ in range(12):
            clients.append(EmulatedVsock(tmp_path / "vsock", 16).connect(3, 8000))
        deadline = time.monotonic() + 5
        while len(held) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        serving = [t for t in threading.enumerate() if t.name.startswith("vsock-proxy_")]
        conn_threads = [t for t in threading.enumerate() if t.name == "vsock-proxy-conn"]
        assert len(held) == 2, "the pool must bound the relayed connections to `workers`"
        assert len(serving) <= 2 and not conn_threads
    finally:
        for c in clients:
            c.close()
        proxy.stop()
        accepting.set()
        holder.join(5)
        for c in held:
            c.close()
        upstream.close()


def _listening_addresses(port: int) -> set[str]:
    """The local IPv4 addresses with a TCP listener on `port` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return found


def test_loopback_servers_listen_on_127_0_0_1_only(tmp_path: Path) -> None:
    """The TLS front and the enclave's KMS forwarder are never reachable off the host."""
    from enclave_app.forwarder import LoopbackForwarder
    from enclavekit.transport import EmulatedVsock, loopback_listener
    from local_backend.tls_front import TlsFront, endpoint_ca

    sock, port = loopback_listener()
    try:
        assert _listening_addresses(port) == {"127.0.0.1"}
    finally:
        sock.close()
    fwd = LoopbackForwarder(EmulatedVsock(tmp_path, 16), 3, 8000, connect_target="kms:443")
    front = TlsFront(endpoint_ca(tmp_path), ("127.0.0.1", 1))
    try:
        assert _listening_addresses(fwd.listen_port) == {"127.0.0.1"}
        assert _listening_addresses(front.port) == {"127.0.0.1"}
    finally:
        fwd.stop()
        front.stop()
