"""The local AWS endpoint: moto in server mode with our extensions, loopback only.

`python -m local_backend.server --port P --state-dir D` is the endpoint process itself; the
functions `start`, `stop`, `status` and `ca_pem` are what `enclavekit local ...` calls to run it
detached. The process writes `<state>/endpoint.json` once it is bound and removes it on a clean
stop; on SIGTERM it first stops everything it started (the enclave-instance stop hooks).

State directory layout (all created on demand):
    endpoint.json     {"endpoint", "port", "pid", "state_dir", "started", "tls_endpoint", "iam"}
                      while running (tls_endpoint: the HTTPS front for AWS host names; iam: on/off)
    pki/aws-tls/      the CA of that HTTPS front (see tls_front.py)
    logs/endpoint.log the endpoint's log (requests, extension messages, errors)
    acm-ca/           the local CA that issues ACM certificates (root.pem, root-key.pem)
    persist/          the endpoint's state across stop/start, sealed (local_backend.persist)
    registry/         the image registry's blobs and token key (local_backend.registry)
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hmac
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from enclavekit.contract import DEFAULT_STATE_DIR, ENDPOINT_FILE
from enclavekit.contract import ENDPOINT_PORT as DEFAULT_PORT
from enclavekit.errors import BackendError, InvalidInput
from local_backend.endpoint_file import IAM_MODES, EndpointInfo, read_endpoint

HOST = "127.0.0.1"
LOG_FILE = Path("logs") / "endpoint.log"
KEYSCAN_PATH = "/_enclavekit/keyscan"
RENEW_PATH = "/_enclavekit/renew-certificate"  # ACM's managed renewal, for verify's probe
# The key search reads any process's memory and any path: only a caller that can read the
# state dir (0700) may ask. The token is created by the endpoint, one per state dir.
ADMIN_TOKEN_FILE = "endpoint-admin.token"
ADMIN_TOKEN_HEADER = "X-Enclavekit-Admin-Token"
HEALTH_PATH = "/_enclavekit/health"
MOTO_ADMIN_PREFIX = "/moto-api"  # moto's administration API: never served (see _app)
STATE_UMASK = 0o077
BODY_ENVIRON_KEY = "enclavekit.body"
RESTORE_TIMEOUT_S = 600.0  # `local start` waits this long for restored instances to boot again
_RESTORING = threading.Event()  # set while restored instances boot again (health says so)

log = logging.getLogger("enclavekit.endpoint")


@dataclass(frozen=True)
class EndpointStatus:
    """`local status`: where the endpoint is and whether it answers."""

    state_dir: str
    running: bool
    endpoint: str | None = None
    port: int | None = None
    pid: int | None = None
    started: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("extra")
        out.update(self.extra)
        return out


def endpoint_url(port: int) -> str:
    """The URL clients use: `localhost`, because moto special-cases it in S3 TemplateURLs."""
    return f"http://localhost:{port}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still "exists"; treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _health(port: int, timeout: float = 1.0) -> dict[str, Any] | None:
    """The endpoint's own health answer on `port`, or None if nothing of ours answers."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{HEALTH_PATH}", timeout=timeout) as r:
            data = json.loads(r.read())
            return data if isinstance(data, dict) else None
    except (OSError, ValueError, urllib.error.URLError):
        return None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def status(state_dir: Path = DEFAULT_STATE_DIR) -> EndpointStatus:
    """Whether the endpoint of `state_dir` runs, and where; plus what status providers add."""
    state_dir = Path(state_dir).resolve()
    info = read_endpoint(state_dir)
    if info is None:
        return EndpointStatus(state_dir=str(state_dir), running=False)
    health = _health(info.port) if _pid_alive(info.pid) else None
    running = bool(health) and health.get("pid") == info.pid
    extra: dict[str, Any] = {}
    if running:
        from local_backend.parent import instances_status

        extra["iam"] = str(health.get("iam", info.iam)) if health else info.iam
        extra["enclave_hosts"] = instances_status(state_dir)
    return EndpointStatus(
        state_dir=str(state_dir),
        running=running,
        endpoint=info.endpoint,
        port=info.port,
        pid=info.pid,
        started=info.started,
        extra=extra,
    )


