"""A loopback TCP listener inside the enclave whose connections go out over vsock.

An enclave has no network; its only way out is vsock to the parent, where vsock-proxy carries
the bytes on to KMS. boto3 only speaks TCP, so we give it a TCP port on the enclave's own
loopback (127.0.0.1) and pipe each connection to (CID 3, kms_proxy_port).

boto3's endpoint is ``https://kms.<region>.amazonaws.com`` and this listener is its HTTP
proxy: boto3 sends ``CONNECT <host>:443``, we answer 200 and pipe the tunnel. TLS then runs end
to end between boto3 and KMS with the real host name (SNI, certificate check and SigV4 Host all
correct), and no DNS or /etc/hosts entry is needed in the enclave. A CONNECT to any other
target is refused (403): the proxy only leads to KMS. There is no plain mode: the enclave
never speaks to KMS in clear text, whatever is at the far end of the parent's proxy.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Self

from enclavekit.errors import InvalidInput
from enclavekit.transport import ConnectionServer, VsockTransport, loopback_listener, pump

log = logging.getLogger(__name__)
MAX_CONNECT_HEAD = 8192


class LoopbackForwarder(ConnectionServer):
    """Listens on 127.0.0.1:`listen_port` (0 = any free port); forwards to (cid, port) on vsock."""

    thread_name = "kms-forward"

    def __init__(
        self,
        vsock: VsockTransport,
        cid: int,
        port: int,
        *,
        connect_target: str,
        listen_port: int = 0,
    ) -> None:
        if not connect_target:
            raise InvalidInput("forwarder: expected a CONNECT target host:port, got none")
        self.vsock, self.cid, self.port = vsock, cid, port
        self.connect_target = connect_target
        listener, self.listen_port = loopback_listener(listen_port)
        super().__init__(listener)

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    def start(self) -> Self:
        super().start()
        log.info(
            "forwarding 127.0.0.1:%d -> vsock (%d, %d), CONNECT %s only",
            self.listen_port,
            self.cid,
            self.port,
            self.connect_target,
        )
        return self

    def serve(self, conn: socket.socket, addr: object) -> None:
        try:
            if not self._tunnel_request(conn):
                conn.close()
                return
            try:
                upstream = self.vsock.connect(self.cid, self.port)
            except OSError as exc:
                log.warning("KMS proxy at vsock (%d, %d) unreachable: %s", self.cid, self.port, exc)
                with contextlib.suppress(OSError):
                    conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                conn.close()
                return
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            with conn, upstream:
                pump(conn, upstream)
        except OSError as exc:
            log.warning("KMS forwarding connection failed: %s", exc)
            conn.close()

    def _tunnel_request(self, conn: socket.socket) -> bool:
        """Read the proxy request head; True if it is a CONNECT to the allowed target."""
        conn.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(1024)
            if not chunk or len(head) + len(chunk) > MAX_CONNECT_HEAD:
                log.warning(
                    "KMS proxy request: expected an HTTP CONNECT head, got %d bytes",
                    len(head) + len(chunk),
                )
                return False
            head += chunk
        conn.settimeout(None)
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != "CONNECT" or parts[1] != self.connect_target:
            log.warning(
                "KMS proxy request: expected 'CONNECT %s', got %r", self.connect_target, line[:100]
            )
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return False
        if head.index(b"\r\n\r\n") + 4 != len(head):
            log.warning("KMS proxy request: unexpected bytes after the CONNECT head")
            return False
        return True
