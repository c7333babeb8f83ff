"""Attacks on what the local endpoint serves besides AWS's APIs (no credentials needed).

moto's server mounts its own administration API under `/moto-api/`: a dump of every backend
(`data.json`: IAM secret keys, STS session tokens), a request recorder that writes every later
request body (a KMS Encrypt's plaintext: the secrets `up` seals) to a file and hands it back,
`reset` (every key, stack and sealed secret gone), `config`, `seed`. Any local process, as any
user, reached it over loopback without signing anything. AWS has no such API: the endpoint
must not serve it, on any host name, through the TLS front neither.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import Target

pytestmark = pytest.mark.slow
NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
REFUSED = (403, 404)  # not served: no such API (404) or refused before moto (403)
ADMIN_PATHS = (
    ("GET", "/moto-api/"),
    ("GET", "/moto-api/data.json"),
    ("GET", "/moto-api/reset"),  # GET only: a POST would wipe the suite's deployment pre-fix
    ("GET", "/moto-api/recorder/download-recording"),
    ("GET", "/moto-api/config"),
    ("GET", "/moto-api/state-manager/get-transition?model_name=x"),
    ("GET", "/moto-api/proxy/passthrough"),
)


def _request(url: str, method: str = "GET", data: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, data=data)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_moto_admin_api_is_not_served(target: Target) -> None:
    """Before: 200 for every path; data.json held 50 IAM/STS secret access keys."""
    base = target.endpoint.url
    for method, path in ADMIN_PATHS:
        status, body = _request(base + path, method)
        assert status in REFUSED, (path, status, body[:200])
        assert b"secret_access_key" not in body


def test_recorder_cannot_capture_a_sealed_plaintext(target: Target) -> None:
    """Before: POST start-recording (no credentials), then the operator's Encrypt of a secret,
    then GET download-recording returned the request with the plaintext; the recording was
    also left in the endpoint's working directory."""
    base = target.endpoint.url
    plaintext = b"recorder-attack plaintext 6b1f"
    recording = Path(os.readlink(f"/proc/{target.endpoint.pid}/cwd")) / "moto_recording"
    before = recording.stat().st_mtime_ns if recording.exists() else None
    try:
        status, _ = _request(base + "/moto-api/recorder/start-recording", "POST", b"")
        assert status in REFUSED
        target.endpoint.client("kms").encrypt(KeyId=target.key_arn, Plaintext=plaintext)
        status, body = _request(base + "/moto-api/recorder/download-recording")
        assert status in REFUSED
        assert b"cmVjb3JkZXItYXR0YWNr" not in body  # base64 of the plaintext's start
    finally:  # before the fix: leave no recorder running for the other tests
        with contextlib.suppress(OSError):
            _request(base + "/moto-api/recorder/stop-recording", "POST", b"")
    after = recording.stat().st_mtime_ns if recording.exists() else None
    assert after == before, f"the endpoint wrote {recording}"


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to user nobody needs root (CI is root)")
@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason=f"{SYSTEM_PYTHON} runs the probe")
def test_nobody_cannot_reach_the_admin_api_through_the_tls_front(target: Target) -> None:
    """The same refusal for another local user, over the endpoint's HTTPS front."""
    info = json.loads((target.endpoint.state_dir / "endpoint.json").read_text())
    port = int(str(info["tls_endpoint"]).rsplit(":", 1)[1])
    probe = (
        "import socket, ssl, sys\n"
        "ctx = ssl.create_default_context(); ctx.check_hostname = False\n"
        "ctx.verify_mode = ssl.CERT_NONE\n"
        f"s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {port}), timeout=10),\n"
        "                     server_hostname='kms.us-east-1.amazonaws.com')\n"
        "s.sendall(b'GET /moto-api/data.json HTTP/1.1\\r\\nHost: kms.us-east-1.amazonaws.com'\n"
        "          b'\\r\\nConnection: close\\r\\n\\r\\n')\n"
        "out = b''\n"
        "while chunk := s.recv(65536): out += chunk\n"
        "sys.stdout.write(out.split(b'\\r\\n', 1)[0].decode())\n"
        "sys.stdout.write(' secret' if b'secret_access_key' in out else '')\n"
    )
    out = subprocess.run(
        [SYSTEM_PYTHON, "-c", probe],  # the project's venv is not nobody's to run
        capture_output=True,
        text=True,
        timeout=60,
        user=NOBODY,
        group=NOBODY,
        cwd="/",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split(" ")[1] in {str(s) for s in REFUSED}, out.stdout
    assert "secret" not in out.stdout


def test_key_search_needs_the_admin_token(target: Target) -> None:
    """Before: any local process could POST /_enclavekit/keyscan and have the endpoint read
    any process's memory and any path as the endpoint's user (a presence oracle for the
    certificate keys it holds, and a memory-read amplifier). Now only a caller that can read
    the 0700 state dir's token is answered."""
    from local_backend import server

    url = target.endpoint.url + server.KEYSCAN_PATH
    req = json.dumps(
        {
            "certificate_arn": "arn:aws:acm:us-east-1:000000000000:certificate/none",
            "account_id": "000000000000",
            "region": "us-east-1",
            "paths": ["/"],
            "pids": [1],
        }
    ).encode()
    token_file = target.endpoint.state_dir / server.ADMIN_TOKEN_FILE
    assert token_file.stat().st_mode & 0o777 == 0o600
    for headers in ({}, {server.ADMIN_TOKEN_HEADER: "0" * 64}):
        r = urllib.request.Request(url, data=req, method="POST", headers=headers)
        try:
            urllib.request.urlopen(r, timeout=30)
            raise AssertionError(f"the key search answered without the token ({headers})")
        except urllib.error.HTTPError as exc:
            assert exc.code == 403, exc.code
            assert b"AccessDenied" in exc.read()
    good = {server.ADMIN_TOKEN_HEADER: server.admin_token(target.endpoint.state_dir)}
    r = urllib.request.Request(url, data=req, method="POST", headers=good)
    with pytest.raises(urllib.error.HTTPError) as err:  # past the token: no such certificate
        urllib.request.urlopen(r, timeout=30)
    assert err.value.code == 400
