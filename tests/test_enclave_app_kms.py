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
        fw = LoopbackForwarder(
            world.enclave_vsock(), PARENT_CID, 8000, connect_target=f"{KMS_HOST}:443"
        ).start()
        client = AttestedKms(
            attester=attester,
            key=key,
            region="us-east-1",
            credentials=world.role_credentials,
            endpoint_url=f"https://{KMS_HOST}",
            proxy_url=fw.proxy_url,
            verify=str(world.kms_ca),
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
        fw = LoopbackForwarder(
            world.enclave_vsock(), PARENT_CID, 8999, connect_target=f"{KMS_HOST}:443"
        ).start()
        kms = AttestedKms(
            attester=attester,
            key=key,
            region="us-east-1",
            credentials=world.role_credentials,
            endpoint_url=f"https://{KMS_HOST}",
            proxy_url=fw.proxy_url,
            verify=str(world.kms_ca),
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
    """A parent-side impostor: a vsock listener on the parent (the vsock-proxy's place) that
    terminates TLS with a certificate for the KMS host from a CA of its own and relays the
    plaintext to the local KMS (so it could read or rewrite every answer)."""

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


def test_tls_to_kms_is_end_to_end_and_verified(world, key, tmp_path):
    """The enclave speaks TLS to kms.<region>.amazonaws.com through a CONNECT tunnel and the
    parent's vsock-proxy, and checks the certificate against its platform CA: it works with
    that CA; the image's public bundle does not know the local CA (so the check is real); and
    a parent-side impostor presenting a KMS certificate from its own CA is refused."""
    impostor = _TlsKmsFront(world, 8443, tmp_path)
    try:
        with nsm_device(tmp_path / "nsm.sock", world.state):
            attester = Attester(SocketNsm(tmp_path / "nsm.sock"))

            def client(port: int, verify: str | bool) -> AttestedKms:
                fw = LoopbackForwarder(
                    world.enclave_vsock(), PARENT_CID, port, connect_target=f"{KMS_HOST}:443"
                ).start()
                forwarders.append(fw)
                return AttestedKms(
                    attester=attester,
                    key=key,
                    region="us-east-1",
                    credentials=world.role_credentials,
                    endpoint_url=f"https://{KMS_HOST}",
                    proxy_url=fw.proxy_url,
                    verify=verify,
                    timeout=5,
                )

            forwarders: list[LoopbackForwarder] = []
            good = client(8000, str(world.kms_ca))
            public = client(8000, True)
            fake = client(8443, str(world.kms_ca))
            try:
                assert good.decrypt(world.secret_blob) == SECRET
                with pytest.raises(KmsUnreachable, match="SSL|certificate"):
                    public.decrypt(world.secret_blob)
                with pytest.raises(KmsUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
                    fake.decrypt(world.secret_blob)
            finally:
                for c in (good, public, fake):
                    c.close()
                for fw in forwarders:
                    fw.stop()
                attester.close()
    finally:
        impostor.stop()
    assert impostor.sni and set(impostor.sni) == {KMS_HOST}  # it was asked, and refused


def test_connect_mode_refuses_other_targets(world, tmp_path):
    fw = LoopbackForwarder(
        world.enclave_vsock(), PARENT_CID, 8000, connect_target=f"{KMS_HOST}:443"
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
    with pytest.raises(ValueError, match="expected a CONNECT target"):
        LoopbackForwarder(world.enclave_vsock(), PARENT_CID, 8000, connect_target="")


def _tcp_listeners(port: int) -> set[str]:
    """Local addresses (hex, as the kernel lists them) listening on `port`, IPv4 and IPv6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for line in fh.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, hexport = local.rsplit(":", 1)
                if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                    found.add(addr)
    return found


def test_forwarder_listens_on_loopback_only(world):
    fw = LoopbackForwarder(
        world.enclave_vsock(), PARENT_CID, 8000, connect_target=f"{KMS_HOST}:443"
    ).start()
    try:
        # the kernel's own table: bound to 127.0.0.1 (0100007F) and nothing else
        assert _tcp_listeners(fw.listen_port) == {"0100007F"}
    finally:
        fw.stop()
    with socket.socket() as s, pytest.raises(OSError):
        s.settimeout(1)
        s.connect(("127.0.0.1", fw.listen_port))
