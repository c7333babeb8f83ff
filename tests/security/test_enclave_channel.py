"""Attack 3: the parent plants a KMS of its own and tries to make the enclave believe it.

On AWS the parent carries the enclave's KMS traffic (vsock-proxy) and is the adversary. The
attacker here is a parent-side process with the parent's full powers: it speaks the control
protocol, listens on the parent's vsock ports and knows the enclave's public key (it is in
every attestation document the enclave sends). Its fake KMS answers every call with a
CiphertextForRecipient built to that key around a value of its choosing, over TLS with a
certificate for kms.<region>.amazonaws.com from its own CA, and over plain HTTP for a client
that would accept it. Before the fix the enclave went `ready` and answered challenges with the
planted value; now the enclave refuses the impostor's certificate and keeps its real secret.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
import socket
import ssl
import threading
from pathlib import Path

import pytest
from conftest import SECRET, Target
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclavekit import attestation, cms
from enclavekit import provisioning as prov
from enclavekit.localenv import LOCAL_REGION
from enclavekit.transport import EmulatedVsock

pytestmark = pytest.mark.slow
KMS_HOST = f"kms.{LOCAL_REGION}.amazonaws.com"
PLANTED = b"planted by the parent"
FAKE_PORT = 8111


def _impostor_context(tmp: Path) -> ssl.SSLContext:
    """A server certificate for the KMS host name, from a CA the attacker made."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Totally Amazon Root")])
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, KMS_HOST)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(KMS_HOST)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = tmp / "impostor.pem"
    pem.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pem)
    return ctx


class FakeKms:
    """The parent's KMS: any Decrypt answers PLANTED, sealed to the caller's own key."""

    def __init__(self, vsock: EmulatedVsock, port: int, tls: ssl.SSLContext) -> None:
        self.listener = vsock.listen(port)
        self.tls = tls
        self.handshakes = 0  # TLS ClientHellos that reached us
        self.requests = 0  # HTTP requests we could read (and answered with the plant)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            first = conn.recv(1, socket.MSG_PEEK)
            if first == b"\x16":  # a TLS record: try to be KMS over TLS
                self.handshakes += 1
                conn = self.tls.wrap_socket(conn, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            head, body = head.split(b"\r\n\r\n", 1)
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(body) < length:
                body += conn.recv(4096)
            self.requests += 1
            doc = base64.b64decode(json.loads(body)["Recipient"]["AttestationDocument"])
            public = serialization.load_der_public_key(attestation.decode(doc).public_key)
            answer = json.dumps(
                {
                    "KeyId": "arn:aws:kms:us-east-1:123456789012:key/planted",
                    "CiphertextForRecipient": base64.b64encode(
                        cms.build_enveloped(PLANTED, public)  # type: ignore[arg-type]
                    ).decode(),
                }
            ).encode()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\n"
                + f"Content-Length: {len(answer)}\r\n\r\n".encode()
                + answer
            )
        except (OSError, ValueError, KeyError, StopIteration):
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self.listener.close()


def _control(target: Target, msg: prov.Message) -> prov.Message:
    vsock = target.host.vsock()
    with vsock.connect(target.host.enclave_cid, prov.CONTROL_PORT) as sock:
        sock.settimeout(60)
        return prov.exchange(sock, msg)


def _holds_secret(target: Target, value: bytes) -> bool:
    nonce = secrets.token_bytes(32)
    reply = _control(target, prov.Challenge(name="app-secret", nonce=nonce))
    assert isinstance(reply, prov.ChallengeAnswer), reply
    return hmac.compare_digest(reply.mac, hmac.new(value, nonce, hashlib.sha256).digest())


def _raw_control(target: Target, obj: dict) -> dict:
    """Send a hand-made control message (fields the protocol no longer has)."""
    vsock = target.host.vsock()
    with vsock.connect(target.host.enclave_cid, prov.CONTROL_PORT) as sock:
        sock.settimeout(30)
        data = json.dumps(obj).encode()
        sock.sendall(len(data).to_bytes(4, "big") + data)
        size = int.from_bytes(sock.recv(4), "big")
        reply = b""
        while len(reply) < size:
            reply += sock.recv(size - len(reply))
    return json.loads(reply)


def test_parent_cannot_plant_a_kms_of_its_own(target: Target, tmp_path: Path) -> None:
    assert _holds_secret(target, SECRET)  # the genuine state before the attack
    vsock = target.host.vsock()
    fake = FakeKms(vsock, FAKE_PORT, _impostor_context(tmp_path))
    try:
        creds = prov.Credentials(**_creds(target))
        sealed = base64.b64encode(target.secret_blob).decode()
        msg = prov.Provision(
            region=LOCAL_REGION,
            credentials=creds,
            kms_proxy_port=FAKE_PORT,
            secrets=(prov.SecretSpec("app-secret", sealed, target.key_arn),),
        )
        reply = _control(target, msg)
        # The enclave went to the parent's port, spoke TLS, and refused the certificate:
        assert fake.handshakes >= 1, "the enclave never tried the planted KMS"
        assert fake.requests == 0, "the enclave sent a KMS request to the impostor"
        assert isinstance(reply, prov.ErrorReply), reply
        assert "CERTIFICATE_VERIFY_FAILED" in reply.message or "certificate" in reply.message
        # ...and still holds the real secret, never the planted one
        assert _holds_secret(target, SECRET)
        assert not _holds_secret(target, PLANTED)
        # The old protocol let the parent choose plain HTTP and any host: refused outright.
        for field, value in (("kms_endpoint_scheme", "http"), ("kms_endpoint_host", "localhost")):
            obj = json.loads(prov.encode_message(msg))
            obj[field] = value
            answer = _raw_control(target, obj)
            assert answer["type"] == "Error" and field in answer["message"], answer
        assert fake.requests == 0
    finally:
        fake.stop()


def _creds(target: Target) -> dict[str, str]:
    c = target.role_creds("parent")
    return {
        "access_key_id": c["aws_access_key_id"],
        "secret_access_key": c["aws_secret_access_key"],
        "session_token": c["aws_session_token"],
    }
