"""The enclave program's control port, driven as the parent drives it, over emulated vsock, with
real KMS (local, PCR-bound key), the emulator's NSM and vsock-proxy, and a real TLS client.

Also: each secret and the certificate key obtained on its own (one denied item costs only
itself: ``degraded``), with two PCR-bound keys whose policies are changed independently, and
the parent agent's view of a degraded enclave (its result, and the enclave's own Status).

Budget: ~12 s.
"""

from __future__ import annotations

import base64
import contextlib
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
    INSTANCE_ID,
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
from enclavekit.agent import ParentAgent, boto3_clients
from enclavekit.localenv import LOCAL_REGION
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
from enclavekit.transport import EmulatedVsock, SocketNsm
from local_backend.parent.agent import AssumeRoleCredentials, ec2_sts


@dataclass
class Enclave:
    world: KmsWorld
    service: EnclaveService
    key: RecipientKey
    cid: int = ENCLAVE_CID

    def ask(self, request):
        with self.world.parent_vsock().connect(self.cid, 5005) as sock:
            sock.settimeout(30)
            return exchange(sock, request)

    def provision(self, **over) -> Provision:
        fields = dict(
            region="us-east-1",
            credentials=self.world.role_credentials,
            kms_proxy_port=8000,
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
        raw = self.world.parent_vsock().connect(self.cid, 8443)
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

    def tls_refused(self) -> bool:
        """The TLS port accepts the connection (its listener is up: a dead relay or listener
        raises here) and then ends the handshake by closing it — no certificate to serve."""
        ctx = ssl.create_default_context(cadata=pem(self.world.ca_root))
        raw = self.world.parent_vsock().connect(self.cid, 8443)
        raw.settimeout(10)
        try:
            with ctx.wrap_socket(raw, server_hostname=DOMAIN):
                return False  # a handshake completed: TLS was served
        except (ssl.SSLEOFError, ConnectionError):  # reset, broken pipe, EOF: closed
            return True


@contextlib.contextmanager
def running_enclave(world: KmsWorld, cid: int = ENCLAVE_CID) -> Iterator[Enclave]:
    """The enclave program's parts on emulated vsock CID `cid`, against `world`'s KMS."""
    vsock = EmulatedVsock(world.vsock_root, cid)
    attester = Attester(SocketNsm(world.nsm_path))
    key = RecipientKey.generate()
    tls = TlsServer(vsock.listen(8443), MODULE_ID).start()
    service = EnclaveService(
        attester=attester,
        key=key,
        vsock=vsock,
        module_id=MODULE_ID,
        tls=tls,
        kms_verify=str(world.kms_ca),
    )
    control = ControlServer(vsock.listen(5005), service).start()
    try:
        yield Enclave(world, service, key, cid)
    finally:
        control.stop()
        service.stop()
        tls.stop()
        attester.close()


@pytest.fixture(scope="module")
def enclave(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Enclave]:
    tmp = tmp_path_factory.mktemp("enclave-svc")
    with (
        kms_world(tmp) as world,
        nsm_device(world.nsm_path, world.state),
        running_enclave(world) as enc,
    ):
        yield enc


def test_full_life_cycle(enclave: Enclave, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="enclave_app")
    world = enclave.world
    # waiting: nothing provisioned, no TLS, no secrets
    status = enclave.ask(Status())
    assert isinstance(status, StatusReport) and status.state == "waiting"
    assert status.module_id == MODULE_ID and status.public_key_sha256 == enclave.key.fingerprint
    nonce = b"n" * 32
    assert enclave.ask(Challenge("app-secret", nonce)).code == "NotProvisioned"
    assert enclave.tls_refused()  # TLS is not served

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
        assert enclave.tls_refused()  # TLS is not served
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
    # nothing of it can be obtained: an Error, and the enclave keeps all it held
    reply = enclave.ask(enclave.provision(certificate=None, secrets=(garbage,)))
    assert isinstance(reply, ErrorReply) and reply.code == "KmsError"
    assert reply.message.startswith("secret 'broken': KMS Decrypt: expected Ciphertext")
    status = enclave.ask(Status())
    assert status.state == "degraded" and status.secrets == ("app-secret",)
    assert status.certificate_sha256 is not None and "secret 'broken'" in status.last_error
    # part of it can: degraded, holding what this Provision gave (it replaces the earlier one)
    reply = enclave.ask(enclave.provision(secrets=(garbage,)))
    leaf_fp = hashlib.sha256(enclave.world.leaf.public_bytes(serialization.Encoding.DER))
    assert reply == Provisioned("degraded", leaf_fp.hexdigest(), ())
    assert enclave.ask(enclave.provision()) == Provisioned(
        "ready", leaf_fp.hexdigest(), ("app-secret",)
    )
    assert enclave.ask(Status()).last_error is None


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


# ---------------------------------------------------------------------------------------------
# each item on its own: the secret under a second key, the certificate key under the world's


SECOND_SECRET = b"a secret under the second key \x01"
DENIED = "KMS Decrypt: expected CiphertextForRecipient, got AccessDeniedException"


@dataclass
class TwoKeys:
    """The certificate key sealed under `cert_key`, the secret `app-secret` under `secret_key`."""

    world: KmsWorld
    cert_key: str
    secret_key: str
    secret_blob: bytes

    def secret(self) -> SecretSpec:
        return SecretSpec(
            "app-secret", base64.b64encode(self.secret_blob).decode(), self.secret_key
        )

    @contextlib.contextmanager
    def denied(self, *key_ids: str) -> Iterator[None]:
        """These keys' policies name another image for a while (as a revocation does)."""
        kms = self.world.client("kms")
        try:
            for key_id in key_ids:
                kms.put_key_policy(
                    KeyId=key_id, PolicyName="default", Policy=self.world.key_policy(OTHER_IMAGE)
                )
            yield
        finally:
            for key_id in key_ids:
                kms.put_key_policy(
                    KeyId=key_id, PolicyName="default", Policy=self.world.key_policy()
                )


@pytest.fixture(scope="module")
def two_keys(enclave: Enclave) -> TwoKeys:
    world = enclave.world
    kms = world.client("kms")
    key = kms.create_key(Policy=world.key_policy())["KeyMetadata"]["Arn"]
    blob = kms.encrypt(KeyId=key, Plaintext=SECOND_SECRET)["CiphertextBlob"]
    return TwoKeys(world, world.key_id, key, blob)


def _leaf_sha256(world: KmsWorld) -> str:
    return hashlib.sha256(world.leaf.public_bytes(serialization.Encoding.DER)).hexdigest()


def _mac(secret: bytes, nonce: bytes) -> bytes:
    return hmac.new(secret, nonce, "sha256").digest()


def test_certificate_key_denied_secrets_still_served(two_keys: TwoKeys) -> None:
    world, nonce = two_keys.world, b"c" * 32
    with running_enclave(world, cid=17) as enc:
        with two_keys.denied(two_keys.cert_key):
            reply = enc.ask(enc.provision(secrets=(two_keys.secret(),)))
        assert reply == Provisioned("degraded", None, ("app-secret",))
        assert enc.ask(Challenge("app-secret", nonce)) == ChallengeAnswer(
            "app-secret", _mac(SECOND_SECRET, nonce)
        )
        assert enc.tls_refused()  # no certificate: TLS is not served
        status = enc.ask(Status())
        assert (status.state, status.secrets, status.certificate_sha256) == (
            "degraded",
            ("app-secret",),
            None,
        )
        assert status.last_error.startswith(f"certificate key: {DENIED}")
        assert "secret" not in status.last_error
        # the policy releases the key again: the next Provision is whole
        reply = enc.ask(enc.provision(secrets=(two_keys.secret(),)))
        assert reply == Provisioned("ready", _leaf_sha256(world), ("app-secret",))
        assert enc.https()[1] == world.leaf.public_bytes(serialization.Encoding.DER)
        assert enc.ask(Status()).last_error is None


def test_secret_denied_tls_still_served(two_keys: TwoKeys) -> None:
    world, nonce = two_keys.world, b"s" * 32
    leaf_der = world.leaf.public_bytes(serialization.Encoding.DER)
    with running_enclave(world, cid=18) as enc:
        with two_keys.denied(two_keys.secret_key):
            reply = enc.ask(enc.provision(secrets=(two_keys.secret(),)))
        assert reply == Provisioned("degraded", _leaf_sha256(world), ())
        assert enc.https()[1] == leaf_der
        unknown = enc.ask(Challenge("app-secret", nonce))
        assert isinstance(unknown, ErrorReply) and unknown.code == "UnknownSecret"
        status = enc.ask(Status())
        assert status.state == "degraded" and status.secrets == ()
        assert status.last_error.startswith(f"secret 'app-secret': {DENIED}")
        assert "certificate" not in status.last_error
        # whole, then a Provision whose secret is denied keeps the secret an earlier one gave
        assert enc.ask(enc.provision(secrets=(two_keys.secret(),))).state == "ready"
        with two_keys.denied(two_keys.secret_key):
            reply = enc.ask(enc.provision(secrets=(two_keys.secret(),)))
        assert reply == Provisioned("degraded", _leaf_sha256(world), ("app-secret",))
        assert enc.ask(Challenge("app-secret", nonce)).mac == _mac(SECOND_SECRET, nonce)


def test_everything_denied_is_an_error(two_keys: TwoKeys) -> None:
    world = two_keys.world
    with (
        running_enclave(world, cid=19) as enc,
        two_keys.denied(two_keys.cert_key, two_keys.secret_key),
    ):
        reply = enc.ask(enc.provision(secrets=(two_keys.secret(),)))
        assert isinstance(reply, ErrorReply) and reply.code == "KmsError"
        assert f"secret 'app-secret': {DENIED}" in reply.message
        assert f"certificate key: {DENIED}" in reply.message
        status = enc.ask(Status())
        assert (status.state, status.secrets, status.certificate_sha256) == (
            "failed",
            (),
            None,
        )
        # verify's probes: secrets only, then the certificate only -> each an Error
        for probe in (
            enc.provision(certificate=None, secrets=(two_keys.secret(),)),
            enc.provision(secrets=()),
        ):
            reply = enc.ask(probe)
            assert isinstance(reply, ErrorReply) and reply.code == "KmsError"
            assert DENIED in reply.message
        assert enc.ask(Status()).state == "failed"
        assert enc.tls_refused()  # TLS is not served


def test_revocation_on_refresh_drops_only_that_item(two_keys: TwoKeys) -> None:
    world, nonce = two_keys.world, b"r" * 32
    leaf_der = world.leaf.public_bytes(serialization.Encoding.DER)
    with running_enclave(world, cid=20) as enc:
        assert enc.ask(enc.provision(secrets=(two_keys.secret(),))).state == "ready"
        with two_keys.denied(two_keys.secret_key):
            assert not enc.service.refresh()
            status = enc.ask(Status())
            assert (status.state, status.secrets, status.certificate_sha256) == (
                "degraded",
                (),
                _leaf_sha256(world),
            )
            assert status.refresh_count == 1  # the certificate key did come back, fresh
            assert status.last_error.startswith(f"secret 'app-secret': {DENIED}")
            assert enc.ask(Challenge("app-secret", nonce)).code == "UnknownSecret"
            assert enc.https()[1] == leaf_der
        # a later good refresh brings the item back and the state to ready
        assert enc.service.refresh()
        status = enc.ask(Status())
        assert (status.state, status.secrets, status.last_error) == ("ready", ("app-secret",), None)
        with two_keys.denied(two_keys.cert_key):
            assert not enc.service.refresh()
            status = enc.ask(Status())
            assert (status.state, status.secrets, status.certificate_sha256) == (
                "degraded",
                ("app-secret",),
                None,
            )
            assert status.last_error.startswith(f"certificate key: {DENIED}")
            assert enc.tls_refused()  # TLS is not served
            assert enc.ask(Challenge("app-secret", nonce)).mac == _mac(SECOND_SECRET, nonce)
            # now the secret's key too: nothing is left
            with two_keys.denied(two_keys.secret_key):
                assert not enc.service.refresh()
                status = enc.ask(Status())
                assert (status.state, status.secrets, status.certificate_sha256) == (
                    "failed",
                    (),
                    None,
                )
                assert enc.ask(Challenge("app-secret", nonce)).code == "NotProvisioned"
        assert enc.ask(enc.provision(secrets=(two_keys.secret(),))).state == "ready"
        assert enc.https()[1] == leaf_der


def test_parent_agent_records_a_degraded_enclave(two_keys: TwoKeys) -> None:
    """The parent agent (real ParentAgent, SSM on the local endpoint, the instance role as
    IMDS hands it out) sees the partial answer: provisioned, what is missing, and why; the
    enclave's own Status (what `up`, the plugin and `local status` read) says the same."""
    world = two_keys.world
    ssm = world.client("ssm")
    theirs = base64.b64encode(world.secret_blob).decode()  # under the certificate's key
    ssm.put_parameter(Name="/degraded/ours", Type="String", Value=two_keys.secret().ciphertext_b64)
    ssm.put_parameter(Name="/degraded/theirs", Type="String", Value=theirs)
    spec = {
        "version": 1,
        "enclave": {"cid": 21},
        "service": {"port": 443, "enclave_port": 8443},
        "secrets": [
            {"name": "ours", "parameter": "/degraded/ours"},
            {"name": "theirs", "parameter": "/degraded/theirs"},
        ],
    }
    credentials = AssumeRoleCredentials(
        lambda: ec2_sts(world.endpoint, LOCAL_REGION), world.role_arn, INSTANCE_ID
    )
    agent = ParentAgent(
        spec,
        region=LOCAL_REGION,
        credentials=credentials,
        vsock=world.parent_vsock(),
        clients=boto3_clients(LOCAL_REGION, endpoint_url=world.endpoint),
    )
    with running_enclave(world, cid=21) as enc, two_keys.denied(two_keys.cert_key):
        result = agent.sync_once()
        status = enc.ask(Status())
    assert (result.outcome, result.secrets, result.degraded) == (
        "provisioned",
        ("ours",),
        ("secret theirs",),
    )
    assert "degraded, not obtained: secret theirs" in result.describe()
    assert status.state == "degraded" and status.secrets == ("ours",)
    assert (status.last_error or "").startswith(f"secret 'theirs': {DENIED}")
