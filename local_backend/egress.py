"""The egress guard: a loopback HTTP(S) proxy that refuses every non-loopback destination.

Every process `enclavekit cdk` starts (the cdk CLI, the app it synthesizes, their children)
gets HTTP(S)_PROXY / ALL_PROXY pointing here and NO_PROXY for loopback, so "nothing reaches
real AWS" is enforced, not assumed: a request for `sts.amazonaws.com` gets an immediate 403
naming the host (no DNS lookup, no connection out), and the guard reports it on stderr. A
client that ignores NO_PROXY still reaches loopback destinations through the proxy.
Node.js honours the proxy variables through NODE_USE_ENV_PROXY (Node 22.21+).
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from socketserver import BaseRequestHandler, ThreadingTCPServer
from typing import TextIO
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
NO_PROXY = "localhost,127.0.0.1,::1,.localhost,127.0.0.0/8"


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address literal) is loopback, without resolving it."""
    host = host.strip("[]").lower().rstrip(".")
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_host_port(authority: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(f"//{authority}")
    return (parts.hostname or "", parts.port or default_port)


class _Handler(BaseRequestHandler):
    server: _GuardServer

    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.settimeout(30)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(65536)
            if not chunk:
                return
            head += chunk
            if len(head) > 65536:
                return
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        try:
            method, target, version = line.split(" ", 2)
        except ValueError:
            return
        if method.upper() == "CONNECT":
            host, port = _split_host_port(target, 443)
        else:
            parts = urlsplit(target)
            host, port = parts.hostname or "", parts.port or 80
        if not is_loopback(host):
            self.server.refuse(host, port)
            body = (
                f"enclavekit egress guard: refused a connection to {host}:{port} - only "
                "loopback is reachable from a local deploy (nothing may reach real AWS)\n"
            ).encode()
            conn.sendall(
                b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n"
                b"X-Enclavekit-Egress: refused\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            return
        try:
            upstream = socket.create_connection((host.strip("[]"), port), timeout=30)
        except OSError:
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        with upstream:
            if method.upper() == "CONNECT":
                conn.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                rest = head.split(b"\r\n\r\n", 1)[1]
            else:
                parts = urlsplit(target)
                origin = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                first = f"{method} {origin} {version}".encode("latin-1")
                rest = first + b"\r\n" + head.split(b"\r\n", 1)[1]
            if rest:
                upstream.sendall(rest)
            _pipe(conn, upstream)


def _pipe(a: socket.socket, b: socket.socket) -> None:
    sockets = [a, b]
    while True:
        readable, _, broken = select.select(sockets, [], sockets, 60)
        if broken or not readable:
            return
        for s in readable:
            data = s.recv(65536)
            if not data:
                return
            (b if s is a else a).sendall(data)


class _GuardServer(ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, report: Callable[[str, int], None]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self._report = report
        self.refused: list[str] = []
        self._lock = threading.Lock()

    def refuse(self, host: str, port: int) -> None:
        with self._lock:
            self.refused.append(f"{host}:{port}")
        self._report(host, port)


class EgressGuard:
    """A running guard: `env()` gives the proxy variables, `refused` what it turned away."""

    def __init__(self, server: _GuardServer):
        self._server = server

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def refused(self) -> list[str]:
        return list(self._server.refused)

    def env(self) -> dict[str, str]:
        """Proxy variables for a child process: everything but loopback goes to the guard."""
        out: dict[str, str] = {}
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            out[name] = out[name.lower()] = self.url
        out["NO_PROXY"] = out["no_proxy"] = NO_PROXY
        out["NODE_USE_ENV_PROXY"] = "1"
        # Node's env-proxy agent announces itself as experimental on every start: only that.
        out["NODE_OPTIONS"] = "--disable-warning=UNDICI-EHPA"
        return out


def refusal(host: str, port: int | str) -> str:
    """The one line that reports a refused destination."""
    return f"enclavekit egress guard: refused {host}:{port} (a local deploy reaches loopback only)"


def stderr_report(stream: TextIO) -> Callable[[str, int], None]:
    def report(host: str, port: int) -> None:
        print(refusal(host, port), file=stream, flush=True)

    return report


def start_guard(report: Callable[[str, int], None]) -> tuple[EgressGuard, Callable[[], None]]:
    """A running guard (daemon thread) and the function that stops it."""
    server = _GuardServer(report)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return EgressGuard(server), stop


@contextlib.contextmanager
def egress_guard(stream: TextIO | None = None) -> Iterator[EgressGuard]:
    """Run a guard for the duration of the block; refusals are reported on `stream`."""
    guard, stop = start_guard(stderr_report(stream or sys.stderr))
    try:
        yield guard
    finally:
        stop()