def running_endpoint(state_dir: Path = DEFAULT_STATE_DIR) -> EndpointInfo:
    """The running endpoint of `state_dir`, or a one-line BackendError saying how to start it."""
    st = status(state_dir)
    if not st.running:
        raise BackendError(
            f"the local endpoint of {st.state_dir} is not running: "
            "start it with `enclavekit local start`"
        )
    info = read_endpoint(Path(st.state_dir))
    assert info is not None
    return info


def start(
    port: int = DEFAULT_PORT,
    state_dir: Path = DEFAULT_STATE_DIR,
    *,
    timeout: float = 30.0,
    python: str | None = None,
    iam: str = "on",
) -> EndpointInfo:
    """Start the endpoint detached (idempotent) and wait until it answers.

    `iam="off"` turns IAM enforcement of non-KMS calls off (moto's old behaviour)."""
    if not 0 < port < 65536:
        raise InvalidInput(f"--port: expected 1..65535, found {port}")
    if iam not in IAM_MODES:
        raise InvalidInput(f"--iam: expected on or off, found {iam!r}")
    state_dir = Path(state_dir).resolve()
    st = status(state_dir)
    if st.running:
        info = read_endpoint(state_dir)
        assert info is not None
        return info
    private_state_dir(state_dir)
    (state_dir / ENDPOINT_FILE).unlink(missing_ok=True)
    if not _port_free(port):
        raise BackendError(
            f"port {port} on {HOST} is already in use by another process: "
            "stop it or pass another --port"
        )
    (state_dir / LOG_FILE).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    logf = os.fdopen(  # handed to the child
        os.open(state_dir / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab"
    )
    try:
        proc = subprocess.Popen(
            [
                python or sys.executable,
                "-m",
                "local_backend.server",
                "--port",
                str(port),
                "--state-dir",
                str(state_dir),
                "--iam",
                iam,
            ],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(Path(__file__).resolve().parent.parent),
            env=_server_env(),
            umask=STATE_UMASK,  # everything the endpoint and its parents write: owner-only
        )
    finally:
        logf.close()
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        rc = proc.poll()
        if rc is not None:
            raise BackendError(
                f"the local endpoint exited at start with status {rc}: "
                f"see {state_dir / LOG_FILE} ({_last_log_line(state_dir)})"
            )
        health = _health(port, timeout=0.5)
        if health and health.get("pid") == proc.pid:
            info = read_endpoint(state_dir)
            if info is not None:
                if health.get("restoring"):  # the restored instances are booting again
                    deadline = max(deadline, time.monotonic() + 1.0)
                    if time.monotonic() - started < RESTORE_TIMEOUT_S:
                        time.sleep(0.2)
                        continue
                return info
        time.sleep(0.1)
    _terminate(proc.pid, 5.0)
    raise BackendError(f"the local endpoint did not answer on port {port} within {timeout:.0f} s")


def private_state_dir(state_dir: Path) -> Path:
    """Make `state_dir` (and its top-level entries) owner-only: logs, keys and the endpoint's
    address are nobody else's business on a shared machine."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    for entry in state_dir.iterdir():
        with contextlib.suppress(OSError):
            if not entry.is_symlink():
                os.chmod(entry, 0o700 if entry.is_dir() else entry.stat().st_mode & 0o700)
    return state_dir


def _server_env() -> dict[str, str]:
    """The endpoint's own environment: no real AWS credentials or endpoints at all."""
    from enclavekit.localenv import strip_aws_env

    env = strip_aws_env(os.environ)
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _last_log_line(state_dir: Path) -> str:
    try:
        lines = [ln for ln in (state_dir / LOG_FILE).read_text(errors="replace").splitlines() if ln]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "empty log"


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM `pid`, wait, then SIGKILL its process group (everything it started)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.05)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
    # The endpoint leads its own session/process group: reap anything left in it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, 0)


