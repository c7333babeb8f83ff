"""The parent's TCP -> vsock relay: a loopback port whose connections go to the enclave's port.

On AWS the parent forwards client traffic to its enclave over vsock (socat, nginx stream, or the
application's own proxy); here a small threaded relay plays that part. It only ever moves bytes:
TLS ends inside the enclave, so what passes through this process is ciphertext.
"""

from __future__ import annotations

import logging
import socket

from enclavekit.transport import ConnectionServer, VsockTransport, pump

log = logging.getLogger("enclavekit.parent.relay")


class TcpToVsockRelay(ConnectionServer):
    """Listens on 127.0.0.1:`port` (0 = any free port) and relays to (cid, vsock_port)."""

    thread_name = "relay"

    def __init__(self, vsock: VsockTransport, cid: int, vsock_port: int, *, port: int = 0) -> None:
        super().__init__(socket.create_server(("127.0.0.1", port), backlog=64))
        self._vsock = vsock
        self.cid = cid
        self.vsock_port = vsock_port
        self.port: int = self._listener.getsockname()[1]

    def serve(self, conn: socket.socket, addr: object) -> None:
        # A relay forwards what it reads at once: no Nagle delay on top of the peer's own.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            try:
                upstream = self._vsock.connect(self.cid, self.vsock_port)
            except OSError as exc:
                log.warning(
                    "relay: enclave (%d, %d) unreachable: %s", self.cid, self.vsock_port, exc
                )
                return
            with upstream:
                pump(conn, upstream)
