"""HTTPS requests per second through the parent relay into the enclave, against direct TLS.

Target: the sample app deployed with `enclavekit up` (no verify) on a fresh state dir, its host
booted from its user data. A request goes client -> the machine port forwarded into the host
(its security group lets 443 in) -> the host's socat relay unit (TCP 443 -> vsock) -> emulated
vsock (a Unix socket) -> the enclave program, which terminates TLS and answers inside it.

Baseline, in the same run: the enclave program's own HTTPS server (`enclave_app.tls`: same
TLS context set-up, same HTTP/1.1 handler, same logging) started as a plain process on a
loopback TCP port — no relay, no vsock, no enclave isolation — with a certificate of the same
key algorithm issued by the same local ACM CA for the same domain, and a module label of the
same length, so the response bodies have exactly the same size. The client is the same for
both: Python `ssl`, verifying the chain to the local CA for the domain.

Modes: a new TCP+TLS connection per request (`Connection: close`), and keep-alive (requests on
one connection per client), each with 1 client and with CLIENTS concurrent clients. Every case
is bounded by a request count and a time limit, whichever comes first.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bench.bench_up import copy_sample_app, free_port, timed_up

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 4
NEW_LIMIT = int(os.environ.get("BENCH_HTTPS_NEW_N", "400"))  # requests per case, at most
KEEPALIVE_LIMIT = int(os.environ.get("BENCH_HTTPS_KEEPALIVE_N", "3000"))
CASE_SECONDS = float(os.environ.get("BENCH_HTTPS_SECONDS", "4"))  # per case, at most
IO_TIMEOUT_S = 10.0

# The baseline server: enclave_app's TLS server on a TCP listener, logging as in the enclave,
# with TCP_NODELAY on its connections like the parent relay's client side.
_DIRECT_SERVER = """
import logging, socket, sys
from pathlib import Path
from enclave_app.tls import TlsServer, load_identity
class DirectTlsServer(TlsServer):
    def serve(self, conn, addr):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().serve(conn, addr)
