"""`p11ne-agent`: the ACM for Nitro Enclaves parent agent (`nitro-enclaves-acm.service`).

Our own code with the behaviour of aws/aws-nitro-enclaves-acm `src/vtok_agent` (456d6a0):
read acm.yaml (`acm_config`); boot the ACM enclave with `nitro-cli run-enclave`; point p11-kit's
proxy at the enclave's PKCS#11 server (`/etc/pkcs11/modules/p11ne.module`, `remote:`) and
restart the vsock-proxy; wait for the enclave's RPC server (DescribeDevice); per token fetch
the key-material object from S3 with the AWS CLI (the association's
`s3://<partition>-ec2-enclave-certificate-<region>-<bucket>/<role-arn>/<cert-arn>`, the role
ARN from IMDS's InstanceRoleArn tag, else `aws iam get-role`, else the instance profile ARN),
AddToken with the instance role's IMDSv2 credentials as the envelope key, write the nginx
stanza and the certificate chain, then start or restart nginx. Every sync_interval_secs:
re-fetch, DescribeToken, then UpdateToken (changed object: restart nginx), RefreshToken (due),
or AddToken (gone). The enclave's process is checked every second; when it is gone the agent
exits with an error and systemd (`Restart=always`) starts it again: a new enclave, new tokens,
nginx restarted. Errors are logged as AWS's agent logs them (the denied S3/IAM call is the AWS
CLI's message; a refused KMS Decrypt in the enclave is `KmsDecryptFailed`).

The vtok_rpc transport (`src/vtok_rpc/src/transport.rs`): one `POST /rpc/v1 HTTP/1.1` request
per connection, JSON body (serde's externally tagged enums), reply `200 OK` + JSON
`{"Ok": ...}` / `{"Err": ...}`. vsock is the emulator's (Unix sockets per CID/port).
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from enclavekit.contract import PARENT_CID
from local_backend.host import acm_config
from local_backend.host.acm_config import Config, ConfigError, Token

RUN_DIR = "/run/nitro_enclaves/acm"
MODULE_FILE = "/etc/pkcs11/modules/p11ne.module"
IMDS = "http://169.254.169.254"
RPC_URL = "/rpc/v1"
RPC_TIMEOUT_S = 60.0
_exit = False
_started = time.monotonic()
_log_cfg = acm_config.Log()
_LEVELS = {name.upper(): i for i, name in enumerate(acm_config.LOG_LEVELS)}


def log(level: str, text: str) -> None:
    """AWS's logger: `|LEVEL | message` on stderr (the journal), optional uptime stamp."""
    if _LEVELS[level] > _LEVELS[_log_cfg.level.upper()]:
        return
    stamp = ""
    if _log_cfg.enable_timestamp:
        d = time.monotonic() - _started
        days, rest = divmod(d, 86400)
        h, rest = divmod(rest, 3600)
        m, s = divmod(rest, 60)
        stamp = f"[{int(days):3}d {int(h):02}:{int(m):02}:{s:09.6f}] "
    print(f"{stamp}|{level:6}| {text}", file=sys.stderr, flush=True)


class AgentError(Exception):
    pass


class ApiError(Exception):
    """An RPC answered `Err`: the vtok_rpc ApiError variant (e.g. KmsDecryptFailed)."""

    def __init__(self, value: Any) -> None:
        super().__init__(json.dumps(value) if not isinstance(value, str) else value)
        self.value = value


def aws_env() -> dict[str, str]:
    """The AWS CLI's environment: the service's, with IMDS given more than the CLI's 1 s x 1
    attempt (the local IMDS assumes the role at the endpoint and can be slower than EC2's on
    a loaded machine; a timeout would read as "Unable to locate credentials")."""
    env = dict(os.environ)
    env.setdefault("AWS_METADATA_SERVICE_TIMEOUT", "5")
    env.setdefault("AWS_METADATA_SERVICE_NUM_ATTEMPTS", "3")
    return env


