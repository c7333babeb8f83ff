"""The host's Nitro Enclaves "driver": the one process in a host allowed to build enclaves.

On a Nitro parent, nitro-cli asks the kernel driver (/dev/nitro_enclaves) to carve out an
enclave; root in the instance cannot do what the driver does. Here the same split keeps the
sandbox whole: PID 1 forks this process *before* it drops CAP_SYS_ADMIN for everything else it
runs (user data, services), so the user data's root cannot mount, remount the read-only binds
(the project, /sys) writable, or build namespaces — and only this process, holding the
capability, starts the emulator's enclaves (whose isolation needs it). `nitro-cli run-enclave`
sends its arguments here over `/run/nitro_enclaves/driver.sock` (0600) and gets nitro-cli's
answer back; describe/terminate/console read the emulator's files directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
from typing import Any

from local_backend.host.layout import HOST_EMULATOR_STATE

SOCKET = "/run/nitro_enclaves/driver.sock"
MAX_REQUEST = 64 * 1024


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        from enclavekit.errors import EnclaveKitError
        from local_backend.emulator.runtime import EnclaveManager

        try:
            request = json.loads(self.rfile.readline(MAX_REQUEST))
            kwargs: dict[str, Any] = request["run_enclave"]
            result = EnclaveManager(HOST_EMULATOR_STATE).run_enclave(**kwargs)
            reply: dict[str, Any] = {"ok": result}
        except EnclaveKitError as exc:
            reply = {"error": str(exc), "exit_code": exc.exit_code}
        except Exception as exc:  # noqa: BLE001 - the caller prints it, the driver goes on
            reply = {"error": f"{type(exc).__name__}: {exc}", "exit_code": 1}
        with contextlib.suppress(OSError):
            self.wfile.write(json.dumps(reply).encode() + b"\n")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve(path: str = SOCKET) -> None:
    """Serve run-enclave requests forever (in the forked driver process)."""

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    old = os.umask(0o177)
    try:
        server = _Server(path, _Handler)
    finally:
        os.umask(old)
    # Bound first (PID 1 waits for the socket), then the emulator's import, before requests.
    from local_backend.emulator import runtime  # noqa: F401

    server.serve_forever()


def run_enclave(kwargs: dict[str, Any], path: str = SOCKET) -> dict[str, Any]:
    """nitro-cli's side: ask the driver to start an enclave; the reply as a dict."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(json.dumps({"run_enclave": kwargs}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data or b'{"error": "the driver closed the connection", "exit_code": 1}')
