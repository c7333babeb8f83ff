"""A hand-written CloudFormation template (no enclavekit Metadata), deployed with the AWS CLI:
its user data installs aws-nitro-enclaves-cli, writes allocator.yaml, copies the EIF from S3 and
starts it under a systemd unit. The enclave runs inside the host with the EIF's PCRs and
attests; a pool the instance type cannot give fails at the allocator, as on AWS. And the user
data our constructs render (`HostSpec.user_data`) runs unchanged: pip resolves the agent's pinned
boto3 tree from the local wheelhouse, the agent zipapp comes from S3, and its systemd unit
provisions the enclave over the host's emulated vsock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from host_support import AGENT_KEY, ENCLAVE_HOST_TEMPLATE, build_app_eif, construct_host_spec

from enclavekit import attestation, pcr
from enclavekit import provisioning as prov
from enclavekit.agent_bundle import build_agent_bundle, runtime_requirements
from enclavekit.errors import BackendError
from enclavekit.localenv import local_aws_env
from enclavekit.transport import PARENT_CID, EmulatedVsock
from local_backend.deploy import wait_user_data
from local_backend.host import control, hooks
from local_backend.host.layout import HOST_EMULATOR_STATE, instance_layout
from local_backend.verify import verify

pytestmark = pytest.mark.slow

TEMPLATE = ENCLAVE_HOST_TEMPLATE  # (shared with bench_host)
BIN = Path(sys.executable).parent


def _aws(endpoint: Any, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = local_aws_env(endpoint.url, scratch_dir=tmp / "aws")
    return subprocess.run(
        [str(BIN / "aws"), *args], env=env, capture_output=True, text=True, timeout=300
    )


def _deploy(endpoint: Any, tmp: Path, stack: str, **params: str) -> str:
    overrides = [f"{k}={v}" for k, v in params.items()]
    out = _aws(
        endpoint,
        tmp,
        "cloudformation",
        "deploy",
        "--template-file",
        str(TEMPLATE),
        "--stack-name",
        stack,
        "--capabilities",
        "CAPABILITY_IAM",
        "--parameter-overrides",
        *overrides,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    cfn = endpoint.client("cloudformation")
    outputs = cfn.describe_stacks(StackName=stack)["Stacks"][0]["Outputs"]
    return next(o["OutputValue"] for o in outputs if o["OutputKey"] == "InstanceId")


def _status(state: Path) -> str:
    out = subprocess.run(
        [str(BIN / "enclavekit"), "local", "status", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def eif_object(
    enclavekit_endpoint: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str, Any]:
    tmp = tmp_path_factory.mktemp("eif")
    path = tmp / "app.eif"
    measurements = build_app_eif(path)
    s3 = enclavekit_endpoint.client("s3")
    s3.create_bucket(Bucket="hand-written-eifs")
    s3.upload_file(str(path), "hand-written-eifs", "app/app.eif")
    return "hand-written-eifs", "app/app.eif", measurements


def test_user_data_boots_and_attests_the_enclave(
    enclavekit_endpoint: Any, eif_object: Any, tmp_path: Path
) -> None:
    bucket, key, measurements = eif_object
    state = Path(enclavekit_endpoint.state_dir)
    started = time.monotonic()
    iid = _deploy(enclavekit_endpoint, tmp_path, "hand-written", EifBucket=bucket, EifKey=key)
    layout = instance_layout(state, iid)
    host = control.wait_booted(layout, timeout=240)
    console = layout.console.read_text()
    assert control.boot_error(host) is None, console[-3000:]
    seconds = time.monotonic() - started
    enclaves = hooks.host_enclaves(layout)
    assert [e["State"] for e in enclaves] == ["RUNNING"], console[-2000:]
    enclave = enclaves[0]
    assert enclave["EnclaveCID"] == 16 and enclave["NumberOfCPUs"] == 2
    assert enclave["Measurements"]["PCR0"] == measurements.hex(0)
    assert '"State": "RUNNING"' in console  # the user data's own describe-enclaves
    # Attest through the enclave's control port, from the parent's side (CID 3) of this host.
    vsock = EmulatedVsock(
        Path(f"/proc/{host['init_pid']}/root{HOST_EMULATOR_STATE}/vsock"), PARENT_CID
    )
    nonce = os.urandom(32)
    deadline = time.monotonic() + 60
    while True:  # the enclave runs; its program opens its control port a moment later
        try:
            sock = vsock.connect(16, 5005)
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    with sock:
        reply = prov.exchange(sock, prov.Attest(nonce=nonce))
    doc = attestation.verify(reply.document, attestation.TrustAnchor.local(state))
    assert doc.nonce == nonce
    assert doc.pcrs[0] == measurements.pcr0 and doc.pcrs[2] == measurements.pcr2
    assert doc.pcrs[4] == pcr.pcr4_of_instance_id(iid)
    role = enclavekit_endpoint.client("iam").list_roles()["Roles"]
    role_arns = {r["Arn"] for r in role if "HostRole" in r["RoleName"]}
    assert any(doc.pcrs[3] == pcr.pcr3_of_role_arn(a) for a in role_arns)
    # The security group lets 8443 in: socat in the host relays it to the enclave.
    row = next(r for r in hooks.hosts_status(state) if r["instance_id"] == iid)
    assert [p["port"] for p in row["ports"]] == [8443]
    assert row["enclaves"][0]["State"] == "RUNNING"
    status = _status(state)
    assert f"{iid}  user data: done  enclaves: {enclave['EnclaveID']} (CID 16, RUNNING)" in status
    assert f"8443 -> 127.0.0.1:{row['ports'][0]['host_port']}" in status
    print(f"\nstack deploy -> enclave RUNNING via user data: {seconds:.1f} s")
    # verify sees this host though nothing of ours describes it: what it runs is checked.
    report = verify(state, stack="hand-written")
    [hr] = report.hosts
    results = {c.name: (c.ok, c.applies) for c in hr.checks}
    assert results == {
        "boot": (True, True),
        "enclaves": (True, True),
        "attestation": (True, True),
        "keys": (True, False),
        "parent-denied": (True, False),
        "nsm-parent-refused": (True, True),
        "https": (True, False),
        "key-not-on-parent": (True, False),
    }, report.table()
    assert report.ok and hr.enclave_id == enclave["EnclaveID"], report.table()
    assert "does not apply: no KMS key policy grants the host role" in report.table()
    out = _aws(
        enclavekit_endpoint,
        tmp_path,
        "cloudformation",
        "delete-stack",
        "--stack-name",
        "hand-written",
    )
    assert out.returncode == 0, out.stderr


def test_a_pool_the_type_cannot_give_fails_at_the_allocator(
    enclavekit_endpoint: Any, eif_object: Any, tmp_path: Path
) -> None:
    bucket, key, _ = eif_object
    state = Path(enclavekit_endpoint.state_dir)
    # m5.xlarge: 16 GiB, the parent keeps 1 GiB; 16384 MiB is more than the type can give.
    iid = _deploy(
        enclavekit_endpoint,
        tmp_path,
        "too-big",
        EifBucket=bucket,
        EifKey=key,
        AllocatorMemory="16384",
    )
    layout = instance_layout(state, iid)
    host = control.wait_booted(layout, timeout=240)
    console = layout.console.read_text()
    assert host["boot"]["state"] == "failed"
    assert host["boot"]["failures"][0]["status"] == 1
    assert "Job for nitro-enclaves-allocator.service failed" in console
    journal = control.host_exec(layout, ["journalctl", "-u", "nitro-enclaves-allocator"])
    assert (
        "Error: Failed to configure entire amount of requested memory. This indicates "
        "insufficient system resources."
    ) in journal.stdout
    state_out = control.host_exec(layout, ["systemctl", "is-active", "nitro-enclaves-allocator"])
    assert (state_out.stdout.strip(), state_out.returncode) == ("failed", 3)
    assert hooks.host_enclaves(layout) == []
    assert (
        f"{iid}  user data: FAILED: user data failed: part-001 exited 1 at `systemctl "
        "enable --now nitro-enclaves-allocator.service`  enclaves: none"
    ) in _status(state)
    # verify: the failed boot, with the command, its status and the console's last lines.
    report = verify(state, stack="too-big")
    [boot] = report.hosts[0].checks
    assert not report.ok and (boot.name, boot.ok) == ("boot", False)
    assert "part-001 exited 1 at `systemctl enable --now nitro-enclaves-allocator.service`" in (
        boot.detail
    )
    assert "console: " in boot.detail and "Job for nitro-enclaves-allocator.service" in boot.detail
    # `up`'s boot phase fails the same way.
    with pytest.raises(BackendError, match=f"instance {iid}: user data failed: part-001 exited 1"):
        wait_user_data(state, ["too-big"])
    _aws(enclavekit_endpoint, tmp_path, "cloudformation", "delete-stack", "--stack-name", "too-big")


def _instance_profile(iam: Any, name: str, bucket: str) -> str:
    """An EC2 role that may read the stack's assets, in an instance profile (its ARN)."""
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))
    read = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*"}
        ],
    }
    iam.put_role_policy(RoleName=name, PolicyName="assets", PolicyDocument=json.dumps(read))
    profile = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return str(profile["Arn"])


