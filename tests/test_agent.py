"""The parent agent (enclavekit.agent, `enclavekit parent-agent`) against real parts (budget ~8 s).

- ImdsCredentials against an IMDSv2-compatible HTTP server on 127.0.0.1 (token PUT with the TTL
  header, role listing, the credentials JSON as IMDS serves it, 401 without a valid token).
- ParentAgent against moto with our EC2/ACM/S3 extensions (the association's S3 object, SSM
  parameters) and an enclave peer on emulated vsock port 5005 speaking enclavekit.provisioning.
- The CLI in-process (`--once`, the one-line errors and exit codes) and as a daemon process
  (periodic sync leaves a ready enclave alone; SIGHUP re-provisions; SIGTERM stops).
- The image-mode user data: host.json parses into the agent's config, the unit runs the agent.
The real enclave_app provisioned by ParentAgent in the emulator: `enclavekit up` / verify.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from enclave_constructs.spec import (
    AgentSpec,
    CertificateSpec,
    HostSpec,
    ImageSpec,
    SecretSpec,
)
from moto import mock_aws

from enclavekit import provisioning as prov
from enclavekit.agent import (
    REFRESH_MARGIN_S,
    UNSEALED,
    HostConfig,
    ImdsCredentials,
    ParentAgent,
    load_host_json,
)
from enclavekit.cli import main as cli_main
from enclavekit.contract import HOST_CONFIG_PATH as HOST_CONFIG
from enclavekit.errors import InvalidInput, ParentAgentError
from enclavekit.pcr import Measurements
from enclavekit.transport import PARENT_CID, EmulatedVsock
from local_backend import moto_ext
from local_backend.moto_ext.ec2 import hooks

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
ROLE = "EnclaveService-HostRole-1A2B3C"
KW = {"region_name": REGION, "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


# ------------------------------------------------------------------ an IMDSv2 service
class Imds:
    """IMDSv2 as EC2 serves it, on 127.0.0.1: tokens required, one role, rotating credentials."""

    def __init__(self, role: str | None = ROLE) -> None:
        self.role = role
        self.tokens: set[str] = set()
        self.requests: list[tuple[str, str, bool]] = []  # method, path, had a valid token
        self.creds = self._new_creds()
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def _send(self, status: int, body: str, ctype: str = "text/plain") -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                imds.requests.append(("PUT", self.path, False))
                ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
                if self.path != "/latest/api/token":
                    return self._send(404, "Not Found")
                if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                    return self._send(400, "Bad Request")
                token = base64.b64encode(secrets.token_bytes(42)).decode()
                imds.tokens.add(token)
                self._send(200, token)

            def do_GET(self) -> None:
                ok = self.headers.get("X-aws-ec2-metadata-token") in imds.tokens
                imds.requests.append(("GET", self.path, ok))
                if not ok:
                    return self._send(401, "Unauthorized")
                base = "/latest/meta-data/iam/security-credentials/"
                if self.path == "/latest/meta-data/placement/region":
                    return self._send(200, REGION)
                if imds.role is None and self.path.startswith(base):
                    return self._send(404, "Not Found")
                if self.path == base:
                    return self._send(200, imds.role or "")
                if self.path == base + str(imds.role):
                    return self._send(200, json.dumps(imds.creds, indent=2))
                self._send(404, "Not Found")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @staticmethod
    def _new_creds(hours: float = 6) -> dict[str, str]:
        now = datetime.now(UTC).replace(microsecond=0)
        return {
            "Code": "Success",
            "LastUpdated": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Type": "AWS-HMAC",
            "AccessKeyId": "ASIA" + secrets.token_hex(8).upper(),
            "SecretAccessKey": secrets.token_urlsafe(30),
            "Token": secrets.token_urlsafe(300),
            "Expiration": (now + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def rotate(self) -> None:
        self.creds = self._new_creds()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@pytest.fixture()
def imds() -> Iterator[Imds]:
    server = Imds()
    yield server
    server.close()


def _closed_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# ------------------------------------------------------------------ ImdsCredentials
def test_imds_credentials_follow_the_v2_session_flow(imds: Imds) -> None:
    # the service refuses what an IMDSv1 client would do
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(imds.url + "/latest/meta-data/iam/security-credentials/")
    assert refused.value.code == 401
    source = ImdsCredentials(imds.url)
    creds = source.credentials()
    assert (
        creds.access_key_id,
        creds.secret_access_key,
        creds.session_token,
        creds.expiration,
    ) == (
        imds.creds["AccessKeyId"],
        imds.creds["SecretAccessKey"],
        imds.creds["Token"],
        imds.creds["Expiration"],
    )
    assert source.region() == REGION
    served = [r for r in imds.requests if r[0] == "GET"]
    assert [r[1] for r in served[1:]] == [
        "/latest/meta-data/iam/security-credentials/",
        f"/latest/meta-data/iam/security-credentials/{ROLE}",
        "/latest/meta-data/placement/region",
    ]
    assert all(ok for _, _, ok in served[1:])
    assert [r for r in imds.requests if r[0] == "PUT"] == [("PUT", "/latest/api/token", False)]
    assert source.is_role(f"arn:aws:iam::123456789012:role/{ROLE}")
    assert source.is_role(f"arn:aws:iam::123456789012:role/app/{ROLE}")
    assert not source.is_role("arn:aws:iam::123456789012:role/SomeOtherRole")
    assert "Secret" not in repr(creds) and imds.creds["Token"] not in repr(creds)


def test_imds_credentials_are_cached_then_refreshed_before_expiry(imds: Imds) -> None:
    now = [time.time()]
    source = ImdsCredentials(imds.url, clock=lambda: now[0])
    first = source.credentials()
    gets = len(imds.requests)
    assert source.credentials() is first and len(imds.requests) == gets  # cached
    imds.rotate()
    expires = datetime.fromisoformat(first.expiration.replace("Z", "+00:00")).timestamp()
    now[0] = expires - REFRESH_MARGIN_S - 5
    assert source.credentials() is first  # not yet inside the margin
    now[0] = expires - REFRESH_MARGIN_S + 1
    second = source.credentials()
    assert second.access_key_id == imds.creds["AccessKeyId"] != first.access_key_id


def test_imds_token_refused_later_is_replaced_once(imds: Imds) -> None:
    source = ImdsCredentials(imds.url)
    source.role_name()
    imds.tokens.clear()  # the service forgot every session (e.g. its TTL passed)
    imds.rotate()
    assert source.credentials().access_key_id == imds.creds["AccessKeyId"]
    assert [r[0] for r in imds.requests].count("PUT") == 2


def test_imds_errors_are_one_line() -> None:
    with pytest.raises(
        ParentAgentError,
        match=r"unreachable .*expected an EC2 instance with "
        r"IMDSv2 enabled$",
    ):
        ImdsCredentials(_closed_port(), timeout=1).credentials()
    norole = Imds(role=None)
    try:
        with pytest.raises(
            ParentAgentError, match="no IAM role on this instance; expected an instance profile"
        ):
            ImdsCredentials(norole.url).credentials()
    finally:
        norole.close()
    with pytest.raises(InvalidInput, match="IMDS endpoint must be an http URL"):
        ImdsCredentials("169.254.169.254")


# ------------------------------------------------------------------ an enclave on vsock 5005
class EnclavePeer:
    """The enclave side of the control protocol on emulated vsock (CID 16, port 5005)."""

    def __init__(self, root: Path, cid: int = 16) -> None:
        self.listener = EmulatedVsock(root, cid).listen(prov.CONTROL_PORT)
        self.received: list[prov.Message] = []
        self.state = "waiting"
        self.refuse: str | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                try:
                    while True:
                        self._answer(conn, prov.read_message(conn))
                except (EOFError, OSError):
                    pass

    def _answer(self, conn: Any, msg: prov.Message) -> None:
        self.received.append(msg)
        reply: prov.Message
        if isinstance(msg, prov.Provision) and self.refuse:
            reply = prov.ErrorReply("KmsError", self.refuse)
        elif isinstance(msg, prov.Provision):
            self.state = "ready"
            reply = prov.Provisioned(state="ready", secrets=tuple(s.name for s in msg.secrets))
        else:
            reply = prov.StatusReport(
                state=self.state, module_id="i-0test-enc0", public_key_sha256="00" * 32
            )
        prov.write_message(conn, reply)

    def provisions(self) -> list[prov.Provision]:
        return [m for m in self.received if isinstance(m, prov.Provision)]

    def close(self) -> None:
        import socket

        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._thread.join(5)


@pytest.fixture()
def peer(tmp_path: Path) -> Iterator[EnclavePeer]:
    p = EnclavePeer(tmp_path / "vsock")
    yield p
    p.close()


# ------------------------------------------------------------------ AWS (moto + our extensions)
@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    moto_ext.install(tmp_path_factory.mktemp("moto"))
    with mock_aws():
        iam, acm, ec2 = (boto3.client(n, **KW) for n in ("iam", "acm", "ec2"))
        role = iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        other = iam.create_role(RoleName="Other", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        cert = acm.request_certificate(DomainName="app.example.test")["CertificateArn"]
        ec2.associate_enclave_certificate_iam_role(CertificateArn=cert, RoleArn=other)
        assoc = ec2.associate_enclave_certificate_iam_role(CertificateArn=cert, RoleArn=role)
        ssm = boto3.client("ssm", **KW)
        sealed = base64.b64encode(secrets.token_bytes(180)).decode()
        ssm.put_parameter(Name="/enclavekit/T/app-secret", Type="String", Value=sealed)
        obj = boto3.client("s3", **KW).get_object(
            Bucket=assoc["CertificateS3BucketName"], Key=assoc["CertificateS3ObjectKey"]
        )
        yield {
            "cert": cert,
            "role": role,
            "sealed": sealed,
            "ssm": ssm,
            "bundle": prov.CertificateBundle.from_s3_object(obj["Body"].read()),
        }
    hooks.clear_hooks()
    hooks.stop_all_enclave_instances()


def _spec(cert: str | None, secrets_: list[tuple[str, str]], cid: int = 16) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "version": 1,
        "image": {"name": "enclave-app", "measurements": {}, "debug": False},
        "enclave": {"cpu_count": 2, "memory_mib": 512, "cid": cid, "debug_mode": False},
        "service": {"port": 443, "enclave_port": 8443},
        "role": "HostRoleE4EC059A",
        "secrets": [{"name": n, "key": "KeyABC", "parameter": p} for n, p in secrets_],
        "attested_keys": ["KeyABC"],
        "region": REGION,
    }
    if cert:
        spec["certificate"] = {"arn": cert, "association": "HostCertificate1"}
    return spec


def test_agent_provisions_from_imds_s3_and_ssm(
    aws: dict, imds: Imds, peer: EnclavePeer, tmp_path: Path
) -> None:
    aws["ssm"].put_parameter(Name="/enclavekit/T/db-password", Type="String", Value=UNSEALED)
    spec = _spec(
        aws["cert"],
        [("app-secret", "/enclavekit/T/app-secret"), ("db-password", "/enclavekit/T/db-password")],
    )
    agent = ParentAgent(
        spec,
        region=REGION,
        credentials=ImdsCredentials(imds.url),
        vsock=EmulatedVsock(tmp_path / "vsock", PARENT_CID),
    )
    # one secret not sealed yet: nothing is sent, the loop keeps waiting
    result = agent.provision_once()
    assert (result.outcome, result.waiting) == ("waiting", ("db-password",))
    assert peer.received == []
    aws["ssm"].put_parameter(Name="/enclavekit/T/db-password", Value=aws["sealed"], Overwrite=True)
    result = agent.provision_once()
    assert (result.outcome, result.secrets, result.certificate) == (
        "provisioned",
        ("app-secret", "db-password"),
        True,
    )
    [msg] = peer.provisions()
    assert msg.credentials.access_key_id == imds.creds["AccessKeyId"]
    assert msg.credentials.session_token == imds.creds["Token"]
    assert msg.certificate == aws["bundle"]  # this role's association, not the other one's
    assert [s.ciphertext_b64 for s in msg.secrets] == [aws["sealed"]] * 2
    assert (msg.region, msg.kms_proxy_port, msg.kms_host) == (
        REGION,
        8000,
        f"kms.{REGION}.amazonaws.com",
    )
    # a periodic sync leaves a ready enclave with the same material alone; a forced one resends
    assert agent.provision_once(force=False).outcome == "unchanged"
    assert len(peer.provisions()) == 1
    imds.rotate()
    agent.credentials._cached_until = 0  # type: ignore[attr-defined]  # as if near expiry
    assert agent.provision_once(force=False).outcome == "provisioned"
    assert peer.provisions()[-1].credentials.access_key_id == imds.creds["AccessKeyId"]
    peer.refuse = "kms:Decrypt denied"
    refused = agent.provision_once()
    assert (refused.outcome, refused.error) == ("refused", "KmsError: kms:Decrypt denied")


def test_agent_aws_errors_name_the_thing(aws: dict, imds: Imds, tmp_path: Path) -> None:
    vsock = EmulatedVsock(tmp_path / "vsock", PARENT_CID)
    missing = ParentAgent(
        _spec(None, [("app-secret", "/enclavekit/T/nope")]),
        region=REGION,
        credentials=ImdsCredentials(imds.url),
        vsock=vsock,
    )
    with pytest.raises(
        ParentAgentError,
        match=r"^SSM parameter /enclavekit/T/nope \(secret "
        r"app-secret\): not found \(ParameterNotFound\)",
    ):
        missing.provision_once()
    aws["ssm"].put_parameter(Name="/enclavekit/T/bad", Type="String", Value="not base64!")
    bad = ParentAgent(
        _spec(None, [("app-secret", "/enclavekit/T/bad")]),
        region=REGION,
        credentials=ImdsCredentials(imds.url),
        vsock=vsock,
    )
    with pytest.raises(
        ParentAgentError,
        match="expected base64 KMS ciphertext or 'enclavekit:unsealed', found 11 characters",
    ):
        bad.sealed_secrets()
    imds.role = "NotAssociated"
    unassociated = ParentAgent(
        _spec(aws["cert"], []), region=REGION, credentials=ImdsCredentials(imds.url), vsock=vsock
    )
    with pytest.raises(
        ParentAgentError,
        match="expected an enclave association with this instance's role, found associations with",
    ):
        unassociated.certificate_bundle()
    # no enclave listening: the sync loop's error result, not an exception
    result = ParentAgent(
        _spec(None, []), region=REGION, credentials=ImdsCredentials(imds.url), vsock=vsock
    ).sync_once()
    assert result.outcome == "error" and "no vsock listener on cid 16 port 5005" in result.error


def test_agent_unreachable_aws_is_one_line(imds: Imds, tmp_path: Path) -> None:
    from enclavekit.agent import boto3_clients

    agent = ParentAgent(
        _spec(None, [("app-secret", "/enclavekit/T/app-secret")]),
        region=REGION,
        credentials=ImdsCredentials(imds.url),
        vsock=EmulatedVsock(tmp_path / "vsock", PARENT_CID),
        clients=boto3_clients(REGION, endpoint_url=_closed_port()),
    )
    with pytest.raises(
        ParentAgentError,
        match=r"^SSM parameter /enclavekit/T/app-secret "
        r"\(secret app-secret\): EndpointConnectionError: Could not connect",
    ):
        agent.sealed_secrets()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(version=2), r"\.version: expected 1, found 2"),
        (lambda s: s["enclave"].update(cid=3), r"\.enclave\.cid: expected an integer >= 4"),
        (
            lambda s: s.update(certificate={"arn": {"Ref": "Cert"}}),
            r"\.certificate\.arn: expected a non-empty string, found \{'Ref': 'Cert'\} "
            r"\(an unresolved intrinsic\)",
        ),
        (
            lambda s: s["secrets"].append({"name": "x", "parameter": "${Token[TOKEN.12]}"}),
            r"\.secrets\[0\]\.parameter: expected a resolved value, found the CDK token",
        ),
    ],
)
def test_host_config_refuses_bad_specs(change: Any, message: str) -> None:
    spec = _spec(None, [])
    change(spec)
    with pytest.raises(InvalidInput, match=message):
        HostConfig.from_spec(spec, region=REGION, where="host config /etc/enclavekit/host.json")


# ------------------------------------------------------------------ the CLI
def _write(tmp_path: Path, spec: dict[str, Any]) -> Path:
    path = tmp_path / "host.json"
    path.write_text(json.dumps(spec))
    return path


def test_cli_once_provisions_and_logs_no_secrets(
    aws: dict,
    imds: Imds,
    peer: EnclavePeer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    aws["ssm"].put_parameter(
        Name="/enclavekit/T/api-token", Type="String", Value=aws["sealed"], Overwrite=True
    )
    config = _write(
        tmp_path,
        _spec(
            aws["cert"],
            [("app-secret", "/enclavekit/T/app-secret"), ("api-token", "/enclavekit/T/api-token")],
        ),
    )
    args = [
        "parent-agent",
        "--config",
        str(config),
        "--enclave-cid",
        "16",
        "--once",
        "--imds-endpoint",
        imds.url,
        "--vsock-root",
        str(tmp_path / "vsock"),
    ]
    assert cli_main(args) == 0
    [msg] = peer.provisions()
    assert msg.credentials.secret_access_key == imds.creds["SecretAccessKey"]
    err = capsys.readouterr().err + "\n".join(r.getMessage() for r in caplog.records)
    assert "enclave provisioned: 2 secret(s) [app-secret, api-token], certificate: yes" in err
    for secret in (
        imds.creds["SecretAccessKey"],
        imds.creds["Token"],
        aws["sealed"],
        aws["bundle"].encrypted_private_key,
    ):
        assert secret not in err


def test_cli_errors_are_one_line_with_exit_codes(
    aws: dict, imds: Imds, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(
        *extra: str, config: Path | None = None, endpoint: str | None = None
    ) -> tuple[int, str]:
        cfg = config or _write(tmp_path, _spec(None, [("s", "/enclavekit/T/missing")]))
        code = cli_main(
            [
                "parent-agent",
                "--config",
                str(cfg),
                "--once",
                "--wait",
                "1",
                "--imds-endpoint",
                endpoint or imds.url,
                "--vsock-root",
                str(tmp_path / "vsock"),
                *extra,
            ]
        )
        lines = [
            ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("enclavekit: error:")
        ]
        return code, "\n".join(lines)

    code, line = run(endpoint=_closed_port())
    assert code == 1 and re.fullmatch(
        r"enclavekit: error: instance metadata service \S+: "
        r"unreachable .*",
        line,
    )
    code, line = run()
    assert code == 1 and line == (
        "enclavekit: error: SSM parameter /enclavekit/T/missing "
        "(secret s): not found (ParameterNotFound); expected it to exist"
    )
    code, line = run(config=tmp_path / "absent.json")
    assert code == 2 and line == (
        f"enclavekit: error: host config {tmp_path}/absent.json: no "
        "such file; expected the JSON the enclavekit user data writes"
    )
    (tmp_path / "bad.json").write_text("{not json")
    code, line = run(config=tmp_path / "bad.json")
    assert code == 2 and "expected JSON, found invalid JSON" in line
    imds.role = None
    code, line = run()
    assert code == 1 and line == (
        "enclavekit: error: instance metadata service: no IAM role on "
        "this instance; expected an instance profile with the enclave "
        "host role"
    )


def test_cli_daemon_resyncs_on_sighup_and_stops_on_sigterm(
    imds: Imds, peer: EnclavePeer, tmp_path: Path
) -> None:
    config = _write(tmp_path, _spec(None, []))  # no AWS calls: credentials only
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "enclavekit",
            "parent-agent",
            "--config",
            str(config),
            "--imds-endpoint",
            imds.url,
            "--vsock-root",
            str(tmp_path / "vsock"),
            "--interval",
            "0.3",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:

        def wait_for(cond: Any, what: str) -> None:
            deadline = time.monotonic() + 15
            while not cond():
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                time.sleep(0.05)

        wait_for(lambda: len(peer.provisions()) == 1, "the first Provision")
        wait_for(
            lambda: sum(isinstance(m, prov.Status) for m in peer.received) >= 2,
            "periodic Status checks",
        )
        assert len(peer.provisions()) == 1  # ready and unchanged: not re-sent
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(peer.provisions()) == 2, "the Provision after SIGHUP")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "SIGHUP: re-provisioning now" in err and "parent agent stopped" in err
    assert imds.creds["SecretAccessKey"] not in err and imds.creds["Token"] not in err


# ------------------------------------------------------------------ the real user data
def _host_spec(**kw: Any) -> HostSpec:
    m = Measurements.from_hex(pcr0="ab" * 48, pcr1="cd" * 48, pcr2="ef" * 48)
    image = ImageSpec(
        name="enclave-app",
        slug="enclave-app",
        measurements=m,
        debug=False,
        asset_bucket="cdk-hnb659fds-assets-123456789012-us-east-1",
        asset_key="0123.eif",
    )
    return HostSpec(
        image=image,
        cpu_count=2,
        memory_mib=512,
        debug_mode=False,
        port=443,
        domain="app.example.test",
        role="HostRoleE4EC059A",
        region=REGION,
        certificate=CertificateSpec(
            arn="arn:aws:acm:us-east-1:123456789012:certificate/abc", association="HostCert1"
        ),
        secrets=(SecretSpec(name="app-secret", key="Key1", parameter="/enclavekit/S/app-secret"),),
        agent=AgentSpec(
            bucket="cdk-hnb659fds-assets-123456789012-us-east-1",
            key="4567.pyz",
            sha256="0f" * 32,
            requirements=("boto3==1.44.8",),
        ),
        **kw,
    )


def test_user_data_writes_host_json_and_runs_the_agent(tmp_path: Path) -> None:
    spec = _host_spec(cid=17)
    ud = spec.user_data()
    body = re.search(rf"cat > {HOST_CONFIG} <<'ENCLAVEKIT_EOF'\n(.*?)\nENCLAVEKIT_EOF", ud, re.S)
    assert body is not None
    host = json.loads(body[1])
    assert host == {**spec.metadata(), "region": REGION}
    # what the unit's agent reads is what the emulator reads from the Metadata
    (tmp_path / "host.json").write_text(body[1])
    config = HostConfig.from_spec(load_host_json(tmp_path / "host.json"), region=host["region"])
    assert (
        config.cid,
        config.enclave_port,
        config.certificate_arn,
        config.secrets[0].parameter,
    ) == (17, 8443, spec.certificate.arn, "/enclavekit/S/app-secret")
    unit = re.search(
        r"enclavekit-enclave-app-agent.service <<'ENCLAVEKIT_EOF'\n(.*?)"
        r"ENCLAVEKIT_EOF",
        ud,
        re.S,
    )
    assert unit is not None
    assert re.search(r"^After=enclavekit-enclave-app\.service ", unit[1], re.M)
    [start] = re.findall(r"^ExecStart=(.*)$", unit[1], re.M)
    assert start.split() == [
        "/opt/enclavekit/venv/bin/python3",
        "-I",
        "/opt/enclavekit/enclavekit-agent.pyz",
        "parent-agent",
        "--config",
        HOST_CONFIG,
        "--enclave-cid",
        "17",
    ]
    assert re.search(r"^systemctl enable --now .*enclavekit-enclave-app-agent\.service$", ud, re.M)
    # the agent comes after the enclave's unit and never before host.json is written
    assert ud.index(f"cat > {HOST_CONFIG}") < ud.index("systemctl enable --now enclavekit-")
    assert len(ud.encode()) < 16384  # EC2's user data limit


def test_cli_parser_accepts_the_unit_command_line() -> None:
    from enclavekit.cli import build_parser

    args = build_parser().parse_args(
        ["parent-agent", "--config", HOST_CONFIG, "--enclave-cid", "16"]
    )
    assert (args.config, args.enclave_cid, args.once, args.vsock_root) == (
        Path(HOST_CONFIG),
        16,
        False,
        None,
    )