def _sleep(seconds: float) -> bool:
    """Sleep unless told to exit; False when the exit condition is set."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if _exit:
            return False
        time.sleep(min(0.1, max(0.0, end - time.monotonic())))
    return not _exit


# ------------------------------------------------------------------ IMDS (imds.rs)


class Imds:
    """IMDSv2 reads, cached until the next sync (as the agent's IMDS cache)."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def invalidate(self) -> None:
        self._cache.clear()

    def _token(self) -> str:
        if "token" not in self._cache:
            req = urllib.request.Request(
                f"{IMDS}/latest/api/token",
                method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": "600"},
            )
            with urllib.request.urlopen(req, timeout=5) as r:
                self._cache["token"] = r.read().decode()
        return self._cache["token"]

    def fetch(self, path: str) -> str:
        req = urllib.request.Request(
            f"{IMDS}{path}", headers={"X-aws-ec2-metadata-token": self._token()}
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.read().decode()

    def _cached(self, key: str, fn: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def partition(self) -> str:
        return self._cached("partition", lambda: self.fetch("/latest/meta-data/services/partition"))

    def region(self) -> str:
        return self._cached("region", lambda: self.fetch("/latest/meta-data/placement/region"))

    def role_name(self) -> str:
        return self._cached(
            "role_name",
            lambda: self.fetch("/latest/meta-data/iam/security-credentials").strip().split()[0],
        )

    def creds(self) -> dict[str, Any]:
        return self._cached(
            "creds",
            lambda: json.loads(
                self.fetch(f"/latest/meta-data/iam/security-credentials/{self.role_name()}")
            ),
        )

    def role_arn(self) -> str:
        return self._cached("role_arn", self._role_arn)

    def _role_arn(self) -> str:
        try:
            return self.fetch("/latest/meta-data/tags/instance/InstanceRoleArn")
        except OSError:
            pass
        name = self.role_name()
        out = subprocess.run(
            ["aws", "iam", "get-role", "--role-name", name],
            capture_output=True,
            text=True,
            check=False,
            env=aws_env(),
        )
        if out.returncode == 0:
            return json.loads(out.stdout)["Role"]["Arn"]
        log(
            "WARN",
            "Cannot fetch IAM role arn using the AWS CLI iam get-role command. "
            "Falling back to using IMDS.",
        )
        if out.stderr.strip():
            log("WARN", out.stderr.strip().splitlines()[-1])
        log(
            "WARN",
            "For IAM roles with paths included, please add the IAM policy permission for "
            "iam:GetRole as per documentation - "
            "https://docs.aws.amazon.com/enclaves/latest/user/nitro-enclave-refapp.html.",
        )
        profile = json.loads(self.fetch("/latest/meta-data/iam/info"))["InstanceProfileArn"]
        return ":".join(
            f"role/{name}" if "instance-profile/" in word else word for word in profile.split(":")
        )


# ------------------------------------------------------------------ the enclave (enclave.rs)


def rpc_call(cid: int, port: int, request: Any, timeout: float = RPC_TIMEOUT_S) -> Any:
    """One vtok_rpc request: the `Ok` value, or ApiError for `Err`; OSError on transport."""
    from enclavekit.transport import EmulatedVsock
    from local_backend.host.layout import HOST_EMULATOR_STATE

    body = json.dumps(request).encode()
    sock = EmulatedVsock(Path(HOST_EMULATOR_STATE) / "vsock", PARENT_CID).connect(cid, port)
    with sock:
        sock.settimeout(timeout)
        sock.sendall(
            f"POST {RPC_URL} HTTP/1.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("RPC: connection closed before the response headers")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if lines[0].split()[:2] != ["200", "OK"]:
            raise ConnectionError(f"RPC: bad response line {lines[0]!r}")
        length = next(
            (int(v) for k, _, v in (h.partition(": ") for h in lines[1:]) if k == "Content-Length"),
            None,
        )
        if length is None or length > 64 * 1024:
            raise ConnectionError("RPC: bad Content-Length")
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("RPC: connection closed in the response body")
            rest += chunk
    reply = json.loads(rest[:length])
    if isinstance(reply, dict) and "Err" in reply:
        raise ApiError(reply["Err"])
    if isinstance(reply, dict) and "Ok" in reply:
        return reply["Ok"]
    raise ConnectionError(f"RPC: unexpected reply {reply!r}")


def p11kit_address(cid: int, port: int) -> str:
    """The p11-kit `remote:` address of the enclave's PKCS#11 server (on AWS
    `vsock:cid=N;port=9999`; here the emulator's vsock, a Unix socket)."""
    from local_backend.host.layout import HOST_EMULATOR_STATE

    return f"unix:path={Path(HOST_EMULATOR_STATE) / 'vsock' / str(cid) / str(port)}"


class P11neEnclave:
    def __init__(self, cfg: acm_config.Enclave) -> None:
        self.cfg = cfg
        out = subprocess.run(
            [
                "nitro-cli",
                "run-enclave",
                "--eif-path",
                cfg.image_path,
                "--cpu-count",
                str(cfg.cpu_count),
                "--memory",
                str(cfg.memory_mib),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise AgentError(
                f"EnclaveError(NitroCliError(RunError(Some({out.returncode}), "
                f"{json.dumps(out.stderr.strip())})))"
            )
        info = json.loads(out.stdout)
        self.cid = int(info["EnclaveCID"])
        self.pid = int(info["ProcessID"])
        self.enclave_id = str(info["EnclaveID"])
        log("INFO", f"Enclave {self.enclave_id} started: CID {self.cid}, pid {self.pid}")
        log("INFO", "Setting up p11-kit config")
        Path(MODULE_FILE).parent.mkdir(parents=True, exist_ok=True)
        Path(MODULE_FILE).write_text(
            f"remote:{p11kit_address(self.cid, cfg.p11kit_port)}\nmodule:p11ne\n"
        )
        log("INFO", "Restarting vsock proxy")
        rc = subprocess.run(
            ["systemctl", "restart", "nitro-enclaves-vsock-proxy"], check=False
        ).returncode
        if rc != 0:
            raise AgentError(f"EnclaveError(VsockProxyError(Some({rc})))")

    def alive_pid(self) -> bool:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")

    def alive(self) -> bool:
        """The enclave's process (`ProcessID`) still runs, as the agent's kill(pid, 0) check;
        a reaped-late process (zombie) or an enclave nitro-cli no longer lists is gone."""
        if not self.alive_pid():
            return False
        self._checks = getattr(self, "_checks", 0) + 1
        if self._checks % 5:
            return True
        out = subprocess.run(
            ["nitro-cli", "describe-enclaves"], capture_output=True, text=True, check=False
        )
        if out.returncode != 0:
            return True  # cannot tell: keep going, the next check decides
        try:
            listed = {e["EnclaveID"]: e.get("State") for e in json.loads(out.stdout)}
        except (ValueError, KeyError, TypeError):
            return True
        return listed.get(self.enclave_id) == "RUNNING"

    def wait_boot(self) -> bool:
        limit = time.monotonic() + self.cfg.boot_timeout_ms / 1000
        while time.monotonic() < limit:
            try:
                rpc_call(self.cid, self.cfg.rpc_port, "DescribeDevice", timeout=1.0)
                return True
            except (OSError, ApiError, ValueError):
                pass
            if not _sleep(0.1):
                return False
        return False

    def rpc(self, request: Any) -> Any:
        return rpc_call(self.cid, self.cfg.rpc_port, request)

    def open_p11kit_port(self) -> None:
        """Let nginx's workers (user nginx) connect to the enclave's p11-kit port, as any
        parent process may connect to a vsock port on Nitro. The emulator's vsock is a Unix
        socket under root-only directories: give search (not read) on those directories and
        connect on that one socket; the RPC port and everything else stay root's."""
        from local_backend.host.layout import HOST_EMULATOR_STATE

        sock = Path(HOST_EMULATOR_STATE) / "vsock" / str(self.cid) / str(self.cfg.p11kit_port)
        deadline = time.monotonic() + self.cfg.boot_timeout_ms / 1000
        while not sock.exists() and time.monotonic() < deadline and _sleep(0.1):
            pass
        for d in (Path(HOST_EMULATOR_STATE), sock.parent.parent, sock.parent):
            d.chmod(d.stat().st_mode & 0o7777 | 0o111)
        sock.chmod(0o777)

    def retry_rpc(self, request: Any) -> Any:
        """Retry an API error (not a transport error) with 100 ms doubling back-off."""
        count = 1
        while True:
            try:
                return self.rpc(request)
            except ApiError as exc:
                if count >= self.cfg.attestation_retry_count:
                    raise
                wait = (1 << (count - 1)) * 0.1
                log("WARN", f"RPC error (will retry in {int(wait * 1000)}ms): Err({exc})")
                if not _sleep(wait):
                    raise
                count += 1

    def shutdown(self) -> None:
        """SIGTERM to the enclave's process, as the agent's Drop does (quick: systemd kills a
        stopping service after a few seconds); nitro-cli only if that process lingers."""
        log("INFO", f"Killing enclave pid={self.pid}")
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 2.0
        while self.alive_pid() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.alive_pid():
            with_id = ["nitro-cli", "terminate-enclave", "--enclave-id", self.enclave_id]
            subprocess.run(with_id, capture_output=True, check=False)
        log("INFO", "Cleaning up p11kit config")
        try:
            os.unlink(MODULE_FILE)
        except OSError as exc:
            log("WARN", f"Cleanup error: {exc}")


# ------------------------------------------------------------------ tokens (agent/mngtok.rs)


class TokenError(Exception):
    """mngtok::Error: `kind` is the variant name."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}({detail})" if detail else kind)
        self.kind = kind


def fetch_from_s3(imds: Imds, uri: str) -> dict[str, str]:
    log("DEBUG", f"Fetching from {uri}")
    out = subprocess.run(
        ["aws", "s3", "--region", imds.region(), "cp", uri, "-"],
        capture_output=True,
        check=False,
        env=aws_env(),
    )
    if out.returncode != 0:
        err = out.stderr.decode(errors="replace").strip()
        raise TokenError("KeyMaterialDbFetchError", f"Some({out.returncode}), {json.dumps(err)}")
    try:
        db = json.loads(out.stdout)
        return {
            k: str(db[k])
            for k in ("certificate", "certificateChain", "encryptedPrivateKey", "encryptionMethod")
        }
    except (ValueError, KeyError, TypeError) as exc:
        raise TokenError("KeyMaterialDbParseError", repr(exc)) from None


class ManagedToken:
    def __init__(self, conf: Token, enclave: P11neEnclave, imds: Imds, service: str) -> None:
        self.conf = conf
        self.label = conf.label
        self.pin = conf.pin if conf.pin is not None else secrets.token_hex(16)
        self.enclave = enclave
        self.imds = imds
        self.service = service
        self.refresh_interval = conf.refresh_interval_secs
        self.next_refresh = time.monotonic()
        if conf.source.kind == "FileDb":
            raise TokenError("FileDbError", "FileDb sources are not supported by this host")
        self.db = fetch_from_s3(imds, self._uri())

    def _uri(self) -> str:
        src = self.conf.source
        if src.kind == "S3":
            return src.uri
        return (
            f"s3://{self.imds.partition()}-ec2-enclave-certificate-{self.imds.region()}-"
            f"{src.bucket}/{self.imds.role_arn()}/{src.certificate_arn}"
        )

    def _key_label(self) -> str:
        return "acm-key" if self.conf.source.kind == "Acm" else "s3-key"

    def _envelope_key(self) -> dict[str, Any]:
        creds = self.imds.creds()
        return {
            "Kms": {
                "region": self.imds.region(),
                "access_key_id": creds["AccessKeyId"],
                "secret_access_key": creds["SecretAccessKey"],
                "session_token": creds["Token"],
            }
        }

    def schema_token(self) -> dict[str, Any]:
        """AddToken's token as the agent sends it (verify's probe enclaves get the same)."""
        cert = self.db["certificate"] + self.db["certificateChain"]
        return {
            "label": self.label,
            "pin": self.pin,
            "envelope_key": self._envelope_key(),
            "keys": [
                {
                    "id": 1,
                    "label": self._key_label(),
                    "encrypted_pem_b64": self.db["encryptedPrivateKey"],
                    "cert_pem": cert,
                }
            ],
        }

    def sync(self) -> str | None:
        """One sync step; the post-sync action (`add` / `update`) or None."""
        new_db = fetch_from_s3(self.imds, self._uri())
        changed = new_db != self.db
        self.db = new_db
        try:
            self.enclave.rpc({"DescribeToken": {"label": self.label, "pin": self.pin}})
            online = True
        except ApiError:
            online = False
        if online and changed:
            log("INFO", f"DB change detected. Updating token: {self.label}.")
            try:
                self.enclave.retry_rpc(
                    {
                        "UpdateToken": {
                            "label": self.label,
                            "pin": self.pin,
                            "token": self.schema_token(),
                        }
                    }
                )
            except ApiError as exc:
                raise TokenError("UpdateTokenError", str(exc)) from None
            return self._satisfy_target("update")
        if online:
            if self.next_refresh <= time.monotonic():
                log("INFO", f"Refreshing token: {self.label}.")
                try:
                    self.enclave.retry_rpc(
                        {
                            "RefreshToken": {
                                "label": self.label,
                                "pin": self.pin,
                                "envelope_key": self._envelope_key(),
                            }
                        }
                    )
                except ApiError as exc:
                    err = TokenError("RefreshTokenError", str(exc))
                    err.api = exc.value  # type: ignore[attr-defined]
                    raise err from None
                self.next_refresh += self.refresh_interval
            return None
        log("DEBUG", f"Adding token: {self.label}.")
        try:
            self.enclave.retry_rpc({"AddToken": {"token": self.schema_token()}})
        except ApiError as exc:
            err = TokenError("AddTokenError", str(exc))
            err.api = exc.value  # type: ignore[attr-defined]
            raise err from None
        self.next_refresh = time.monotonic() + self.refresh_interval
        return self._satisfy_target("add")

    def _satisfy_target(self, action: str) -> str | None:
        target = self.conf.target
        if target is None:
            return None
        try:
            write_target(self, target)
        except (OSError, KeyError, TokenError) as exc:
            log("ERROR", f"Unable to satisfy target for token {self.label}: {exc!r}")
            return None
        return action


def key_uri(label: str, key_label: str, pin: str) -> str:
    return (
        f"pkcs11:model=p11ne-token;manufacturer=Amazon;token={label};id=%01;"
        f"object={key_label};type=private?pin-value={pin}"
    )


def write_target(tok: ManagedToken, target: acm_config.Target) -> None:
    """The certificate chain under /run/nitro_enclaves/acm and the stanza (0440, owned by the
    target user/group) as agent/nginx.rs writes them."""
    try:
        uid = pwd.getpwnam(target.user).pw_uid if target.user else -1
    except KeyError:
        raise TokenError("BadUser", json.dumps(target.user)) from None
    try:
        gid = grp.getgrnam(target.group).gr_gid if target.group else -1
    except KeyError:
        raise TokenError("BadGroup", json.dumps(target.group)) from None
    name = "nginx-cert" if tok.service == "nginx" else "httpd-cert"
    cert_path = f"{RUN_DIR}/{name}-{tok.label.encode().hex()}.pem"
    Path(RUN_DIR).mkdir(parents=True, exist_ok=True)
    Path(cert_path).write_text(tok.db["certificate"] + "\n" + tok.db["certificateChain"])
    Path(target.path).parent.mkdir(parents=True, exist_ok=True)
    uri = key_uri(tok.label, tok._key_label(), tok.pin)
    fd = os.open(target.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o440)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, 0o440)
        if tok.service == "nginx":
            text = f'ssl_certificate_key "engine:pkcs11:{uri}";\nssl_certificate "{cert_path}";\n'
        else:
            text = (
                f'SSLCryptoDevice pkcs11\nSSLCertificateKeyFile "{uri}"\n'
                f'SSLCertificateFile "{cert_path}"\n'
            )
        os.write(fd, text.encode())
    finally:
        os.close(fd)


# ------------------------------------------------------------------ the agent (agent/mod.rs)


def _systemctl(*args: str) -> int:
    return subprocess.run(["systemctl", *args], check=False).returncode


def main_pid(unit: str) -> int | None:
    """`systemctl show --property=MainPID` (util.rs is_service_running): the pid, 0 when the
    service does not run; None when systemctl fails or prints no pid."""
    out = subprocess.run(
        ["systemctl", "show", "--property=MainPID", unit], capture_output=True, text=True
    )
    try:
        return int(out.stdout.strip().rsplit("=", 1)[-1]) if out.returncode == 0 else None
    except ValueError:
        return None


def restart_webserver(service: str, options: acm_config.Options) -> None:
    """Post-sync action, as the agent (456d6a0, agent/mod.rs restart_webserver) does it:
    SIGWINCH to the running server's main pid (nginx: its workers shut down gracefully, the
    listening socket stays open unserved), wait reload_wait_ms, then `systemctl restart` —
    which also starts a stopped server (force_start is read and logged, nothing more). Not a
    reload: libp11 keeps the old token's object handles across an nginx reload, and every
    handshake then fails with "Object handle invalid". Connections made during the wait and
    the restart are dropped, on AWS as here (verify's `renewal` check counts them)."""
    unit = f"{service}.service"
    log(
        "INFO",
        f"Service: {service} | Force_Start: {str(options.force_start).lower()} | Reload: "
        f"{options.reload_wait_ms} | Sync: {options.sync_interval_secs}",
    )
    log("INFO", f"Restarting {unit}.")
    pid = main_pid(unit)
    if pid is not None:
        # AWS's agent signals even MainPID=0 (kill(0, ..): its own process group, which
        # ignores SIGWINCH); the same effect without signalling ourselves.
        if pid > 0:
            log("DEBUG", f"Sending SIGWINCH to PID={pid}")
            try:
                os.kill(pid, signal.SIGWINCH)
            except OSError as exc:
                log("ERROR", f"Error sending SIGWINCH: {exc!r}")
        _sleep(options.reload_wait_ms / 1000)
    else:
        log("INFO", f"{unit} service is not running")
    if _systemctl("restart", unit) != 0:
        log("ERROR", f"Unable to restart {unit}")


class Agent:
    def __init__(self, config: Config, enclave: P11neEnclave) -> None:
        self.options = config.options
        self.imds = Imds()
        self.enclave = enclave
        self.tokens: list[ManagedToken] = []
        for conf in config.tokens:
            try:
                self.tokens.append(
                    ManagedToken(conf, self.enclave, self.imds, self.options.service)
                )
            except (TokenError, OSError) as exc:
                log("ERROR", f"Error creating managed token: {exc}")
        log("DEBUG", f"Global options: {self.options}")

    def run(self) -> None:
        if not self.enclave.wait_boot():
            raise AgentError("EnclaveBootTimeout")
        self.enclave.open_p11kit_port()
        next_sync = time.monotonic()
        while True:
            if not self.enclave.alive():
                raise AgentError("EnclaveDied")
            if next_sync <= time.monotonic():
                self.sync()
                next_sync += self.options.sync_interval_secs
            if not _sleep(1.0):
                return

    def sync(self) -> None:
        broken: list[str] = []
        actions: set[str] = set()
        self.imds.invalidate()
        for tok in self.tokens:
            log("INFO", f"Syncing token {tok.label}")
            try:
                act = tok.sync()
            except TokenError as exc:
                api = getattr(exc, "api", None)
                if exc.kind in ("KeyMaterialDbFetchError", "KeyMaterialDbParseError"):
                    log("ERROR", f"{exc}")
                    log("ERROR", f"Broken token: {tok.label}")
                    broken.append(tok.label)
                elif exc.kind == "AddTokenError" and api == "KmsDecryptFailed":
                    log("ERROR", f"Attestation failed for new token {tok.label}.")
                    broken.append(tok.label)
                elif exc.kind == "RefreshTokenError" and api == "KmsDecryptFailed":
                    log("ERROR", f"Attestation failed for token {tok.label}. Releasing")
                    broken.append(tok.label)
                    self.enclave.rpc({"RemoveToken": {"label": tok.label, "pin": tok.pin}})
                else:
                    raise AgentError(f"TokenError({exc})") from None
                continue
            if act is not None:
                actions.add(act)
        if actions:
            restart_webserver(self.options.service, self.options)
        self.tokens = [t for t in self.tokens if t.label not in broken]


def _on_signal(signum: int, _frame: object) -> None:
    global _exit
    log("INFO", "Setting exit condition")
    _exit = True


def main(argv: list[str] | None = None) -> int:
    global _log_cfg
    try:
        config = acm_config.load()
    except ConfigError as exc:
        print(f"Error: ConfigError: {exc}", file=sys.stderr, flush=True)
        return 1
    _log_cfg = config.log
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    enclave: P11neEnclave | None = None
    try:
        enclave = P11neEnclave(config.enclave)
        Agent(config, enclave).run()
        return 0
    except AgentError as exc:
        print(f"Error: AgentError: {exc}", file=sys.stderr, flush=True)
        return 1
    except OSError as exc:  # IMDS or RPC transport: AWS's ImdsError / RpcConnectError
        print(f"Error: AgentError: {type(exc).__name__}({exc})", file=sys.stderr, flush=True)
        return 1
    finally:
        if enclave is not None:
            enclave.shutdown()


if __name__ == "__main__":
    sys.exit(main())