def stop(state_dir: Path = DEFAULT_STATE_DIR, *, timeout: float = 15.0) -> bool:
    """Stop the endpoint of `state_dir` and what it started; False if none was running."""
    state_dir = Path(state_dir).resolve()
    info = read_endpoint(state_dir)
    if info is None:
        return False
    was_running = _pid_alive(info.pid)
    if was_running:
        _terminate(info.pid, timeout)
    from local_backend.parent import sweep

    for instance_id in sweep(state_dir):  # an endpoint that died left its parents behind
        log.warning("stopped the orphaned parent of %s", instance_id)
    (state_dir / ENDPOINT_FILE).unlink(missing_ok=True)
    return was_running


def ca_pem(state_dir: Path = DEFAULT_STATE_DIR) -> bytes:
    """The local CA root (PEM) that issues ACM certificates for `state_dir` (created once)."""
    from local_backend.moto_ext.acm.models import LocalCa

    return LocalCa.load_or_create(Path(state_dir).resolve() / "acm-ca").root_pem


# ---------------------------------------------------------------- the endpoint process


def admin_token(state_dir: Path, *, create: bool = False) -> str:
    """The endpoint's administration token (`<state>/endpoint-admin.token`, mode 0600)."""
    path = Path(state_dir) / ADMIN_TOKEN_FILE
    if create and not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    try:
        return path.read_text().strip()
    except OSError:
        raise BackendError(
            f"{path}: the endpoint's admin token is missing (is the endpoint running?)"
        ) from None


