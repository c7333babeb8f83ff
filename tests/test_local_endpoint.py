"""`enclavekit local start|stop|status|ca` and `enclavekit cdk` as a user runs them, plus the AWS
CLI against the endpoint for the enclave-certificate calls and EnclaveOptions (budget ~20 s)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from cryptography import x509

from enclavekit.localenv import local_aws_env
from local_backend import server
from local_backend.pytest_plugin import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
AWS = ROOT / ".venv" / "bin" / "aws"


def _ek(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "enclavekit", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        timeout=120,
    )


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    state_dir = tmp_path_factory.mktemp("state")
    port = free_port()
    res = _ek("local", "start", "--port", str(port), "--state-dir", str(state_dir))
    assert res.returncode == 0, res.stderr
    try:
        yield state_dir, port
    finally:
        res = _ek("local", "stop", "--state-dir", str(state_dir))
        assert res.returncode == 0 and "stopped" in res.stdout
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", port))


def test_start_writes_endpoint_json_and_is_idempotent(state: tuple[Path, int]) -> None:
    state_dir, port = state
    info = json.loads((state_dir / "endpoint.json").read_text())
    assert info["endpoint"] == f"http://localhost:{port}" and info["port"] == port
    assert info["state_dir"] == str(state_dir.resolve()) and info["started"]
    again = _ek("local", "start", "--port", str(port), "--state-dir", str(state_dir))
    assert again.returncode == 0 and "already running" in again.stdout
    assert json.loads((state_dir / "endpoint.json").read_text())["pid"] == info["pid"]
    assert (state_dir / "logs" / "endpoint.log").stat().st_size > 0


def test_binds_loopback_only(state: tuple[Path, int]) -> None:
    _state_dir, port = state
    listening = Path("/proc/net/tcp").read_text().splitlines()[1:]
    ours = [
        ln.split()
        for ln in listening
        if ln.split()[1].endswith(f":{port:04X}") and ln.split()[3] == "0A"
    ]
    assert ours and all(fields[1].startswith("0100007F:") for fields in ours)


def test_status_json(state: tuple[Path, int]) -> None:
    state_dir, port = state
    res = _ek("local", "status", "--json", "--state-dir", str(state_dir))
    st = json.loads(res.stdout)
    assert res.returncode == 0 and st["running"] is True and st["port"] == port
    assert st["endpoint"] == f"http://localhost:{port}" and st["pid"] > 0


def test_port_taken_is_one_line_error(state: tuple[Path, int], tmp_path: Path) -> None:
    _state_dir, port = state
    res = _ek("local", "start", "--port", str(port), "--state-dir", str(tmp_path / "other"))
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and f"port {port}" in res.stderr
    assert "Traceback" not in res.stderr


def test_not_running_status_and_cdk_fail_cleanly(tmp_path: Path) -> None:
    res = _ek("local", "status", "--state-dir", str(tmp_path))
    assert res.returncode == 1 and "not running" in res.stdout
    res = _ek("cdk", "--state-dir", str(tmp_path), "ls")
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert "not running" in res.stderr and "enclavekit local start" in res.stderr


def test_bad_endpoint_json_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "endpoint.json").write_text("{not json")
    res = _ek("local", "status", "--state-dir", str(tmp_path))
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "endpoint.json" in res.stderr


def test_ca_prints_the_root_once_per_state_dir(state: tuple[Path, int]) -> None:
    state_dir, _port = state
    first = _ek("local", "ca", "--state-dir", str(state_dir)).stdout
    second = _ek("local", "ca", "--state-dir", str(state_dir)).stdout
    assert first == second and first.startswith("-----BEGIN CERTIFICATE-----")
    root = x509.load_pem_x509_certificate(first.encode())
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert oct((state_dir / "acm-ca" / "root-key.pem").stat().st_mode & 0o777) == "0o600"


EC2_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


def _role_client(port: int, role_arn: str, service: str) -> Any:
    """A client with the role's credentials, as EC2 (the instance's IMDS) hands them out."""
    from local_backend.moto_ext.identity import (
        EC2_SERVICE_ACCESS_KEY_ID,
        EC2_SERVICE_SECRET_ACCESS_KEY,
    )

    url = f"http://localhost:{port}"
    c = boto3.client(
        "sts",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=EC2_SERVICE_ACCESS_KEY_ID,
        aws_secret_access_key=EC2_SERVICE_SECRET_ACCESS_KEY,
    ).assume_role(RoleArn=role_arn, RoleSessionName="cli-test")["Credentials"]
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=c["AccessKeyId"],
        aws_secret_access_key=c["SecretAccessKey"],
        aws_session_token=c["SessionToken"],
    )


def _aws_fails(port: int, tmp: Path, *args: str) -> str:
    env = local_aws_env(f"http://localhost:{port}", base=os.environ, scratch_dir=tmp)
    res = subprocess.run([str(AWS), *args], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode != 0, res.stdout
    return res.stderr


def _aws(port: int, tmp: Path, *args: str) -> dict:
    env = local_aws_env(f"http://localhost:{port}", base=os.environ, scratch_dir=tmp)
    res = subprocess.run(
        [str(AWS), *args, "--output", "json"], capture_output=True, text=True, env=env, timeout=60
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout) if res.stdout.strip() else {}


def test_aws_cli_enclave_calls(state: tuple[Path, int], tmp_path: Path) -> None:
    _state_dir, port = state
    run = _aws(
        port,
        tmp_path,
        "ec2",
        "run-instances",
        "--image-id",
        "ami-12c6146b",
        "--instance-type",
        "m5a.xlarge",
        "--count",
        "1",
        "--enclave-options",
        "Enabled=true",
    )
    iid = run["Instances"][0]["InstanceId"]
    assert run["Instances"][0]["EnclaveOptions"] == {"Enabled": True}
    desc = _aws(port, tmp_path, "ec2", "describe-instances", "--instance-ids", iid)
    assert desc["Reservations"][0]["Instances"][0]["EnclaveOptions"] == {"Enabled": True}
    attr = _aws(
        port,
        tmp_path,
        "ec2",
        "describe-instance-attribute",
        "--instance-id",
        iid,
        "--attribute",
        "enclaveOptions",
    )
    assert attr["EnclaveOptions"] == {"Enabled": True}

    cert = _aws(port, tmp_path, "acm", "request-certificate", "--domain-name", "cli.example.test")[
        "CertificateArn"
    ]
    role = _aws(
        port,
        tmp_path,
        "iam",
        "create-role",
        "--role-name",
        "cli-enclave-role",
        "--assume-role-policy-document",
        json.dumps(EC2_TRUST),
    )["Role"]["Arn"]
    grant = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}
    _aws(
        port,
        tmp_path,
        "iam",
        "put-role-policy",
        "--role-name",
        "cli-enclave-role",
        "--policy-name",
        "bundle",
        "--policy-document",
        json.dumps({"Version": "2012-10-17", "Statement": [grant]}),
    )
    assoc = _aws(
        port,
        tmp_path,
        "ec2",
        "associate-enclave-certificate-iam-role",
        "--certificate-arn",
        cert,
        "--role-arn",
        role,
    )
    assert assoc["CertificateS3BucketName"] == "aws-ec2-enclave-certificate-us-east-1-prod"
    assert assoc["CertificateS3ObjectKey"] == f"{role}/{cert}"
    got = _aws(
        port,
        tmp_path,
        "ec2",
        "get-associated-enclave-certificate-iam-roles",
        "--certificate-arn",
        cert,
    )
    assert got["AssociatedRoles"] == [{"AssociatedRoleArn": role, **assoc}]
    where = ["--bucket", assoc["CertificateS3BucketName"], "--key", assoc["CertificateS3ObjectKey"]]
    # The bucket is AWS's: the account root may not read it, the associated role may.
    denied = _aws_fails(port, tmp_path, "s3api", "get-object", *where, str(tmp_path / "x"))
    assert "AccessDenied" in denied
    role_s3 = _role_client(port, role, "s3")
    text = (
        role_s3.get_object(
            Bucket=assoc["CertificateS3BucketName"], Key=assoc["CertificateS3ObjectKey"]
        )["Body"]
        .read()
        .decode()
    )
    assert "PRIVATE KEY" not in text and json.loads(text)["encryptedPrivateKey"]
    dis = _aws(
        port,
        tmp_path,
        "ec2",
        "disassociate-enclave-certificate-iam-role",
        "--certificate-arn",
        cert,
        "--role-arn",
        role,
    )
    assert dis["Return"] is True
    got = _aws(
        port,
        tmp_path,
        "ec2",
        "get-associated-enclave-certificate-iam-roles",
        "--certificate-arn",
        cert,
    )
    assert got["AssociatedRoles"] == []
    with pytest.raises(ClientError) as info:  # no association, no read
        role_s3.get_object(
            Bucket=assoc["CertificateS3BucketName"], Key=assoc["CertificateS3ObjectKey"]
        )
    assert info.value.response["Error"]["Code"] == "AccessDenied"
    _aws(port, tmp_path, "ec2", "terminate-instances", "--instance-ids", iid)


def test_server_status_library(state: tuple[Path, int]) -> None:
    state_dir, port = state
    st = server.status(state_dir)
    assert st.running and st.port == port
    assert server.running_endpoint(state_dir).port == port
