"""The enclave's TLS termination, over a real emulated vsock pair with a real TLS client.

Budget: ~3 s (one generated chain per module).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from enclave_app import tls as tls_mod
from enclave_app.tls import TlsServer, load_identity
from enclavekit.errors import InvalidInput
from enclavekit.transport import PARENT_CID, EmulatedVsock

ENCLAVE_CID = 16
DOMAIN = "app.example.test"


def _cert(
    subject: str,
    key,
    issuer_key,
    issuer_name: x509.Name | None,
    *,
    ca: bool,
    san: str | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class Chain:
    """A root CA -> intermediate -> leaf chain, like an ACM certificate's."""

    def __init__(self, leaf_key) -> None:
        root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _cert("Test Root CA", root_key, root_key, None, ca=True)
        int_key = ec.generate_private_key(ec.SECP256R1())
        self.intermediate = _cert(
            "Test Intermediate", int_key, root_key, self.root.subject, ca=True
        )
        self.leaf_key = leaf_key
        self.leaf = _cert(
            DOMAIN, leaf_key, int_key, self.intermediate.subject, ca=False, san=DOMAIN
        )

    @property
    def certificate(self) -> str:
        return _pem(self.leaf)

    @property
    def chain(self) -> str:
        return _pem(self.intermediate)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.leaf_key)

    def client_context(self, tmp: Path, *, max_version=None) -> ssl.SSLContext:
        ca = tmp / "root.pem"
        ca.write_text(_pem(self.root))
        ctx = ssl.create_default_context(cafile=str(ca))
        if max_version is not None:
            ctx.maximum_version = max_version
        return ctx


@pytest.fixture(scope="module")
def chains() -> dict[str, Chain]:
    return {
        "rsa": Chain(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "ec": Chain(ec.generate_private_key(ec.SECP384R1())),
    }


@pytest.fixture()
def server(tmp_path: Path):
    root = tmp_path / "vsock"
    enclave = EmulatedVsock(root, ENCLAVE_CID)
    srv = TlsServer(enclave.listen(8443), "i-0123456789abcdef0-enc0123456789abcdef").start()
    parent = EmulatedVsock(root, PARENT_CID)
    yield srv, parent
    srv.stop()


def _https_get(parent: EmulatedVsock, ctx: ssl.SSLContext, path: str, *, requests: int = 1):
    """What the parent's relay carries: a TLS client's bytes over vsock to the enclave."""
    raw = parent.connect(ENCLAVE_CID, 8443)
    raw.settimeout(10)
    with ctx.wrap_socket(raw, server_hostname=DOMAIN) as tls:
        answers = []
        for i in range(requests):
            last = i == requests - 1
            tls.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\n"
                f"{'Connection: close' if last else 'Connection: keep-alive'}\r\n\r\n".encode()
            )
            head = b""
            while b"\r\n\r\n" not in head:
                head += tls.recv(1)
            length = int(
                [h for h in head.decode().split("\r\n") if h.lower().startswith("content-length")][
                    0
                ].split(":")[1]
            )
            body = b""
            while len(body) < length:
                body += tls.recv(length - len(body))
            answers.append((head.decode().split("\r\n")[0], json.loads(body)))
        return answers, tls.version(), tls.getpeercert(binary_form=True)


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_https_through_vsock_is_terminated_in_the_enclave(server, chains, kind, tmp_path):
    srv, parent = server
    chain = chains[kind]
    identity = load_identity(chain.certificate, chain.chain, chain.key_pem)
    srv.set_identity(identity)
    answers, version, peer_der = _https_get(
        parent, chain.client_context(tmp_path), "/hello?x=1", requests=3
    )
    assert version == "TLSv1.3"
    assert hashlib.sha256(peer_der).hexdigest() == identity.certificate_sha256
    for status, body in answers:
        assert status == "HTTP/1.1 200 OK"
        assert body["path"] == "/hello?x=1"
        assert body["served_by"] == "enclave_app"
        assert body["enclave_module_id"].startswith("i-0123456789abcdef0-enc")
        assert body["certificate_sha256"] == identity.certificate_sha256
        assert dt.datetime.fromisoformat(body["time"]) > dt.datetime.now(dt.UTC) - dt.timedelta(
            minutes=1
        )


def test_tls12_client_is_served(server, chains, tmp_path):
    srv, parent = server
    chain = chains["rsa"]
    srv.set_identity(load_identity(chain.certificate, chain.chain, chain.key_pem))
    ctx = chain.client_context(tmp_path, max_version=ssl.TLSVersion.TLSv1_2)
    (answer,), version, _ = _https_get(parent, ctx, "/")
    assert version == "TLSv1.2" and answer[1]["tls_version"] == "TLSv1.2"


