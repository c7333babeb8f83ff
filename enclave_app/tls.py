"""TLS termination inside the enclave for the connections the parent relays over vsock.

The parent relays raw TCP bytes from its service port to our vsock port 8443, so it only ever
sees TLS records: the handshake, the key and the HTTP response all live here.

Python's `ssl` loads a key only from a file path. We hand it an anonymous memory file
(`os.memfd_create`) opened through `/proc/self/fd/N`: it has no name in any file system, lives
in this process's memory only, and is gone when we close it right after loading. Only if memfd
is unavailable (no /proc) do we fall back to a 0600 file in a fresh 0700 directory on the
enclave's private tmpfs, unlinked immediately after the load. Neither is a path the parent can
see: on Nitro the enclave's memory is not mapped into the parent at all; in the emulator the
tmpfs exists only in the enclave's own mount namespace.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from enclavekit.errors import InvalidInput
from enclavekit.transport import ConnectionServer, server_handshake

log = logging.getLogger(__name__)
HANDSHAKE_TIMEOUT = 15.0
IDLE_TIMEOUT = 30.0


@dataclass(frozen=True)
class ServerIdentity:
    """A loaded TLS server context and the public facts about its certificate."""

    context: ssl.SSLContext = field(repr=False)
    certificate_sha256: str
    subject: str
    not_after: str


def _memfd(name: str, data: bytes) -> int:
    """An anonymous memory file holding `data`, reachable by path; -1 if not possible here."""
    try:
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        return -1
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if os.path.exists(f"/proc/self/fd/{fd}"):
            return fd
    except OSError:
        pass
    os.close(fd)
    return -1


@contextlib.contextmanager
def _memory_file(name: str, data: bytes) -> Iterator[str]:
    """A path to `data` that exists only while the block runs (memfd, else private tmpfs)."""
    fd = _memfd(name, data)
    if fd >= 0:
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    log.warning("memfd not usable for %s; using a private tmpfs file removed after load", name)
    directory = tempfile.mkdtemp(prefix="enclave-tls-")  # 0700
    path = os.path.join(directory, name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def load_identity(certificate: str, chain: str, key_pem: bytes) -> ServerIdentity:
    """A TLS 1.2+ server context for `certificate` (+ `chain`) and its private key.

    Checks first that the key is a private key and belongs to the certificate, so a wrong
    bundle fails with a reason instead of an OpenSSL code. Nothing in errors shows the key.
    """
    try:
        leaf = x509.load_pem_x509_certificate(certificate.encode())
    except ValueError:
        raise InvalidInput(
            "certificate bundle certificate: expected a PEM X.509 certificate, found unreadable PEM"
        ) from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise InvalidInput(
            "certificate private key: expected an unencrypted PEM private key, "
            "found something else (decrypted bytes not shown)"
        ) from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise InvalidInput(
            "certificate private key: expected the key of the certificate "
            f"{leaf.subject.rfc4514_string()}, found a different key"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    chain_pem = certificate.rstrip("\n") + "\n" + chain.strip() + ("\n" if chain.strip() else "")
    try:
        with (
            _memory_file("tls-chain.pem", chain_pem.encode()) as chain_path,
            _memory_file("tls-key.pem", key_pem) as key_path,
        ):
            context.load_cert_chain(certfile=chain_path, keyfile=key_path)
    except ssl.SSLError as exc:
        raise InvalidInput(f"certificate bundle: OpenSSL refused it ({exc.reason})") from None
    der = leaf.public_bytes(serialization.Encoding.DER)
    return ServerIdentity(
        context=context,
        certificate_sha256=hashlib.sha256(der).hexdigest(),
        subject=leaf.subject.rfc4514_string(),
        not_after=leaf.not_valid_after_utc.isoformat(),
    )


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 over the TLS socket; the answer is produced here, inside the enclave."""

    protocol_version = "HTTP/1.1"
    server_version = "enclave-app"
    sys_version = ""
    timeout = IDLE_TIMEOUT
    wbufsize = 1 << 16  # headers and body leave in one write (one TLS record), not two
    respond: Callable[[str, str, ssl.SSLSocket], dict[str, Any]]
    peer = "vsock"

    def _answer(self, body_wanted: bool) -> None:
        body = (
            json.dumps(
                self.respond(self.command, self.path, self.connection), sort_keys=True
            ).encode()
            + b"\n"
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body_wanted:
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(False)

    def address_string(self) -> str:
        return self.peer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.info("https %s %s", self.peer, format % args)


class TlsServer(ConnectionServer):
    """Accepts the parent's relayed connections on a listening vsock socket and serves HTTPS."""

    thread_name = "tls"

    def __init__(self, listener: socket.socket, module_id: str) -> None:
        super().__init__(listener)
        self.module_id = module_id
        self._identity: ServerIdentity | None = None
        self._lock = threading.Lock()
        self.connections = 0

    @property
    def identity(self) -> ServerIdentity | None:
        with self._lock:
            return self._identity

    def set_identity(self, identity: ServerIdentity | None) -> None:
        """Swap the certificate and key: new connections use the new one at once."""
        with self._lock:
            self._identity = identity

    def respond(self, method: str, path: str, conn: ssl.SSLSocket) -> dict[str, Any]:
        """The JSON body of every response: who answered, when, over what."""
        identity = self.identity
        return {
            "served_by": "enclave_app",
            "enclave_module_id": self.module_id,
            "method": method,
            "path": path,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "tls_version": conn.version(),
            "certificate_sha256": identity.certificate_sha256 if identity else None,
        }

    def serve(self, conn: socket.socket, addr: Any) -> None:
        peer = f"cid {addr[0]} port {addr[1]}" if isinstance(addr, tuple) else "relay"
        identity = self.identity
        if identity is None:
            log.warning("TLS connection from %s refused: no certificate provisioned yet", peer)
            conn.close()
            return
        self.connections += 1
        started = time.monotonic()
        try:
            tls = server_handshake(identity.context, conn, HANDSHAKE_TIMEOUT)
        except OSError as exc:  # ssl.SSLError included
            log.warning("TLS handshake with %s failed: %s", peer, exc)
            return
        log.debug(
            "TLS %s with %s in %.1f ms", tls.version(), peer, (time.monotonic() - started) * 1000
        )
        handler = type(
            "Handler", (_Handler,), {"respond": staticmethod(self.respond), "peer": peer}
        )
        try:
            handler(tls, addr, None)
        except (ssl.SSLError, OSError) as exc:
            log.info("HTTPS connection with %s ended: %s", peer, exc)
        finally:
            with contextlib.suppress(OSError):
                tls.close()
