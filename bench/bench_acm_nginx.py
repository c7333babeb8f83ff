"""Set-up A: TLS through nginx whose key is in ACM's enclave (PKCS#11 over vsock), against the
same nginx with the key in a file, in the same run.

Target: the sample app's `WebHost` deployed with `enclavekit up` (no verify) on a fresh state
dir: nginx 1.22 on the parent with `ssl_engine pkcs11`, the certificate's RSA key in the ACM
enclave's token (p11-kit server + SoftHSMv2 behind our PKCS#11 module), every private-key
operation a p11-kit RPC over the emulated vsock.

Baseline, in the same nginx of the same host: a second server block on port 8443 with an
RSA-2048 key and certificate in files (the same key algorithm and size as the ACM
certificate), the same `ssl_protocols TLSv1.2` and the same `return 200 "ok"` answer. The client
runs inside the host (Python `ssl`, no verification: both sides pay the same), alternating the
two servers case by case so load bursts on the shared machine fall on both.

Modes: new connections (one TLS handshake, one request, close) and keep-alive (requests on one
connection). Aims from the issue: new connections >= 0.6x, keep-alive >= 0.95x.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from bench.bench_up import copy_sample_app, free_port, timed_up

CASE_SECONDS = float(os.environ.get("BENCH_ACM_SECONDS", "4"))
ROUNDS = int(os.environ.get("BENCH_ACM_ROUNDS", "3"))
FILE_PORT = 8443

_FILE_SERVER = """
set -e
install -d -m 0755 /etc/pki/nginx/bench
OPENSSL_CONF=/etc/pki/tls/openssl.cnf openssl req -x509 -newkey rsa:2048 -nodes -days 2 \\
  -subj /CN=enclave.example.test -keyout /etc/pki/nginx/bench/key.pem \\
  -out /etc/pki/nginx/bench/cert.pem
cat > /etc/nginx/conf.d/bench-file-key.conf <<'EOF2'
server {
    listen %(port)d ssl;
    server_name _;
    ssl_protocols TLSv1.2;
    ssl_certificate "/etc/pki/nginx/bench/cert.pem";
    ssl_certificate_key "/etc/pki/nginx/bench/key.pem";
    location / { return 200 "ok\\n"; }
}
EOF2
systemctl restart nginx
"""

# Run inside the host: count requests per case; print JSON.
_CLIENT = """
import json, socket, ssl, sys, time
ports = {"enclave": 443, "file": %(port)d}
seconds, rounds = %(seconds)f, %(rounds)d
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.maximum_version = ssl.TLSVersion.TLSv1_2
REQ = b"GET / HTTP/1.1\\r\\nHost: enclave.example.test\\r\\n\\r\\n"

def read_answer(tls):
    data = b""
    while not data.endswith(b"ok\\n"):
        chunk = tls.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk

def new_conns(port):
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="enclave.example.test") as tls:
                tls.sendall(REQ)
                read_answer(tls)
        n += 1
    return n / seconds

def keep_alive(port):
    # nginx closes a keep-alive connection after keepalive_requests (1000): reconnect then,
    # on both servers alike
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="enclave.example.test") as tls:
                try:
                    while time.monotonic() < end:
                        tls.sendall(REQ)
                        read_answer(tls)
                        n += 1
                except (ConnectionError, ssl.SSLError, BrokenPipeError):
                    continue
    return n / seconds

out = {m: {k: [] for k in ports} for m in ("new", "keepalive")}
for _ in range(rounds):
    for mode, fn in (("new", new_conns), ("keepalive", keep_alive)):
        for name, port in ports.items():
            out[mode][name].append(fn(port))
print(json.dumps(out))
"""


def _web_host(state_dir: Path) -> object:
    from local_backend.host import hooks

    for layout in hooks.hosts(state_dir):
        if str(layout.read_info().get("logical_id", "")).startswith("WebHost"):
            return layout
    raise RuntimeError("the sample's WebHost is not running")


def main() -> None:
    from statistics import median

    from local_backend.host import control
    from local_backend.server import stop
    from local_backend.verify.acm_host import acm_tokens, wait_for_stanza
    from local_backend.verify.acm_tls import check_acm_https
    from local_backend.verify.userdata import UserDataHost

    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        app = copy_sample_app(Path(tmp) / "app", web_host=True)
        try:
            timed_up(app, state, free_port(), run_verify=False)
            layout = _web_host(state)
            h = UserDataHost(layout, state)  # type: ignore[arg-type]
            token = acm_tokens(h)[0]
            waiting = wait_for_stanza(h, token)
            if waiting:
                raise RuntimeError(waiting)
            ok, why = check_acm_https(h, token)  # serving, signed in the enclave
            if not ok:
                raise RuntimeError(f"the web host does not serve from the enclave: {why}")
            run = control.host_exec(
                layout, ["bash", "-c", _FILE_SERVER % {"port": FILE_PORT}], timeout=120
            )  # type: ignore[arg-type]
            if run.returncode != 0:
                raise RuntimeError(f"the file-key server: {(run.stdout + run.stderr)[-600:]}")
            code = _CLIENT % {"port": FILE_PORT, "seconds": CASE_SECONDS, "rounds": ROUNDS}
            run = control.host_exec(layout, ["python3", "-c", code], timeout=600)  # type: ignore[arg-type]
            if run.returncode != 0:
                raise RuntimeError(f"the client: {run.stderr[-400:]}")
            res = json.loads(run.stdout.strip().splitlines()[-1])
        finally:
            stop(state)
    print("set-up A: nginx + PKCS#11 + ACM enclave vs the same nginx with a key file")
    print(f"{'mode':<26} {'enclave /s':>11} {'file /s':>9} {'ratio':>6}  aim")
    for mode, label, aim in (
        ("new", "new TLS 1.2 connections", 0.6),
        ("keepalive", "keep-alive requests", 0.95),
    ):
        enc, fil = median(res[mode]["enclave"]), median(res[mode]["file"])
        print(f"{label:<26} {enc:>11.1f} {fil:>9.1f} {enc / fil:>5.2f}x  >= {aim}x")
    print(f"(median of {ROUNDS} alternating {CASE_SECONDS:.0f} s cases; client inside the host)")


if __name__ == "__main__":
    main()
