"""The parent <-> enclave control protocol: round trips, framing, and one-line errors."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclavekit.errors import InvalidInput
from enclavekit.provisioning import (
    MAX_MESSAGE_LEN,
    Attest,
    AttestResult,
    CertificateBundle,
    Challenge,
    ChallengeAnswer,
    Credentials,
    ErrorReply,
    Provision,
    Provisioned,
    SecretSpec,
    Status,
    StatusReport,
    decode_message,
    encode_message,
    exchange,
    frame,
    read_message,
    write_message,
)

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
CREDS = Credentials("ASIAEXAMPLE", "very-secret-key", "session-token-xyz", "2030-01-01T00:00:00Z")
BUNDLE = CertificateBundle(PEM, PEM, base64.b64encode(b"ciphertext").decode(), "kms")


def _all_messages() -> list:
    return [
        Provision(region="us-east-1", credentials=CREDS),
        Provision(
            region="eu-west-2",
            credentials=Credentials("testing", "testing"),
            kms_proxy_port=8001,
            certificate=BUNDLE,
            secrets=(SecretSpec("app-secret", "AAAA", "alias/app"), SecretSpec("b", "AQID")),
            refresh_interval_secs=5,
        ),
        Status(),
        Challenge("app-secret", b"n" * 16),
        Attest(),
        Attest(nonce=b"\x00" * 512),
        Provisioned("ready", "ab" * 32, ("app-secret",)),
        StatusReport("waiting", "i-0-enc0", "cd" * 32),
        StatusReport(
            "ready",
            "i-0-enc0",
            "cd" * 32,
            "ab" * 32,
            "CN=x",
            "2030-01-01T00:00:00Z",
            ("a", "b"),
            1.5,
            2.5,
            3,
            "KMS said no",
        ),
        ChallengeAnswer("app-secret", bytes(32)),
        AttestResult(b"\x84\x44"),
        ErrorReply("UnknownSecret", "secret 'x': expected one of [], found nothing"),
    ]


@pytest.mark.parametrize("msg", _all_messages(), ids=lambda m: m.TYPE)
def test_round_trip(msg) -> None:
    assert decode_message(encode_message(msg)) == msg


def test_wire_shape_is_the_documented_json() -> None:
    obj = json.loads(encode_message(Provision(region="us-east-1", credentials=CREDS)))
    assert obj["version"] == 1 and obj["type"] == "Provision"
    assert obj["credentials"] == {
        "AccessKeyId": "ASIAEXAMPLE",
        "SecretAccessKey": "very-secret-key",
        "SessionToken": "session-token-xyz",
        "Expiration": "2030-01-01T00:00:00Z",
    }
    assert obj["kms_proxy_port"] == 8000
    default = Provision(region="us-east-1", credentials=CREDS)
    assert default.kms_host == "kms.us-east-1.amazonaws.com"
    assert Provision(region="cn-north-1", credentials=CREDS).kms_host == (
        "kms.cn-north-1.amazonaws.com.cn"
    )
    assert json.loads(encode_message(Challenge("s", b"k" * 16))) == {
        "version": 1,
        "type": "Challenge",
        "name": "s",
        "nonce_b64": base64.b64encode(b"k" * 16).decode(),
    }


def test_repr_never_shows_secret_material() -> None:
    text = repr(
        Provision(
            region="us-east-1",
            credentials=CREDS,
            certificate=BUNDLE,
            secrets=(SecretSpec("s", "c2VjcmV0"),),
        )
    )
    for secret in (
        "very-secret-key",
        "session-token-xyz",
        BUNDLE.encrypted_private_key,
        "c2VjcmV0",
    ):
        assert secret not in text
    assert "ASIAEXAMPLE" in text


def test_bundle_from_s3_object_as_aws_lays_it_out() -> None:
    body = json.dumps(BUNDLE.to_json()).encode()
    assert CertificateBundle.from_s3_object(body) == BUNDLE
    assert BUNDLE.private_key_ciphertext == b"ciphertext"
    with pytest.raises(InvalidInput, match="S3 object: expected JSON"):
        CertificateBundle.from_s3_object(b"\xff")
    with pytest.raises(InvalidInput, match="encryptedPrivateKey: expected a string"):
        CertificateBundle.from_s3_object(json.dumps({"certificate": PEM}))


def _prov(**over) -> bytes:
    obj = json.loads(encode_message(Provision(region="us-east-1", credentials=CREDS)))
    obj.update(over)
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"\xff\xfe", "expected UTF-8 JSON"),
        (b"{", "expected UTF-8 JSON"),
        (b"[1]", "payload: expected a JSON object, found list"),
        (b'{"type":"Status"}', "version: expected 1, found null"),
        (b'{"version":2,"type":"Status"}', "version: expected 1, found int"),
        (b'{"version":true,"type":"Status"}', "version: expected 1, found bool"),
        (b'{"version":1,"type":"Reboot"}', "type: expected one of"),
        (b'{"version":1,"type":"Status","x":1}', "Status: expected only the fields .*'x'"),
        (_prov(region="mars"), r"region: expected an AWS region name.*'mars'"),
        (_prov(kms_proxy_port="8000"), "kms_proxy_port: expected an integer 1..4294967295"),
        (_prov(kms_proxy_port=0), "kms_proxy_port: expected an integer"),
        # the parent may not choose how the enclave reaches KMS (a planted KMS, issue 8.3)
        (_prov(kms_endpoint_scheme="http"), "Provision: expected only the fields .*scheme"),
        (_prov(kms_endpoint_host="localhost"), "Provision: expected only the fields .*host"),
        (_prov(refresh_interval_secs=0), "refresh_interval_secs: expected an integer 1.."),
        (_prov(secrets={}), "secrets: expected a JSON array, found dict"),
        (
            _prov(secrets=[{"name": "a", "ciphertext_b64": "!!"}]),
            r"secrets\[a\].ciphertext_b64: expected base64 text",
        ),
        (
            _prov(secrets=[{"name": "a", "ciphertext_b64": "AA=="}] * 2),
            "secrets: expected unique secret names, found 'a'",
        ),
        (
            _prov(secrets=[{"name": "../x y", "ciphertext_b64": "AA=="}]),
            "name: expected 1..128 characters",
        ),
        (
            _prov(
                certificate={
                    "certificate": "nope",
                    "certificateChain": "",
                    "encryptedPrivateKey": "AA==",
                    "encryptionMethod": "m",
                }
            ),
            "certificate.certificate: expected a PEM certificate",
        ),
        (
            _prov(credentials={"AccessKeyId": "a", "SecretAccessKey": 5}),
            "SecretAccessKey: expected a non-empty string, found int",
        ),
        (
            _prov(credentials={"AccessKeyId": "a", "SecretAccessKey": "b", "Token": "t"}),
            "unknown field 'Token'",
        ),
        (
            b'{"version":1,"type":"Challenge","name":"s","nonce_b64":"AAAA"}',
            "Challenge.nonce_b64: expected 16..512 bytes, found 3 bytes",
        ),
        (
            b'{"version":1,"type":"ChallengeAnswer","name":"s","mac_b64":"AAAA"}',
            "mac_b64: expected 32 bytes",
        ),
        (b'{"version":1,"type":"Error","code":"Oops","message":"m"}', "Error.code: expected one"),
        (b'{"version":1,"type":"Provisioned","state":"happy"}', "state: expected one of"),
        (b"[" * 100000 + b"]" * 100000, "expected UTF-8 JSON"),
    ],
)
def test_bad_input_is_one_line_invalid_input(payload: bytes, match: str) -> None:
    with pytest.raises(InvalidInput, match=match) as info:
        decode_message(payload)
    assert "\n" not in str(info.value)


def test_bad_input_message_never_echoes_a_secret() -> None:
    with pytest.raises(InvalidInput) as info:
        decode_message(_prov(credentials={"AccessKeyId": "a", "SecretAccessKey": ""}))
    assert "very-secret-key" not in str(info.value)


def test_framing_over_a_socket_pair() -> None:
    a, b = socket.socketpair()
    with a, b:
        for msg in _all_messages():
            write_message(a, msg)
            assert read_message(b) == msg
        # a reply comes back through exchange()
        b.sendall(frame(ErrorReply("NotProvisioned", "no Provision received yet")))
        assert exchange(a, Status()) == ErrorReply("NotProvisioned", "no Provision received yet")
        assert read_message(b) == Status()
        # a too-long frame is refused before it is read
        a.sendall(struct.pack(">I", MAX_MESSAGE_LEN + 1))
        with pytest.raises(InvalidInput, match="frame: expected a length of at most"):
            read_message(b)
        # a close mid-message is a ConnectionError, between messages an EOFError
        a.sendall(struct.pack(">I", 10) + b"{}")
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(ConnectionError, match="after 2 of 10 bytes"):
            read_message(b)
    c, d = socket.socketpair()
    with c, d:
        c.close()
        with pytest.raises(EOFError):
            read_message(d)


def test_oversize_message_is_refused_on_encode() -> None:
    big = SecretSpec("big", base64.b64encode(bytes(MAX_MESSAGE_LEN)).decode())
    with pytest.raises(InvalidInput, match="Provision: expected at most"):
        encode_message(Provision(region="us-east-1", credentials=CREDS, secrets=(big,)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_decoder_raises_only_invalid_input_on_bytes(data: bytes) -> None:
    with contextlib.suppress(InvalidInput):
        decode_message(data)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
_keys = st.sampled_from(
    [
        "region",
        "credentials",
        "kms_proxy_port",
        "certificate",
        "secrets",
        "name",
        "nonce_b64",
        "state",
        "mac_b64",
        "document_b64",
        "code",
        "message",
        "refresh_interval_secs",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        [
            "Provision",
            "Status",
            "Challenge",
            "Attest",
            "Provisioned",
            "StatusReport",
            "ChallengeAnswer",
            "AttestResult",
            "Error",
        ]
    ),
    st.dictionaries(_keys, _json, max_size=6),
)
def test_decoder_raises_only_invalid_input_on_json(kind: str, body: dict) -> None:
    payload = json.dumps({"version": 1, "type": kind, **body}).encode()
    with contextlib.suppress(InvalidInput):
        decode_message(payload)