def _attested_policy(role_arn: str, pcr0: str) -> str:
    """Root administers and encrypts; the role decrypts only in an enclave of image `pcr0`."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
                    "Action": "kms:*",
                    "Resource": "*",
                },
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": role_arn},
                    "Action": "kms:Decrypt",
                    "Resource": "*",
                    "Condition": {
                        "StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": pcr0}
                    },
                },
            ],
        }
    )


def test_our_constructs_user_data_runs_unchanged(
    enclavekit_endpoint: Any, eif_object: Any, tmp_path: Path
) -> None:
    """The construct's rendered user data boots the host: the enclave unit, the relay and the
    agent unit (zipapp from S3, boto3 tree pip-installed from the wheelhouse) provision the
    enclave; a requirement the index does not hold fails as pip does."""
    bucket, key, measurements = eif_object
    state = Path(enclavekit_endpoint.state_dir)
    bundle = build_agent_bundle()
    s3 = enclavekit_endpoint.client("s3")
    s3.put_object(Bucket=bucket, Key=AGENT_KEY, Body=bundle.data)
    spec = construct_host_spec(bucket, key, measurements, bundle.sha256)
    ec2 = enclavekit_endpoint.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.30.1.0/24")["Subnet"]["SubnetId"]
    profile = _instance_profile(enclavekit_endpoint.client("iam"), "ConstructHostRole", bucket)
    started = time.monotonic()
    iid = ec2.run_instances(
        ImageId="ami-12c6146b",
        MinCount=1,
        MaxCount=1,
        InstanceType="m5.xlarge",
        SubnetId=subnet,
        UserData="#!/bin/bash\n" + spec.user_data(),
        EnclaveOptions={"Enabled": True},
        IamInstanceProfile={"Arn": profile},
        MetadataOptions={"HttpTokens": "required"},
    )["Instances"][0]["InstanceId"]
    try:
        layout = instance_layout(state, iid)
        host = control.wait_booted(layout, timeout=280)
        console = layout.console.read_text()
        assert control.boot_error(host) is None, console[-3000:]
        seconds = time.monotonic() - started
        [enclave] = hooks.host_enclaves(layout)
        assert enclave["State"] == "RUNNING" and enclave["EnclaveName"] == "enclave-app"
        assert enclave["Measurements"]["PCR0"] == measurements.hex(0)
        units = ["enclavekit-enclave-app-relay", "enclavekit-enclave-app-agent"]
        active = control.host_exec(layout, ["systemctl", "is-active", *units])
        assert active.stdout.split() == ["active", "active"], active.stdout + active.stderr
        # The agent (the zipapp, on the venv's python3.11) provisioned the enclave over vsock.
        vsock = EmulatedVsock(
            Path(f"/proc/{host['init_pid']}/root{HOST_EMULATOR_STATE}/vsock"), PARENT_CID
        )
        deadline = time.monotonic() + 60
        status = None
        while True:
            # The enclave's control port listens a moment after RUNNING (more under load).
            try:
                with vsock.connect(16, prov.CONTROL_PORT) as sock:
                    status = prov.exchange(sock, prov.Status())
            except (ConnectionRefusedError, ConnectionResetError, FileNotFoundError):
                status = None
            if (status and status.state == "ready") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        journal = control.host_exec(layout, ["journalctl", "-u", units[1]]).stdout
        assert status is not None and status.state == "ready", journal
        assert "enclave provisioned" in journal
        venv = "/opt/enclavekit/venv"
        pip = ["env", "-u", "PYTHONPATH", f"{venv}/bin/pip"]  # the venv alone, not our tools'
        freeze = control.host_exec(layout, [*pip, "freeze"]).stdout.split()
        assert sorted(freeze) == sorted(runtime_requirements())
        # The wheelhouse is the host's whole PyPI: what it does not hold is not found.
        missing = control.host_exec(layout, [*pip, "install", "requests==2.32.3"])
        assert missing.returncode == 1
        assert (
            "ERROR: Could not find a version that satisfies the requirement requests==2.32.3"
        ) in missing.stderr
        print(f"\nRunInstances -> enclave provisioned via our user data: {seconds:.1f} s")
        # An instance of no stack is verified too (every enclave-enabled instance is), with
        # the keys whose policies release to its role under attestation.
        role = enclavekit_endpoint.client("iam").get_role(RoleName="ConstructHostRole")
        role_arn = role["Role"]["Arn"]
        kms = enclavekit_endpoint.client("kms")
        key = kms.create_key(Policy=_attested_policy(role_arn, measurements.hex(0)))
        key_id = key["KeyMetadata"]["KeyId"]

        def host_report() -> Any:
            [hr] = [h for h in verify(state).hosts if h.instance_id == iid]
            return hr

        hr = host_report()
        assert hr.stack == "(no stack)" and hr.ok, [c.__dict__ for c in hr.checks]
        assert [c.name for c in hr.checks if c.applies] == [
            "boot",
            "enclaves",
            "attestation",
            "keys",
            "parent-denied",
            "nsm-parent-refused",
        ]
        # A key bound to another image is not this host's: the keys check says so.
        other = _attested_policy(role_arn, "ab" * 48)
        kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy=other)
        keys = next(c for c in host_report().checks if c.name == "keys")
        assert not keys.ok and "no enclave of this host has them" in keys.detail
        # A policy that also lets the role decrypt unattested: the parent is not denied.
        leaky = json.loads(_attested_policy(role_arn, measurements.hex(0)))
        leaky["Statement"].append(
            {
                "Effect": "Allow",
                "Principal": {"AWS": role_arn},
                "Action": "kms:Decrypt",
                "Resource": "*",
            }
        )
        kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy=json.dumps(leaky))
        checks = {c.name: c for c in host_report().checks}
        assert checks["keys"].ok and not checks["parent-denied"].ok
        assert "decrypted under key" in checks["parent-denied"].detail
        kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    finally:
        ec2.terminate_instances(InstanceIds=[iid])
