"""The enclave's attested KMS client, end to end against real parts: the emulator's NSM server
(documents signed by the local PKI), the loopback->vsock forwarder, the emulated parent's
vsock-proxy and the local KMS (moto + our extension) enforcing a PCR-bound key policy.

Budget: ~6 s.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from enclave_app_support import (
    KMS_HOST,
    MEASUREMENTS,
    OTHER_IMAGE,
    SECRET,
    KmsWorld,
    issue_chain,
    kms_world,
    nsm_device,
    pem,
)

from enclave_app.attester import Attester
from enclave_app.forwarder import LoopbackForwarder
from enclave_app.keys import RecipientKey
from enclave_app.kms import AttestedKms, KmsDenied, KmsUnreachable
from enclavekit import attestation
from enclavekit.pki import LocalPki
from enclavekit.transport import PARENT_CID, SocketNsm, pump


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmsWorld]:
    with kms_world(tmp_path_factory.mktemp("kms-app")) as w:
        yield w


@pytest.fixture(scope="module")
def key() -> RecipientKey:
    return RecipientKey.generate()


@contextlib.contextmanager
def _kms(world: KmsWorld, key: RecipientKey, nsm_path: Path, **nsm_kw) -> Iterator[AttestedKms]:
    with nsm_device(nsm_path, world.state, **nsm_kw):
        attester = Attester(SocketNsm(nsm_path))
        fw = LoopbackForwarder(world.enclave_vsock(), PARENT_CID, 8000).start()
        client = AttestedKms(
            attester=attester,
            key=key,
            region="us-east-1",
            credentials=world.role_credentials,
            endpoint_url=fw.proxy_url,
        )
        try:
            yield client
        finally:
            client.close()
            fw.stop()
            attester.close()


def _capture(client: AttestedKms) -> list[dict]:
    """The Recipient of every request boto3 sends (read from the serialized request)."""
    seen: list[dict] = []

    def hook(request, **_):
        seen.append(json.loads(request.body)["Recipient"])

    client.client.meta.events.register("before-send.kms.*", hook)
    return seen


def test_attested_decrypt_through_the_vsock_proxy(world, key, tmp_path):
    with _kms(world, key, tmp_path / "nsm.sock") as kms:
        sent = _capture(kms)
        assert kms.decrypt(world.secret_blob) == SECRET
        assert kms.decrypt(world.secret_blob, key_id=world.key_id) == SECRET
        plaintext, blob = kms.generate_data_key(world.key_id)
        assert len(plaintext) == 32
        assert world.client("kms").decrypt(CiphertextBlob=blob)["Plaintext"] == plaintext
        assert len(kms.generate_random(48)) == 48
    trust = LocalPki.load_or_create(world.state).trust_anchor()
    docs = []
    for recipient in sent:
        assert recipient["KeyEncryptionAlgorithm"] == "RSAES_OAEP_SHA_256"
        raw = base64.b64decode(recipient["AttestationDocument"])
        doc = attestation.verify(raw, trust)
        assert doc.public_key == key.spki_der
        assert doc.pcrs[0] == MEASUREMENTS.pcr0 and doc.module_id.startswith("i-0123")
        docs.append(raw)
    assert len(docs) == 4 and len(set(docs)) == 4  # a fresh document for every call


def test_another_image_is_denied(world, key, tmp_path):
    with (
        _kms(world, key, tmp_path / "nsm.sock", measurements=OTHER_IMAGE) as kms,
        pytest.raises(
            KmsDenied, match="Decrypt: expected CiphertextForRecipient, got AccessDeniedException"
        ) as info,
    ):
        kms.decrypt(world.secret_blob)
    assert info.value.code == "AccessDeniedException"


def test_debug_mode_enclave_is_denied(world, key, tmp_path):
    with (
        _kms(world, key, tmp_path / "nsm.sock", debug=True) as kms,
        pytest.raises(KmsDenied, match="AccessDeniedException"),
    ):
        kms.decrypt(world.secret_blob)


def test_no_proxy_is_unreachable_not_denied(world, key, tmp_path):
    with nsm_device(tmp_path / "nsm.sock", world.state):
        attester = Attester(SocketNsm(tmp_path / "nsm.sock"))
        fw = LoopbackForwarder(world.enclave_vsock(), PARENT_CID, 8999).start()
        kms = AttestedKms(
            attester=attester,
            key=key,
            region="us-east-1",
            credentials=world.role_credentials,
            endpoint_url=fw.proxy_url,
            timeout=3,
        )
        try:
            with pytest.raises(KmsUnreachable, match="expected an answer through the vsock"):
                kms.decrypt(world.secret_blob)
        finally:
            kms.close()
            fw.stop()
            attester.close()


class _TlsKmsFront:
    """What AWS's side of the proxy looks like: TLS for kms.<region>.amazonaws.com in front
    of KMS. Here: a vsock listener on the parent (the vsock-proxy's place) that terminates TLS
    with a certificate for the KMS host and relays the plaintext to the local KMS."""

    def __init__(self, world: KmsWorld, port: int, tmp: Path) -> None:
        root, mid, leaf, leaf_key = issue_chain(KMS_HOST)
        (tmp / "front.pem").write_text(pem(leaf))
        (tmp / "front.key").write_bytes(
            leaf_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.ca_path = tmp / "front-ca.pem"
        self.ca_path.write_text(pem(root) + pem(mid))
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(tmp / "front.pem", tmp / "front.key")
        self.sni: list[str | None] = []
        self.ctx.sni_callback = lambda sock, name, ctx: self.sni.append(name)
        self.port = int(world.endpoint.rsplit(":", 1)[1])
        self.listener = world.parent_vsock().listen(port)
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            conn.close()
            return
        with tls, socket.create_connection(("127.0.0.1", self.port)) as upstream:
            pump(tls, upstream)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


def test_https_mode_tunnels_tls_to_the_kms_host_name(world, key, tmp_path):
    """The AWS configuration: https://kms.<region>.amazonaws.com via a CONNECT tunnel, TLS end
    to end with the real host name (SNI, certificate check), no DNS in the enclave."""
    front = _TlsKmsFront(world, 8443, tmp_path)
    try:
        with nsm_device(tmp_path / "nsm.sock", world.state):
            attester = Attester(SocketNsm(tmp_path / "nsm.sock"))
            fw = LoopbackForwarder(
                world.enclave_vsock(),
                PARENT_CID,
                8443,
                mode="connect",
                connect_target=f"{KMS_HOST}:443",
            ).start()
            kms = AttestedKms(
                attester=attester,
                key=key,
                region="us-east-1",
                credentials=world.role_credentials,
                endpoint_url=f"https://{KMS_HOST}",
                proxy_url=fw.proxy_url,
                verify=str(front.ca_path),
            )
            try:
                assert kms.decrypt(world.secret_blob) == SECRET
            finally:
                kms.close()
            # without the right trust the certificate check fails: TLS really is end to end
            bad = AttestedKms(
                attester=attester,
                key=key,
                region="us-east-1",
                credentials=world.role_credentials,
                endpoint_url=f"https://{KMS_HOST}",
                proxy_url=fw.proxy_url,
                verify=True,
                timeout=5,
            )
            try:
                with pytest.raises(KmsUnreachable, match="SSL|certificate"):
                    bad.decrypt(world.secret_blob)
            finally:
                bad.close()
                fw.stop()
                attester.close()
    finally:
        front.stop()
    assert front.sni and set(front.sni) == {KMS_HOST}


def test_connect_mode_refuses_other_targets(world, tmp_path):
    fw = LoopbackForwarder(
        world.enclave_vsock(), PARENT_CID, 8000, mode="connect", connect_target=f"{KMS_HOST}:443"
    ).start()
    try:
        for head in (
            b"CONNECT evil.example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET http://kms.us-east-1.amazonaws.com/ HTTP/1.1\r\n\r\n",
        ):
            with socket.create_connection(("127.0.0.1", fw.listen_port), timeout=5) as c:
                c.sendall(head)
                assert c.recv(100).startswith(b"HTTP/1.1 403")
    finally:
        fw.stop()
    with pytest.raises(ValueError, match="expected a target"):
        LoopbackForwarder(world.enclave_vsock(), PARENT_CID, 8000, mode="connect")


def test_forwarder_listens_on_loopback_only(world):
    fw = LoopbackForwarder(world.enclave_vsock(), PARENT_CID, 8000).start()
    try:
        assert fw.proxy_url.startswith("http://127.0.0.1:")
    finally:
        fw.stop()
    with socket.socket() as s, pytest.raises(OSError):
        s.settimeout(1)
        s.connect(("127.0.0.1", fw.listen_port))