def _json_reply(
    start_response: Callable[..., Any], status_line: str, payload: dict[str, Any]
) -> Any:
    body = json.dumps(payload).encode()
    start_response(
        status_line, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def _keyscan(environ: dict[str, Any], start_response: Callable[..., Any], token: str) -> Any:
    """verify's question to "ACM": where, besides the enclave, is this certificate's key?

    The endpoint holds the key (as ACM does), so it searches itself; only the places found
    go back, never key bytes. The search reads process memory and files as the endpoint's
    user, so it answers only a caller holding the admin token from the 0700 state dir:
    loopback alone would let any local user probe other users' processes and files.
    """
    from local_backend import keyscan
    from local_backend.moto_ext.acm.models import certificate_material

    def scan(req: dict[str, Any]) -> Any:
        _, _, key_pem = certificate_material(
            req["account_id"], req["region"], req["certificate_arn"]
        )
        return keyscan.scan(key_pem, paths=req.get("paths", []), pids=req.get("pids", []))

    return _admin_call(environ, start_response, token, "the key search", scan)


def _renew(environ: dict[str, Any], start_response: Callable[..., Any], token: str) -> Any:
    """verify's renewal probe: what ACM's managed renewal does to a certificate it issued (a
    new certificate and key under the same ARN, its associations' S3 objects re-published).
    AWS has no API for it (ACM renews on its own schedule), so only the admin token may ask."""
    from local_backend.moto_ext.acm.models import renew_certificate
    from local_backend.moto_ext.ec2.certificates import republish

    def renew(req: dict[str, Any]) -> Any:
        account, region, arn = req["account_id"], req["region"], req["certificate_arn"]
        bundle = renew_certificate(account, region, arn)
        return {"certificate": bundle.cert.decode(), "republished": republish(account, region, arn)}

    return _admin_call(environ, start_response, token, "the certificate renewal", renew)


def _admin_call(
    environ: dict[str, Any],
    start_response: Callable[..., Any],
    token: str,
    what: str,
    fn: Callable[[dict[str, Any]], Any],
) -> Any:
    """An administration request: the admin token, a JSON body to `fn`, its JSON answer."""
    given = environ.get("HTTP_" + ADMIN_TOKEN_HEADER.upper().replace("-", "_"), "")
    if not hmac.compare_digest(given.encode(), token.encode()):
        return _json_reply(
            start_response,
            "403 Forbidden",
            {"error": f"AccessDenied: {what} needs the {ADMIN_TOKEN_HEADER} header"},
        )
    try:
        size = int(environ.get("CONTENT_LENGTH") or 0)
        result = fn(json.loads(environ["wsgi.input"].read(size)))
        status_line, body = "200 OK", json.dumps(result).encode()
    except Exception as exc:  # noqa: BLE001 - answered as a one-line error
        status_line = "400 Bad Request"
        body = json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode()
    start_response(
        status_line, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def _not_found(start_response: Callable[..., Any]) -> Any:
    body = json.dumps({"message": "Not Found"}).encode()
    start_response(
        "404 Not Found",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


def _app(state_dir: Path, iam: str = "on") -> Callable[..., Any]:
    """moto's WSGI dispatcher behind a tiny health route of our own.

    moto's own administration API (`/moto-api/`: a dump of every backend with its secret
    keys, a request recorder that keeps request bodies such as an Encrypt's plaintext, reset,
    config) is not served: AWS has no such thing, and on loopback anyone could call it
    unsigned. moto routes to it on exactly this PATH_INFO prefix, so this refusal is complete.
    """
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    from local_backend.moto_ext import identity
    from local_backend.registry import Registry, handles

    moto_app = DomainDispatcherApplication(create_backend_app)
    registry = Registry(state_dir)
    pid = os.getpid()
    token = admin_token(state_dir, create=True)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if isinstance(path, bytes):
            path = path.decode("utf-8", "replace")
        if path.startswith(MOTO_ADMIN_PREFIX):
            return _not_found(start_response)
        if environ.get("PATH_INFO") == KEYSCAN_PATH and environ.get("REQUEST_METHOD") == "POST":
            return _keyscan(environ, start_response, token)
        if environ.get("PATH_INFO") == RENEW_PATH and environ.get("REQUEST_METHOD") == "POST":
            return _renew(environ, start_response, token)
        if environ.get("PATH_INFO") == HEALTH_PATH:
            body = json.dumps(
                {
                    "pid": pid,
                    "state_dir": str(state_dir),
                    "iam": iam,
                    "restoring": _RESTORING.is_set(),
                }
            ).encode()
            start_response(
                "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
            )
            return [body]
        if handles(environ):  # the image registry (its own Basic auth, ECR's token)
            return registry(environ, start_response)
        _keep_body(environ)
        if iam == "on":
            refused = _unauthenticated(environ)
            if refused is not None:
                status_line, content_type, body = refused
                start_response(
                    status_line,
                    [("Content-Type", content_type), ("Content-Length", str(len(body)))],
                )
                return [body]
        with identity.request_source(environ.get("REMOTE_ADDR")):
            return moto_app(environ, start_response)

    return app


def _unauthenticated(environ: dict[str, Any]) -> tuple[str, str, bytes] | None:
    """AWS's answer to a request that carries no signature, where moto would route it to S3
    and answer: JSON services (X-Amz-Target) and query services (Action=) refuse it; moto's
    own control API (/moto-api/) does not exist on AWS. None: let it through (S3 then judges
    an anonymous request by its bucket policy)."""
    if environ.get("PATH_INFO", "").startswith("/moto-api"):
        return (
            "403 Forbidden",
            "application/xml",
            _xml_error("AccessDenied", "Access Denied", "Error"),
        )
    if environ.get("HTTP_AUTHORIZATION") or "X-Amz-Credential=" in environ.get("QUERY_STRING", ""):
        return None
    if environ.get("HTTP_X_AMZ_TARGET"):
        body = json.dumps(
            {
                "__type": "MissingAuthenticationTokenException",
                "message": "Missing Authentication Token",
            }
        ).encode()
        return "403 Forbidden", "application/x-amz-json-1.1", body  # AWS Common Errors: 403
    form = environ.get(BODY_ENVIRON_KEY, b"") or b""
    query = environ.get("QUERY_STRING", "")
    if (
        query.startswith("Action=")
        or "&Action=" in query
        or form.startswith(b"Action=")
        or (b"&Action=" in form)
    ):
        return (
            "403 Forbidden",
            "text/xml",
            _xml_error(
                "MissingAuthenticationToken",
                "Request is missing Authentication Token",
                "ErrorResponse",
            ),
        )
    return None


def _xml_error(code: str, message: str, root: str) -> bytes:
    inner = f"<Code>{code}</Code><Message>{message}</Message>"
    if root == "ErrorResponse":
        inner = f"<Error><Type>Sender</Type>{inner}</Error>"
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}>{inner}</{root}>'.encode()


def _keep_body(environ: dict[str, Any]) -> None:
    """Keep the request body's bytes as sent (`BODY_ENVIRON_KEY`): werkzeug parses form bodies
    away, and SigV4 signs the bytes (the IAM layer re-computes every signature)."""
    import io

    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return
    if length <= 0:
        return
    body = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(body)
    environ[BODY_ENVIRON_KEY] = body


def serve(port: int, state_dir: Path, iam: str = "on") -> int:
    """Run the endpoint in this process until SIGTERM/SIGINT; returns the exit status."""
    from werkzeug.serving import make_server

    from local_backend import moto_ext, parent
    from local_backend.moto_ext import iam_authz
    from local_backend.moto_ext.ec2 import stop_all_enclave_instances

    state_dir = Path(state_dir).resolve()
    os.umask(STATE_UMASK)
    private_state_dir(state_dir)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    moto_ext.install(state_dir)
    from local_backend.moto_ext.ecr import models as ecr_models

    ecr_models.set_registry_port(port)  # repository URIs and tokens name the registry here
    iam_authz.install(enabled=iam == "on")
    parent.install(state_dir)  # instances boot their user data in hosts
    from local_backend import persist

    restored = persist.restore(state_dir)  # what the last run left: stacks, keys, instances
    persist.install(state_dir)
    try:
        from moto.moto_server.werkzeug_app import MotoRequestHandler

        server = make_server(
            HOST, port, _app(state_dir, iam), threaded=True, request_handler=MotoRequestHandler
        )
    except OSError as exc:
        log.error("cannot bind %s:%s: %s", HOST, port, exc)
        return 3
    from local_backend.tls_front import TlsFront, endpoint_ca

    tls_front = TlsFront(endpoint_ca(state_dir), (HOST, port)).start()
    info = EndpointInfo(
        endpoint=endpoint_url(port),
        port=port,
        pid=os.getpid(),
        state_dir=str(state_dir),
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        tls_endpoint=tls_front.url,
        iam=iam,
    )
    tmp = state_dir / (ENDPOINT_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(info), indent=2) + "\n")
    tmp.replace(state_dir / ENDPOINT_FILE)
    log.info(
        "local endpoint %s serving (pid %s, state %s, IAM enforcement %s)",
        info.endpoint,
        info.pid,
        state_dir,
        iam,
    )

    def _shutdown(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    if restored:  # boots need the endpoint serving (the parents call it), so in a thread
        _RESTORING.set()
        threading.Thread(
            target=lambda: (persist.boot_restored(restored), _RESTORING.clear()),
            name="boot-restored",
            daemon=True,
        ).start()
    try:
        server.serve_forever()
    finally:
        persist.snapshot_on_stop(state_dir)  # before the hosts stop: they are part of it
        stop_all_enclave_instances()
        tls_front.stop()
        with contextlib.suppress(OSError):
            current = read_endpoint(state_dir)
            if current is not None and current.pid == os.getpid():
                (state_dir / ENDPOINT_FILE).unlink()
        log.info("local endpoint stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_backend.server")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--iam", choices=IAM_MODES, default="on")
    args = parser.parse_args(argv)
    args.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return serve(args.port, args.state_dir, args.iam)


if __name__ == "__main__":
    sys.exit(main())