logging.basicConfig(stream=sys.stderr, level="INFO",
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
d = Path(sys.argv[1])
identity = load_identity((d / "cert.pem").read_text(), (d / "chain.pem").read_text(),
                         (d / "key.pem").read_bytes())
listener = socket.create_server(("127.0.0.1", 0), backlog=16)
server = DirectTlsServer(listener, sys.argv[2])
server.set_identity(identity)
server.start()
print(listener.getsockname()[1], flush=True)
sys.stdin.read()
server.stop()
"""


@dataclass(frozen=True)
class Target:
    """Where an HTTPS server listens and how a client checks it is the right one."""

    name: str
    port: int
    domain: str
    context: ssl.SSLContext
    module_id: str


@dataclass(frozen=True)
class Rate:
    """One measured case."""

    requests: int
    seconds: float
    p50_ms: float
    p95_ms: float

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


class _Conn:
    """A client TLS connection that sends GETs and reads HTTP/1.1 answers by Content-Length."""

    def __init__(self, target: Target) -> None:
        raw = socket.create_connection(("127.0.0.1", target.port), timeout=IO_TIMEOUT_S)
        try:
            self.tls = target.context.wrap_socket(raw, server_hostname=target.domain)
        except BaseException:
            raw.close()
            raise
        self.reader = self.tls.makefile("rb")
        self.host = target.domain

    def get(self, path: str, *, close: bool) -> bytes:
        extra = "Connection: close\r\n" if close else ""
        self.tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n{extra}\r\n".encode())
        status = self.reader.readline()
        if not status.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"HTTP answer {status[:40]!r}")
        length = None
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise RuntimeError("HTTP answer without Content-Length")
        body = self.reader.read(length)
        if len(body) != length:
            raise RuntimeError(f"HTTP body cut short: {len(body)} of {length} bytes")
        return body

    def close(self) -> None:
        self.reader.close()
        self.tls.close()


def fetch(target: Target, path: str = "/bench") -> bytes:
    """One request on a new connection; the response body."""
    conn = _Conn(target)
    try:
        return conn.get(path, close=True)
    finally:
        conn.close()


def keepalive_supported(target: Target) -> bool:
    """True if a second request on the same connection is answered."""
    conn = _Conn(target)
    try:
        conn.get("/bench/1", close=False)
        try:
            conn.get("/bench/2", close=False)
        except (OSError, RuntimeError):
            return False
        return True
    finally:
        conn.close()


def run_case(target: Target, *, keepalive: bool, clients: int, limit: int, seconds: float) -> Rate:
    """Requests of `clients` concurrent clients until `limit` requests or `seconds` have passed."""
    fetch(target)  # warm-up
    tickets = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    def client() -> None:
        conn = _Conn(target) if keepalive else None
        mine: list[float] = []
        try:
            while time.perf_counter() < deadline:
                with lock:
                    if next(tickets) >= limit:
                        break
                t0 = time.perf_counter()
                if conn is None:
                    one = _Conn(target)
                    try:
                        one.get("/bench", close=True)
                    finally:
                        one.close()
                else:
                    conn.get("/bench", close=False)
                mine.append(time.perf_counter() - t0)
        finally:
            if conn is not None:
                conn.close()
            with lock:
                latencies.extend(mine)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    elapsed = time.perf_counter() - start
    if not latencies:
        raise RuntimeError(f"{target.name}: no request completed in {seconds} s")
    latencies.sort()
    return Rate(
        len(latencies),
        elapsed,
        statistics.median(latencies) * 1e3,
        latencies[int(0.95 * (len(latencies) - 1))] * 1e3,
    )


def _key_algorithm(cert_der: bytes) -> str:
    """The ACM KeyAlgorithm name of a certificate's public key."""
    key = x509.load_der_x509_certificate(cert_der).public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048:
        return "RSA_2048"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {"secp256r1": "EC_prime256v1", "secp384r1": "EC_secp384r1"}[key.curve.name]
    raise RuntimeError(f"enclave certificate key of an unexpected kind: {key!r}")


def enclave_target(state_dir: Path) -> Target:
    """The deployed sample app's host: the machine port forwarded to its service port (the
    host's socat relay to the enclave), its domain and enclave id."""
    from local_backend import server
    from local_backend.deploy import enclave_hosts

    for h in enclave_hosts(state_dir):
        st = h.state()
        if not st["relay_port"]:
            continue
        context = ssl.create_default_context(cadata=server.ca_pem(state_dir).decode())
        return Target(
            "enclave via relay",
            int(st["relay_port"]),
            st["domain"],
            context,
            st["enclave"]["EnclaveID"],
        )
    raise RuntimeError(f"no running enclave host with a forwarded service port under {state_dir}")


def served_key_algorithm(target: Target) -> str:
    """The ACM KeyAlgorithm of the certificate `target` presents."""
    probe = _Conn(target)
    try:
        der = probe.tls.getpeercert(binary_form=True)
    finally:
        probe.close()
    if der is None:
        raise RuntimeError(f"{target.name}: no server certificate")
    return _key_algorithm(der)


@contextmanager
def direct_server(
    state_dir: Path, domain: str, key_algorithm: str, label: str, work: Path
) -> Iterator[Target]:
    """The baseline: enclave_app's TLS server as a plain loopback process, stopped on exit.

    Its certificate is issued for `domain` by the local ACM CA of `state_dir` with
    `key_algorithm`; its answers name `label` where the enclave's name its module id.
    """
    from local_backend import server
    from local_backend.moto_ext.acm.models import LocalCa

    ca = LocalCa.load_or_create(state_dir / "acm-ca")
    cert_pem, key_pem = ca.issue(domain, [], key_algorithm)
    work.mkdir(mode=0o700, parents=True, exist_ok=True)
    (work / "cert.pem").write_bytes(cert_pem)
    (work / "chain.pem").write_bytes(ca.root_pem)
    fd = os.open(work / "key.pem", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    proc = subprocess.Popen(
        [sys.executable, "-c", _DIRECT_SERVER, str(work), label],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.strip().isdigit():
            raise RuntimeError("the direct TLS server did not start")
        context = ssl.create_default_context(cadata=server.ca_pem(state_dir).decode())
        yield Target("direct TLS (baseline)", int(line), domain, context, label)
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def same_length_label(module_id: str) -> str:
    """A label as long as `module_id`, so both servers' answers have the same size."""
    return ("direct-" + "0" * len(module_id))[: len(module_id)]


CASES: tuple[tuple[str, bool, int, int], ...] = (
    ("new connection, 1 client", False, 1, NEW_LIMIT),
    (f"new connection, {CLIENTS} clients", False, CLIENTS, NEW_LIMIT),
    ("keep-alive, 1 client", True, 1, KEEPALIVE_LIMIT),
    (f"keep-alive, {CLIENTS} clients", True, CLIENTS, KEEPALIVE_LIMIT),
)


def compare(
    enclave: Target,
    direct: Target,
    *,
    seconds: float = CASE_SECONDS,
    cases: tuple[tuple[str, bool, int, int], ...] = CASES,
    out: Callable[[str], None] = print,
) -> list[tuple[str, Rate | None, Rate | None]]:
    """Check both targets answer alike, then measure every case on both; print the table."""
    body_a, body_b = fetch(enclave), fetch(direct)
    a = json.loads(body_a)
    if a.get("enclave_module_id") != enclave.module_id:
        raise RuntimeError(f"answered by {a.get('enclave_module_id')}, not the enclave")
    if len(body_a) != len(body_b):
        raise RuntimeError(
            f"response bodies differ in size: enclave {len(body_a)}, direct {len(body_b)} bytes"
        )
    alive = keepalive_supported(enclave)
    rows: list[tuple[str, Rate | None, Rate | None]] = []
    for name, keepalive, clients, limit in cases:
        if keepalive and not alive:
            rows.append((name, None, None))
            continue
        r_enclave = run_case(
            enclave, keepalive=keepalive, clients=clients, limit=limit, seconds=seconds
        )
        r_direct = run_case(
            direct, keepalive=keepalive, clients=clients, limit=limit, seconds=seconds
        )
        rows.append((name, r_enclave, r_direct))
    out(
        f"HTTPS GET, {a.get('tls_version')}, response body {len(body_a)} bytes on both, domain "
        f"{enclave.domain}; each case stops at its request count or after {seconds:g} s"
    )
    out(f"{'':26} {'--- enclave via relay ---':^32}   {'--- direct TLS (baseline) ---':^32}")
    out(
        f"{'case':26} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'n':>6}   {'req/s':>7} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'n':>6}   {'x direct':>8}"
    )
    for name, r_e, r_d in rows:
        if r_e is None or r_d is None:
            out(f"{name:26} not measured: the enclave app does not keep connections alive")
            continue
        out(
            f"{name:26} {r_e.per_second:7.0f} {r_e.p50_ms:7.2f} {r_e.p95_ms:7.2f} "
            f"{r_e.requests:6d}   {r_d.per_second:7.0f} {r_d.p50_ms:7.2f} {r_d.p95_ms:7.2f} "
            f"{r_d.requests:6d}   {r_e.per_second / r_d.per_second:8.2f}"
        )
    out(
        "x direct = enclave req/s / direct req/s: the share of direct TLS throughput left after "
        "the relay, emulated vsock and enclave isolation"
    )
    return rows


def main() -> None:
    from local_backend import server

    with tempfile.TemporaryDirectory(prefix="bench-https-") as tmp:
        work = Path(tmp)
        app = copy_sample_app(work / "app")
        state = work / "state"
        try:
            timed_up(app, state, free_port(), run_verify=False)
            enclave = enclave_target(state)
            with direct_server(
                state,
                enclave.domain,
                served_key_algorithm(enclave),
                same_length_label(enclave.module_id),
                work / "direct",
            ) as direct:
                compare(enclave, direct)
        finally:
            server.stop(state)


if __name__ == "__main__":
    main()
