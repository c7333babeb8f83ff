"""The enclave program's control port, driven as the parent drives it, over emulated vsock, with
real KMS (local, PCR-bound key), the emulator's NSM and vsock-proxy, and a real TLS client.

Budget: ~8 s.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import serialization
from enclave_app_support import (
    DOMAIN,
    ENCLAVE_CID,
    MEASUREMENTS,
    MODULE_ID,
    OTHER_IMAGE,
    SECRET,
    KmsWorld,
    kms_world,
    nsm_device,
    pem,
)

from enclave_app.attester import Attester
from enclave_app.control import ControlServer
from enclave_app.keys import RecipientKey
from enclave_app.service import EnclaveService
from enclave_app.tls import TlsServer
from enclavekit import attestation
from enclavekit.pki import LocalPki
from enclavekit.provisioning import (
    Attest,
    AttestResult,
    Challenge,
    ChallengeAnswer,
    ErrorReply,
    Provision,
    Provisioned,
    SecretSpec,
    Status,
    StatusReport,
    exchange,
    read_message,
)
from enclavekit.transport import SocketNsm


@dataclass
class Enclave:
    world: KmsWorld
    service: EnclaveService
    key: RecipientKey

    def ask(self, request):
        with self.world.parent_vsock().connect(ENCLAVE_CID, 5005) as sock:
            sock.settimeout(30)
            return exchange(sock, request)

    def provision(self, **over) -> Provision:
        fields = dict(
            region="us-east-1",
            credentials=self.world.role_credentials,
            kms_proxy_port=8000,
            kms_endpoint_scheme="http",
            certificate=self.world.bundle,
            secrets=(
                SecretSpec(
                    "app-secret",
                    base64.b64encode(self.world.secret_blob).decode(),
                    self.world.key_id,
                ),
            ),
            refresh_interval_secs=3600,
        )
        fields.update(over)
        return Provision(**fields)

    def https(self, path: str = "/") -> tuple[dict, bytes]:
        ctx = ssl.create_default_context(cadata=pem(self.world.ca_root))
        raw = self.world.parent_vsock().connect(ENCLAVE_CID, 8443)
        raw.settimeout(10)
        with ctx.wrap_socket(raw, server_hostname=DOMAIN) as tls:
            peer = tls.getpeercert(binary_form=True)
            tls.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n".encode()
            )
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200 OK")
        return json.loads(body), peer


@pytest.fixture(scope="module")
def enclave(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Enclave]:
    tmp = tmp_path_factory.mktemp("enclave-svc")
    with kms_world(tmp) as world, nsm_device(world.nsm_path, world.state):
        vsock = world.enclave_vsock()
        attester = Attester(SocketNsm(world.nsm_path))
        key = RecipientKey.generate()
        tls = TlsServer(vsock.listen(8443), MODULE_ID).start()
        service = EnclaveService(
            attester=attester, key=key, vsock=vsock, module_id=MODULE_ID, tls=tls
        )
        control = ControlServer(vsock.listen(5005), service).start()
        try:
            yield Enclave(world, service, key)
        finally:
            control.stop()
            service.stop()
            tls.stop()
            attester.close()


def test_full_life_cycle(enclave: Enclave, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="enclave_app")
    world = enclave.world
    # waiting: nothing provisioned, no TLS, no secrets
    status = enclave.ask(Status())
    assert isinstance(status, StatusReport) and status.state == "waiting"
    assert status.module_id == MODULE_ID and status.public_key_sha256 == enclave.key.fingerprint
    nonce = b"n" * 32
    assert enclave.ask(Challenge("app-secret", nonce)).code == "NotProvisioned"
    with pytest.raises((ssl.SSLError, OSError)):
        enclave.https()

    # Provision: secret and TLS key decrypted with attestation inside the enclave
    reply = enclave.ask(enclave.provision())
    leaf_der = world.leaf.public_bytes(serialization.Encoding.DER)
    assert reply == Provisioned("ready", hashlib.sha256(leaf_der).hexdigest(), ("app-secret",))

    status = enclave.ask(Status())
    assert status.state == "ready" and status.secrets == ("app-secret",)
    assert status.certificate_subject == f"CN={DOMAIN}" and status.last_error is None

    # the secret answers challenges, never itself
    answer = enclave.ask(Challenge("app-secret", nonce))
    assert answer == ChallengeAnswer("app-secret", hmac.new(SECRET, nonce, "sha256").digest())
    assert enclave.ask(Challenge("app-secret", b"m" * 32)).mac != answer.mac
    unknown = enclave.ask(Challenge("other", nonce))
    assert isinstance(unknown, ErrorReply) and unknown.code == "UnknownSecret"

    # HTTPS relayed over vsock: the chain verifies for the domain, the answer is the enclave's
    body, peer = enclave.https("/status?probe=1")
    assert peer == leaf_der
    assert body["path"] == "/status?probe=1" and body["enclave_module_id"] == MODULE_ID

    # attestation on request: verifies to the local root, carries our nonce and public key
    doc_reply = enclave.ask(Attest(nonce=nonce))
    assert isinstance(doc_reply, AttestResult)
    doc = attestation.verify(
        doc_reply.document, LocalPki.load_or_create(world.state).trust_anchor()
    )
    assert doc.nonce == nonce and doc.public_key == enclave.key.spki_der
    assert doc.pcrs[0] == MEASUREMENTS.pcr0

    # refresh: fresh attestation, same material
    assert enclave.service.refresh()
    assert enclave.ask(Status()).refresh_count == 1
    assert enclave.https()[1] == leaf_der

    # revocation: the key policy now names another image -> refresh drops the material
    kms = world.client("kms")
    kms.put_key_policy(
        KeyId=world.key_id, PolicyName="default", Policy=world.key_policy(OTHER_IMAGE)
    )
    try:
        assert not enclave.service.refresh()
        status = enclave.ask(Status())
        assert status.state == "failed" and status.secrets == ()
        assert "AccessDeniedException" in status.last_error
        assert enclave.ask(Challenge("app-secret", nonce)).code == "NotProvisioned"
        with pytest.raises((ssl.SSLError, OSError)):
            enclave.https()
        denied = enclave.ask(enclave.provision())
        assert isinstance(denied, ErrorReply) and denied.code == "KmsError"
    finally:
        kms.put_key_policy(KeyId=world.key_id, PolicyName="default", Policy=world.key_policy())
    assert enclave.ask(enclave.provision()).state == "ready"
    assert enclave.https()[1] == leaf_der

    # nothing secret was ever logged
    logged = "\n".join(r.getMessage() for r in caplog.records)
    key_pem_b64 = world.bundle.encrypted_private_key
    for material in (
        SECRET.decode("latin-1"),
        "PRIVATE KEY",
        world.role_credentials.secret_access_key,
        world.role_credentials.session_token,
        key_pem_b64,
        base64.b64encode(SECRET).decode(),
    ):
        assert material not in logged
    assert "provisioned: certificate" in logged


def test_automatic_refresh_on_the_interval(enclave: Enclave) -> None:
    before = enclave.ask(Status()).refresh_count
    assert enclave.ask(enclave.provision(refresh_interval_secs=1)).state == "ready"
    deadline = time.monotonic() + 10
    while enclave.ask(Status()).refresh_count < before + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    status = enclave.ask(Status())
    assert status.refresh_count >= before + 1 and status.state == "ready"
    assert enclave.ask(enclave.provision()).state == "ready"  # back to a long interval


def test_bad_provision_keeps_what_a_good_one_gave(enclave: Enclave) -> None:
    assert enclave.ask(enclave.provision()).state == "ready"
    garbage = SecretSpec("broken", base64.b64encode(b"not a kms ciphertext").decode())
    reply = enclave.ask(enclave.provision(secrets=(garbage,)))
    assert isinstance(reply, ErrorReply) and reply.code == "KmsError"
    assert "Decrypt: expected CiphertextForRecipient, got" in reply.message
    status = enclave.ask(Status())
    assert status.state == "degraded" and status.secrets == ("app-secret",)
    assert enclave.ask(enclave.provision()).state == "ready"


def test_unreadable_request_gets_an_error_and_the_connection_closes(enclave: Enclave) -> None:
    with enclave.world.parent_vsock().connect(ENCLAVE_CID, 5005) as sock:
        sock.settimeout(10)
        payload = b'{"version": 1, "type": "Reboot"}'
        sock.sendall(len(payload).to_bytes(4, "big") + payload)
        reply = read_message(sock)
        assert isinstance(reply, ErrorReply) and reply.code == "BadRequest"
        assert "type: expected one of" in reply.message
        assert sock.recv(1) == b""
    with enclave.world.parent_vsock().connect(ENCLAVE_CID, 5005) as sock:
        sock.settimeout(10)
        reply = exchange(sock, StatusReport("ready", "m", "k"))  # a reply is not a request
        assert reply.code == "BadRequest" and "found StatusReport" in reply.message
        assert isinstance(exchange(sock, Status()), StatusReport)  # connection still usable
