"""The control port (vsock 5005): the parent's provisioning requests, one reply each.

Framing and messages are `enclavekit.provisioning` (shared with the parent side). A request
that cannot be read gets an Error reply and the connection is closed (the stream may be out of
step); every other request is answered and the connection stays open.
"""

from __future__ import annotations

import contextlib
import logging
import socket

from enclavekit.errors import InvalidInput
from enclavekit.provisioning import REQUEST_TYPES, ErrorReply, read_message, write_message
from enclavekit.transport import ConnectionServer

from .service import EnclaveService

log = logging.getLogger(__name__)


class ControlServer(ConnectionServer):
    """Accepts control connections on a listening vsock socket; a thread per connection."""

    thread_name = "control"

    def __init__(self, listener: socket.socket, service: EnclaveService) -> None:
        super().__init__(listener)
        self.service = service

    def serve(self, conn: socket.socket, addr: object) -> None:
        with conn:
            while not self.stopped.is_set():
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
