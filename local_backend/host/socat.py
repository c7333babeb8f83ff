"""`socat` as parent instances use it: a relay between TCP and vsock (the emulated vsock of the
host's enclaves, parent CID 3). Addresses: `TCP-LISTEN:PORT` / `TCP4-LISTEN:PORT`,
`TCP:HOST:PORT` / `TCP4:HOST:PORT`, `VSOCK-LISTEN:PORT`, `VSOCK-CONNECT:CID:PORT`, with the
options `fork` and `reuseaddr` (others are accepted and ignored). Without `fork` the first
connection is served and socat exits, as the real one does.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable

from enclavekit.errors import InvalidInput
from enclavekit.transport import VsockTransport, open_vsock, pump


def _vsock() -> VsockTransport:
    return open_vsock()  # the host's emulated vsock, as the parent (CID 3)


def _parse(addr: str) -> tuple[str, list[str], set[str]]:
    head, *opts = addr.split(",")
    kind, *params = head.split(":")
    return kind.upper(), params, {o.split("=")[0].lower() for o in opts}


def _listener(kind: str, params: list[str]) -> socket.socket:
    if kind in ("TCP-LISTEN", "TCP4-LISTEN", "TCP-L", "TCP4-L"):
        return socket.create_server(("0.0.0.0", int(params[0])), backlog=64)
    if kind in ("VSOCK-LISTEN", "VSOCK-L"):
        return _vsock().listen(int(params[0]))
    raise InvalidInput(f"expected a listening address, found {kind}")


def _connector(kind: str, params: list[str]) -> Callable[[], socket.socket]:
    if kind in ("TCP", "TCP4", "TCP-CONNECT", "TCP4-CONNECT"):
        host, port = params[0], int(params[1])
        return lambda: socket.create_connection((host, port), timeout=10)
    if kind in ("VSOCK-CONNECT", "VSOCK"):
        cid, port = int(params[0]), int(params[1])
        return lambda: _vsock().connect(cid, port)
    raise InvalidInput(f"expected a connecting address, found {kind}")


def _serve(conn: socket.socket, connect: Callable[[], socket.socket]) -> None:
    with conn:
        try:
            upstream = connect()
        except OSError as exc:
            print(f"socat: connect failed: {exc}", file=sys.stderr, flush=True)
            return
        upstream.settimeout(None)
        with upstream:
            pump(conn, upstream)


def main(argv: list[str]) -> int:
    addrs = [a for a in argv if not a.startswith("-") or a == "-"]
    if len(addrs) != 2:
        print("socat: expected two addresses", file=sys.stderr)
        return 1
    kind, params, opts = _parse(addrs[0])
    try:
        listener = _listener(kind, params)
        connect = _connector(*_parse(addrs[1])[:2])
    except (ValueError, IndexError, OSError) as exc:
        print(f"socat: {exc}", file=sys.stderr)
        return 1
    with listener:
        while True:
            conn, _ = listener.accept()
            if "fork" not in opts:
                _serve(conn, connect)
                return 0
            threading.Thread(target=_serve, args=(conn, connect), daemon=True).start()
