"""The control port (vsock 5005): the parent's provisioning requests, one reply each.

Framing and messages are `enclavekit.provisioning` (shared with the parent side). A request
that cannot be read gets an Error reply and the connection is closed (the stream may be out of
step); every other request is answered and the connection stays open.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading

from enclavekit.errors import InvalidInput
from enclavekit.provisioning import REQUEST_TYPES, ErrorReply, read_message, write_message

from .service import EnclaveService

log = logging.getLogger(__name__)


class ControlServer:
    """Accepts control connections on a listening vsock socket; a thread per connection."""

    def __init__(self, listener: socket.socket, service: EnclaveService) -> None:
        self._listener = listener
        self.service = service
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="control")

    def start(self) -> ControlServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(
                target=self._serve, args=(conn,), daemon=True, name="control-conn"
            ).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while not self._stopped.is_set():
                try:
                    request = read_message(conn)
                except EOFError:
                    return
                except InvalidInput as exc:
                    log.warning("control request refused: %s", exc)
                    with contextlib.suppress(OSError):
                        write_message(conn, ErrorReply("BadRequest", str(exc)))
                    return
                except OSError as exc:
                    log.info("control connection ended: %s", exc)
                    return
                if not isinstance(request, REQUEST_TYPES):
                    reply = ErrorReply(
                        "BadRequest",
                        "control request: expected one of "
                        "Provision, Status, Challenge, Attest, found "
                        f"{request.TYPE}",
                    )
                else:
                    reply = self.service.handle(request)
                if isinstance(reply, ErrorReply):
                    log.warning("%s answered %s: %s", request.TYPE, reply.code, reply.message)
                try:
                    write_message(conn, reply)
                except OSError as exc:
                    log.info("control connection ended: %s", exc)
                    return
