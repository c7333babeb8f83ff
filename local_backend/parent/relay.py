"""The parent's TCP -> vsock relay: a loopback port whose connections go to the enclave's port.

On AWS the parent forwards client traffic to its enclave over vsock (socat, nginx stream, or the
application's own proxy); here a small threaded relay plays that part. It only ever moves bytes:
TLS ends inside the enclave, so what passes through this process is ciphertext.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading

from enclavekit.transport import VsockTransport, pump

log = logging.getLogger("enclavekit.parent.relay")


class TcpToVsockRelay:
    """Listens on 127.0.0.1:`port` (0 = any free port) and relays to (cid, vsock_port)."""

    def __init__(self, vsock: VsockTransport, cid: int, vsock_port: int, *, port: int = 0) -> None:
        self._vsock = vsock
        self.cid = cid
        self.vsock_port = vsock_port
        self._server = socket.create_server(("127.0.0.1", port), backlog=64)
        self.port: int = self._server.getsockname()[1]
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> TcpToVsockRelay:
        self._thread = threading.Thread(target=self._accept, name="relay", daemon=True)
        self._thread.start()
        return self

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
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

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        if self._thread is not None:
            self._thread.join(timeout=2)
