"""The endpoint's state survives `local stop` + `local start` (local_backend.persist).

A real endpoint (moto server mode, our extensions) gets a KMS key and a ciphertext under it, an
SSM SecureString, an IAM role, an S3 object, an ACM certificate and a CloudFormation stack with
an export; it is stopped and started again on the same state dir, and all of it is back — the
ciphertext still decrypts (the key material came back, not a new key with the same id). The
saved state is owner-only and sealed (no plaintext of it in the state dir), and a damaged state
file is set aside with one logged line instead of failing the start.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from pathlib import Path

import pytest

from enclavekit.localenv import local_client
from local_backend import persist, server

TEMPLATE = {
    "Resources": {
        "Param": {
            "Type": "AWS::SSM::Parameter",
            "Properties": {"Name": "/persist/plain", "Type": "String", "Value": "from-a-stack"},
        }
    },
    "Outputs": {"ParamName": {"Value": {"Ref": "Param"}, "Export": {"Name": "PersistParamName"}}},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


@pytest.mark.slow
def test_state_survives_stop_and_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    port = _free_port()
    info = server.start(port, state)
    secret = b"persist-secret-" + os.urandom(8).hex().encode()
    try:
        c = lambda svc: local_client(svc, info.endpoint)  # noqa: E731
        kms = c("kms")
        key_id = kms.create_key(Description="persisted")["KeyMetadata"]["KeyId"]
        blob = kms.encrypt(KeyId=key_id, Plaintext=secret)["CiphertextBlob"]
        c("ssm").put_parameter(
            Name="/persist/sealed", Value=secret.decode(), Type="SecureString", KeyId=key_id
        )
        c("iam").create_role(
            RoleName="persisted-role",
            AssumeRolePolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "ec2.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                }
            ),
        )
        c("s3").create_bucket(Bucket="persisted-bucket")
        c("s3").put_object(Bucket="persisted-bucket", Key="k", Body=b"object body")
        cert_arn = c("acm").request_certificate(DomainName="persist.example.test")["CertificateArn"]
        cert_pem = c("acm").get_certificate(CertificateArn=cert_arn)["Certificate"]
        cfn = c("cloudformation")
        cfn.create_stack(StackName="Persisted", TemplateBody=json.dumps(TEMPLATE))
        assert cfn.describe_stacks(StackName="Persisted")["Stacks"][0]["StackStatus"] == (
            "CREATE_COMPLETE"
        )
    finally:
        server.stop(state)

    saved = state / persist.PERSIST_DIR
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(saved.stat().st_mode) == 0o700
    for name in (persist.STATE_FILE, persist.KEY_FILE):
        assert stat.S_IMODE((saved / name).stat().st_mode) == 0o600, name
    # Sealed at rest: the secret is in no state file (not the snapshot, not the log).
    assert not [p for p in _files(state) if secret in p.read_bytes()]

    info = server.start(port, state)
    try:
        c = lambda svc: local_client(svc, info.endpoint)  # noqa: E731
        assert c("kms").decrypt(CiphertextBlob=blob)["Plaintext"] == secret
        got = c("ssm").get_parameter(Name="/persist/sealed", WithDecryption=True)
        assert got["Parameter"]["Value"] == secret.decode()
        assert c("iam").get_role(RoleName="persisted-role")["Role"]["RoleName"]
        body = c("s3").get_object(Bucket="persisted-bucket", Key="k")["Body"].read()
        assert body == b"object body"
        assert c("acm").get_certificate(CertificateArn=cert_arn)["Certificate"] == cert_pem
        cfn = c("cloudformation")
        assert cfn.describe_stacks(StackName="Persisted")["Stacks"][0]["StackStatus"] == (
            "CREATE_COMPLETE"
        )
        exports = {e["Name"]: e["Value"] for e in cfn.list_exports()["Exports"]}
        assert exports["PersistParamName"] == "/persist/plain"
        # The restored stack is live: it deletes, and its resource goes with it.
        cfn.delete_stack(StackName="Persisted")
        ssm = c("ssm")
        with pytest.raises(ssm.exceptions.ParameterNotFound):
            ssm.get_parameter(Name="/persist/plain")
    finally:
        server.stop(state)

    # A damaged state file: set aside, one log line, and the endpoint starts empty.
    path = saved / persist.STATE_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    info = server.start(port, state)
    try:
        assert not local_client("kms", info.endpoint).list_keys()["Keys"]
    finally:
        server.stop(state)
    assert [p.name for p in saved.iterdir() if ".unreadable-" in p.name]
    log = (state / server.LOG_FILE).read_text()
    assert "state not restored:" in log and "does not open with state.key" in log


@pytest.mark.slow
def test_user_data_host_boots_again_after_a_restart(tmp_path: Path) -> None:
    """An instance host (user data) running when the endpoint stops is stopped with it, and
    booted again by `local start` through the host interface (hooks.start_instance_host) from
    what was recorded: as an EC2 stop/start, its enabled units start, its user data does not
    run again."""
    from test_host_ec2 import UNIT_USER_DATA, _booted, _run

    from local_backend.host import control
    from local_backend.host.layout import instance_layout

    state = tmp_path / "state"
    port = _free_port()
    info = server.start(port, state)
    try:
        ec2 = local_client("ec2", info.endpoint)
        iid = _run(ec2, UNIT_USER_DATA, [])
        layout = instance_layout(state, iid)
        assert control.boot_error(_booted(state, iid)) is None
    finally:
        server.stop(state)
    assert layout.read_host()["state"] == "stopped"

    info = server.start(port, state)
    try:
        ec2 = local_client("ec2", info.endpoint)
        status = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
        assert status["State"]["Name"] == "running"
        assert control.boot_error(_booted(state, iid)) is None
        deadline = time.monotonic() + 30
        while True:
            out = control.host_exec(layout, ["systemctl", "is-active", "tick"])
            if out.stdout.strip() == "active" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert out.stdout.strip() == "active"  # enabled before the stop: started at boot
        assert layout.inside("/var/log/first-boot.log").read_text() == "first-boot-ran\n"
        ec2.terminate_instances(InstanceIds=[iid])
        assert layout.read_host()["state"] == "stopped"
    finally:
        server.stop(state)


def test_state_written_before_the_ec2_split_still_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A state file names the classes it holds by module; the EC2 extension's models.py was
    split, so a file saved by the earlier layout names `ec2.models`. It must still load (an
    upgrade keeps what was deployed), and its registries land under their new names."""
    import pickle
    import sys
    import types

    from local_backend.moto_ext.ec2 import certificates, hooks

    old = "local_backend.moto_ext.ec2.models"
    info = hooks.EnclaveInstance(
        instance_id="i-0123456789abcdef0",
        account_id="123456789012",
        region="us-east-1",
        instance_type="m5a.xlarge",
        image_id="ami-12345678",
        subnet_id=None,
        private_ip=None,
        instance_profile_arn=None,
        role_arns=(),
    )
    # Pickle as the old layout did: the classes named under ec2.models.
    fake = types.ModuleType(old)
    fake.EnclaveInstance = hooks.EnclaveInstance  # type: ignore[attr-defined]
    fake.CertificateAssociation = certificates.CertificateAssociation  # type: ignore[attr-defined]
    with monkeypatch.context() as m:
        m.setitem(sys.modules, old, fake)
        m.setattr(hooks.EnclaveInstance, "__module__", old)
        blob = pickle.dumps({"instances": [info]}, protocol=pickle.HIGHEST_PROTOCOL)
    assert old.encode() in blob and old not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(blob)  # what the endpoint did before: the file was set aside
    restored = persist.loads(blob)["instances"][0]
    assert type(restored) is hooks.EnclaveInstance and restored == info
    for key, now in persist.MOVED_EXTENSION_STATE.items():
        mod, name = now.split(":")
        assert getattr(sys.modules[mod], name) is not None, key