def test_server_context_refuses_below_tls12(chains):
    chain = chains["rsa"]
    ctx = load_identity(chain.certificate, chain.chain, chain.key_pem).context
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_no_certificate_yet_means_no_tls(server, chains, tmp_path):
    _srv, parent = server
    raw = parent.connect(ENCLAVE_CID, 8443)  # the listener is up: a dead one raises here
    raw.settimeout(10)
    # ... and ends the handshake by closing the connection (not a timeout, not a refusal)
    with pytest.raises((ssl.SSLEOFError, ConnectionError)):
        chains["rsa"].client_context(tmp_path).wrap_socket(raw, server_hostname=DOMAIN)
    raw.close()


def test_swapping_the_identity_takes_effect_for_new_connections(server, chains, tmp_path):
    srv, parent = server
    first = chains["rsa"]
    srv.set_identity(load_identity(first.certificate, first.chain, first.key_pem))
    _, _, der1 = _https_get(parent, first.client_context(tmp_path), "/")
    second = chains["ec"]
    srv.set_identity(load_identity(second.certificate, second.chain, second.key_pem))
    _, _, der2 = _https_get(parent, second.client_context(tmp_path), "/")
    assert der1 == first.leaf.public_bytes(serialization.Encoding.DER)
    assert der2 == second.leaf.public_bytes(serialization.Encoding.DER)


def test_wrong_or_unreadable_key_is_one_line_invalid_input(chains):
    a, b = chains["rsa"], chains["ec"]
    with pytest.raises(InvalidInput, match="expected the key of the certificate CN=app"):
        load_identity(a.certificate, a.chain, b.key_pem)
    with pytest.raises(InvalidInput, match="expected an unencrypted PEM private key") as info:
        load_identity(a.certificate, a.chain, b"not a key")
    assert "not a key" not in str(info.value)
    with pytest.raises(InvalidInput, match="expected a PEM X.509 certificate"):
        load_identity(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "", a.key_pem
        )


def test_key_is_loaded_from_memory_never_from_a_named_file(chains, tmp_path, monkeypatch):
    """The memfd path has no name in any file system and is closed right after the load."""
    seen: list[str] = []
    targets: list[str] = []
    real = ssl.SSLContext.load_cert_chain

    def spy(self, certfile, keyfile=None, password=None):
        seen.extend([certfile, keyfile])
        targets.extend(os.readlink(p) for p in (certfile, keyfile))
        with open(keyfile, "rb") as fh:
            assert b"PRIVATE KEY" in fh.read()
        return real(self, certfile, keyfile, password)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    chain = chains["rsa"]
    load_identity(chain.certificate, chain.chain, chain.key_pem)
    assert all(p.startswith("/proc/self/fd/") for p in seen)
    # anonymous memory files (no name in any file system) ...
    assert targets == ["/memfd:tls-chain.pem (deleted)", "/memfd:tls-key.pem (deleted)"]
    for p in seen:  # ... closed right after the load
        assert not os.path.exists(p) or not os.readlink(p).startswith("/memfd:tls-")
    assert list(tmp_path.iterdir()) == []


def test_without_memfd_the_tmpfs_file_is_removed_after_load(chains, tmp_path, monkeypatch):
    monkeypatch.setattr(tls_mod, "_memfd", lambda name, data: -1)
    monkeypatch.setattr(tls_mod.tempfile, "tempdir", str(tmp_path))
    chain = chains["rsa"]
    identity = load_identity(chain.certificate, chain.chain, chain.key_pem)
    assert identity.subject == f"CN={DOMAIN}"
    assert list(tmp_path.iterdir()) == []  # the private directory and key file are gone


def test_garbage_from_the_relay_does_not_stop_the_server(server, chains, tmp_path):
    srv, parent = server
    chain = chains["rsa"]
    srv.set_identity(load_identity(chain.certificate, chain.chain, chain.key_pem))
    junk = parent.connect(ENCLAVE_CID, 8443)
    junk.sendall(b"GET / HTTP/1.1\r\n\r\n")  # plain HTTP on the TLS port
    junk.settimeout(5)
    with contextlib.suppress(TimeoutError, OSError):
        junk.recv(100)
    junk.close()
    (answer,), _, _ = _https_get(parent, chain.client_context(tmp_path), "/after")
    assert answer[1]["path"] == "/after"
    assert isinstance(srv.connections, int) and srv.connections >= 2


def test_unix_peer_address_is_logged_without_error(server, chains, tmp_path, caplog):
    srv, parent = server
    chain = chains["rsa"]
    srv.set_identity(load_identity(chain.certificate, chain.chain, chain.key_pem))
    caplog.set_level("INFO", logger="enclave_app.tls")
    _https_get(parent, chain.client_context(tmp_path), "/logged")
    assert any("/logged" in r.getMessage() for r in caplog.records)
    assert not any("PRIVATE" in r.getMessage() for r in caplog.records)
