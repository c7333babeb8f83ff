"""HTTPS for AWS service host names on loopback: the local endpoint as an enclave must reach it.

On AWS an enclave reaches KMS over TLS to `kms.<region>.amazonaws.com`, through the parent's
vsock-proxy, and checks the server certificate against the trust store in its own (measured)
image, so the parent, which carries the bytes, can neither read nor forge them. The local
endpoint speaks plain HTTP, so the emulator puts this TLS front before it: a loopback listener
that presents, for the server name the client asks for (SNI), a certificate issued by the
endpoint's own CA (`<state>/pki/aws-tls/`), ends TLS and passes the HTTP bytes on to the
endpoint unchanged (SigV4's signed Host header included).

The CA's certificate reaches an emulated enclave from the emulator (see
`local_backend.emulator.monitor`), never from the parent's messages: the parent cannot make
the enclave trust a KMS of its choosing, which is the property this front exists to keep.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Self

from enclavekit.localenv import INSTANCE_SOURCE_ADDRESS
from enclavekit.transport import ConnectionServer, loopback_listener, server_handshake

from .moto_ext.acm.models import LocalCa

log = logging.getLogger("enclavekit.tls-front")
CA_DIR = Path("pki") / "aws-tls"
CA_CERT = CA_DIR / "root.pem"
CA_COMMON_NAME = "enclavekit local AWS endpoint TLS CA"
HANDSHAKE_TIMEOUT_S = 10.0
# Server contexts kept, most recently used first: any local client picks the SNI name, so an
# unbounded cache would let one grow the endpoint's memory (and CA work) without limit.
MAX_CONTEXTS = 128
_AWS_NAME = re.compile(r"^[a-z0-9-]+(\.[a-z0-9-]+)*\.amazonaws\.com(\.cn)?$")


def endpoint_ca(state_dir: Path) -> LocalCa:
    """The CA of the endpoint's TLS front, created once per state dir."""
    return LocalCa.load_or_create(Path(state_dir) / CA_DIR, common_name=CA_COMMON_NAME)


class TlsFront(ConnectionServer):
    """TLS on 127.0.0.1:`port` (0 = any free port), plaintext on to `backend` (host, port)."""

    thread_name = "tls-front"

    def __init__(self, ca: LocalCa, backend: tuple[str, int], port: int = 0) -> None:
        self.ca = ca
        self.backend = backend
        self._contexts: OrderedDict[str, ssl.SSLContext] = OrderedDict()
        self._lock = threading.Lock()
        self._default = self._context_for("kms.us-east-1.amazonaws.com")
        self._default.sni_callback = self._select
        listener, self.port = loopback_listener(port)
        super().__init__(listener)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _context_for(self, name: str) -> ssl.SSLContext:
        """A server context whose certificate names `name` (issued on first use, kept)."""
        with self._lock:
            ctx = self._contexts.get(name)
            if ctx is not None:
                self._contexts.move_to_end(name)
                return ctx
            cert_pem, key_pem = self.ca.issue(name, [], "EC_prime256v1")
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            # load_cert_chain reads files only; the key lives for the blink of a tmpfile
            with tempfile.TemporaryDirectory(prefix="ek-tls-") as tmp:
                path = Path(tmp) / "pair.pem"
                path.touch(mode=0o600)
                path.write_bytes(cert_pem + key_pem)
                ctx.load_cert_chain(path)
            self._contexts[name] = ctx
            while len(self._contexts) > MAX_CONTEXTS:
                self._contexts.popitem(last=False)
            return ctx

    def _select(self, sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        """SNI: an AWS service name gets its own certificate; anything else the default."""
        if name and _AWS_NAME.match(name.lower()):
            sslobj.context = self._context_for(name.lower())

    def serve(self, conn: socket.socket, addr: object) -> None:
        try:
            tls = server_handshake(self._default, conn, HANDSHAKE_TIMEOUT_S)
        except OSError as exc:  # ssl.SSLError included
            log.info("TLS front: handshake from %s refused: %s", addr, exc)
            return
        tls.settimeout(None)
        try:
            # an instance's connection stays marked as one (moto_ext.identity refuses it the
            # endpoint's constant keys)
            mark = _peer(addr) == INSTANCE_SOURCE_ADDRESS
            source = (INSTANCE_SOURCE_ADDRESS, 0) if mark else None
            upstream = socket.create_connection(self.backend, timeout=10, source_address=source)
        except OSError as exc:
            log.warning("TLS front: the endpoint at %s:%s is unreachable: %s", *self.backend, exc)
            tls.close()
            return
        upstream.settimeout(None)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _relay(tls, upstream)

    def start(self) -> Self:
        super().start()
        log.info("TLS front for AWS host names on %s -> %s:%s", self.url, *self.backend)
        return self


def _peer(addr: object) -> str | None:
    return str(addr[0]) if isinstance(addr, tuple) and addr else None


def _relay(tls: ssl.SSLSocket, plain: socket.socket) -> None:
    """Copy both ways on one thread until either side ends.

    One thread, because an SSL object must not be read and written from two threads at once;
    `pending()` first, because bytes OpenSSL has already decrypted are invisible to select.
    """
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(tls, selectors.EVENT_READ, plain)
    sel.register(plain, selectors.EVENT_READ, tls)
    try:
        while True:
            ready = [tls] if tls.pending() else [k.fileobj for k, _ in sel.select()]
            for src in ready:
                dst = plain if src is tls else tls
                try:
                    data = src.recv(65536)  # type: ignore[union-attr]
                except (ssl.SSLWantReadError, BlockingIOError):
                    continue
                except OSError:
                    return
                if not data:
                    return
                try:
                    dst.sendall(data)
                except OSError:
                    return
    finally:
        sel.close()
        for s in (tls, plain):
            with contextlib.suppress(OSError):
                s.close()
