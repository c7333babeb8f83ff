"""The real cdk CLI against a real local endpoint: bootstrap, deploy, update, no-change deploy,
destroy, redeploy, an unsupported type, a failed create that rolls back.

One endpoint per module on a free loopback port with a temporary state dir (budget ~60 s).
"""

from __future__ import annotations

import base64
import json
import re
import socket
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from enclavekit.localenv import local_aws_env
from local_backend import server
from local_backend.cdk import bootstrap_target, run_cdk
from local_backend.pytest_plugin import free_port

pytestmark = pytest.mark.slow

PCR_A = "ab" * 48
PCR_B = "cd" * 48
BAD_ROLE = "arn:aws:iam::123456789012:role/does-not-exist"

APP = textwrap.dedent("""
    import json, os
    import aws_cdk as cdk
    from aws_cdk import aws_ec2 as ec2, aws_iam as iam, aws_kms as kms, aws_ssm as ssm
    from aws_cdk import aws_certificatemanager as acm

    params = json.load(open("params.json"))
    app = cdk.App()
    env = cdk.Environment(account="123456789012", region="us-east-1")
    stack = cdk.Stack(app, "EnclaveTestStack", env=env)
    vpc = ec2.Vpc(stack, "Vpc", max_azs=1, nat_gateways=0, subnet_configuration=[
        ec2.SubnetConfiguration(name="iso", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED,
                                cidr_mask=24)])
    role = iam.Role(stack, "HostRole", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"))
    host = ec2.Instance(stack, "Host", vpc=vpc, instance_type=ec2.InstanceType("m5a.xlarge"),
        machine_image=ec2.MachineImage.generic_linux({"us-east-1": "ami-12c6146b"}),
        role=role, require_imdsv2=True)
    host.instance.enclave_options = ec2.CfnInstance.EnclaveOptionsProperty(enabled=True)
    key = kms.Key(stack, "EnclaveKey", policy=iam.PolicyDocument(statements=[
        iam.PolicyStatement(principals=[iam.AccountRootPrincipal()],
            actions=["kms:Create*", "kms:Describe*", "kms:Put*", "kms:Get*", "kms:Encrypt",
                     "kms:ScheduleKeyDeletion"], resources=["*"]),
        iam.PolicyStatement(principals=[role], actions=["kms:Decrypt"], resources=["*"],
            conditions={"StringEqualsIgnoreCase": {
                "kms:RecipientAttestation:PCR0": params["pcr0"]}})]))
    cert = acm.CfnCertificate(stack, "Cert", domain_name="app.example.test",
                              subject_alternative_names=["www.app.example.test"])
    assoc = ec2.CfnEnclaveCertificateIamRoleAssociation(stack, "CertAssoc",
        certificate_arn=cert.ref, role_arn=role.role_arn)
    role.add_to_policy(iam.PolicyStatement(actions=["s3:GetObject"],
        resources=[f"arn:aws:s3:::{assoc.attr_certificate_s3_bucket_name}/*"]))
    role.add_to_policy(iam.PolicyStatement(actions=["kms:Decrypt"],
        resources=[f"arn:aws:kms:us-east-1:*:key/{assoc.attr_encryption_kms_key_id}"]))
    ssm.StringParameter(stack, "Secret", parameter_name="/enclave/secret",
                        string_value="ciphertext-b64")
    if params.get("bad_type"):
        cdk.CfnResource(stack, "Bad", type="AWS::Foo::Bar", properties={})
    for name, value in [("BucketName", assoc.attr_certificate_s3_bucket_name),
                        ("ObjectKey", assoc.attr_certificate_s3_object_key),
                        ("KmsKeyId", assoc.attr_encryption_kms_key_id),
                        ("CertArn", cert.ref), ("InstanceId", host.instance_id),
                        ("KeyArn", key.key_arn), ("VpcId", vpc.vpc_id)]:
        cdk.CfnOutput(stack, name, value=value)

    # A stack whose create fails half-way (association with a role that does not exist).
    fail = cdk.Stack(app, "FailingStack", env=env)
    fvpc = ec2.CfnVPC(fail, "FailVpc", cidr_block="10.9.0.0/16")
    fcert = acm.CfnCertificate(fail, "FailCert", domain_name="fail.example.test")
    fassoc = ec2.CfnEnclaveCertificateIamRoleAssociation(fail, "FailAssoc",
        certificate_arn=fcert.ref, role_arn=params["bad_role"])
    fassoc.add_dependency(fvpc)
    app.synth()
""")


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[server.EndpointInfo]:
    state = tmp_path_factory.mktemp("state")
    info = server.start(free_port(), state)
    try:
        yield info
    finally:
        assert server.stop(state)
        assert not server._pid_alive(info.pid)
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", info.port))  # nothing listens there any more


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("app")
    (d / "app.py").write_text(APP)
    (d / "cdk.json").write_text(json.dumps({"app": f"{sys.executable} app.py"}))
    _params(d, pcr0=PCR_A)
    return d


def _params(d: Path, **kw: object) -> None:
    (d / "params.json").write_text(json.dumps({"bad_role": BAD_ROLE, **kw}))


@pytest.fixture(scope="module")
def aws(endpoint: server.EndpointInfo) -> dict[str, boto3.client]:
    env = local_aws_env(endpoint.endpoint)
    session = boto3.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    return {
        name: session.client(name, endpoint_url=endpoint.endpoint)
        for name in ("cloudformation", "ec2", "s3", "kms", "acm", "ssm")
    }


def _role_s3(endpoint: server.EndpointInfo, role_arn: str) -> Any:
    """S3 as the instance role (EC2 assumes it): only the associated role may read the
    association's object in the AWS-owned bucket, as on AWS."""
    from local_backend.moto_ext.identity import (
        EC2_SERVICE_ACCESS_KEY_ID,
        EC2_SERVICE_SECRET_ACCESS_KEY,
    )

    sts = boto3.client(
        "sts",
        endpoint_url=endpoint.endpoint,
        region_name="us-east-1",
        aws_access_key_id=EC2_SERVICE_ACCESS_KEY_ID,
        aws_secret_access_key=EC2_SERVICE_SECRET_ACCESS_KEY,
    )
    c = sts.assume_role(RoleArn=role_arn, RoleSessionName="cdk-loop")["Credentials"]
    return boto3.client(
        "s3",
        endpoint_url=endpoint.endpoint,
        region_name="us-east-1",
        aws_access_key_id=c["AccessKeyId"],
        aws_secret_access_key=c["SecretAccessKey"],
        aws_session_token=c["SessionToken"],
    )


def _cdk(endpoint: server.EndpointInfo, app_dir: Path, *args: str) -> str:
    res = run_cdk(args, state_dir=Path(endpoint.state_dir), cwd=app_dir, capture=True, timeout=180)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    return out


def _outputs(cfn: boto3.client, stack: str = "EnclaveTestStack") -> dict[str, str]:
    desc = cfn.describe_stacks(StackName=stack)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in desc.get("Outputs", [])}


def _key_pcr0(kms: boto3.client, key_arn: str) -> str:
    policy = json.loads(kms.get_key_policy(KeyId=key_arn, PolicyName="default")["Policy"])
    for st in policy["Statement"]:
        cond = st.get("Condition", {}).get("StringEqualsIgnoreCase", {})
        if "kms:RecipientAttestation:PCR0" in cond:
            return cond["kms:RecipientAttestation:PCR0"]
    raise AssertionError(f"no PCR0 condition in {policy}")


def test_full_loop(endpoint: server.EndpointInfo, app_dir: Path, aws: dict) -> None:
    cfn, ec2c = aws["cloudformation"], aws["ec2"]
    out = _cdk(endpoint, app_dir, "bootstrap", bootstrap_target())
    assert "bootstrapped" in out
    toolkit = cfn.describe_stacks(StackName="CDKToolkit")["Stacks"][0]
    assert toolkit["StackStatus"] == "CREATE_COMPLETE"

    # deploy
    out = _cdk(endpoint, app_dir, "deploy", "EnclaveTestStack", "--require-approval", "never")
    outputs = _outputs(cfn)
    assert set(outputs) == {
        "BucketName",
        "ObjectKey",
        "KmsKeyId",
        "CertArn",
        "InstanceId",
        "KeyArn",
        "VpcId",
    }
    assert f"EnclaveTestStack.InstanceId = {outputs['InstanceId']}" in out
    assert outputs["BucketName"] == "aws-ec2-enclave-certificate-us-east-1-prod"
    role_arn = outputs["ObjectKey"].split("/arn:aws:acm:")[0]
    assert outputs["ObjectKey"] == f"{role_arn}/{outputs['CertArn']}"
    inst = ec2c.describe_instances(InstanceIds=[outputs["InstanceId"]])
    inst = inst["Reservations"][0]["Instances"][0]
    assert inst["EnclaveOptions"] == {"Enabled": True}
    assert inst["MetadataOptions"]["HttpTokens"] == "required"  # from the launch template
    assert _key_pcr0(aws["kms"], outputs["KeyArn"]) == PCR_A
    assert (
        aws["acm"].describe_certificate(CertificateArn=outputs["CertArn"])["Certificate"]["Status"]
        == "ISSUED"
    )

    # the association's object: AWS's layout, the chain to the local CA, no plaintext key
    role_s3 = _role_s3(endpoint, role_arn)
    body = role_s3.get_object(Bucket=outputs["BucketName"], Key=outputs["ObjectKey"])["Body"].read()
    obj = json.loads(body)
    assert set(obj) == {
        "certificate",
        "certificateChain",
        "encryptedPrivateKey",
        "encryptionMethod",
    }
    assert b"PRIVATE KEY" not in body
    blob = base64.b64decode(obj["encryptedPrivateKey"], validate=True)
    assert b"PRIVATE KEY" not in blob and len(blob) > 1000  # RSA-2048 PEM, encrypted
    leaf = x509.load_pem_x509_certificate(obj["certificate"].encode())
    root = x509.load_pem_x509_certificate(server.ca_pem(Path(endpoint.state_dir)))
    assert (
        obj["certificateChain"].encode().strip() == server.ca_pem(Path(endpoint.state_dir)).strip()
    )
    leaf.verify_directly_issued_by(root)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["app.example.test", "www.app.example.test"]
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert (
        aws["acm"].get_certificate(CertificateArn=outputs["CertArn"])["Certificate"].strip()
        == obj["certificate"].strip()
    )
    # ... and not in the endpoint's state files or logs either (the CA's own key aside)
    for path in Path(endpoint.state_dir).rglob("*"):
        if path.is_file() and path.name != "root-key.pem":
            assert b"PRIVATE KEY" not in path.read_bytes(), path

    # update: a different PCR0 reaches the same key's policy, in place
    _params(app_dir, pcr0=PCR_B)
    out = _cdk(endpoint, app_dir, "deploy", "EnclaveTestStack", "--require-approval", "never")
    after = _outputs(cfn)
    assert after["KeyArn"] == outputs["KeyArn"]
    assert _key_pcr0(aws["kms"], outputs["KeyArn"]) == PCR_B
    assert (
        cfn.describe_stacks(StackName="EnclaveTestStack")["Stacks"][0]["StackStatus"]
        == "UPDATE_COMPLETE"
    )

    # no-change deploy
    out = _cdk(endpoint, app_dir, "deploy", "EnclaveTestStack", "--require-approval", "never")
    assert "(no changes)" in out

    # destroy: the VPC, the instance, the association's object are gone
    _cdk(endpoint, app_dir, "destroy", "EnclaveTestStack", "--force")
    vpcs = ec2c.describe_vpcs()["Vpcs"]
    assert [v for v in vpcs if not v["IsDefault"]] == []
    inst = ec2c.describe_instances(InstanceIds=[outputs["InstanceId"]])
    assert inst["Reservations"][0]["Instances"][0]["State"]["Name"] == "terminated"
    with pytest.raises(ClientError) as gone:  # AWS's bucket: no association, no read
        role_s3.get_object(Bucket=outputs["BucketName"], Key=outputs["ObjectKey"])
    assert gone.value.response["Error"]["Code"] == "AccessDenied"
    assert aws["ssm"].get_parameters(Names=["/enclave/secret"])["Parameters"] == []

    # redeploy
    _cdk(endpoint, app_dir, "deploy", "EnclaveTestStack", "--require-approval", "never")
    again = _outputs(cfn)
    assert again["InstanceId"] != outputs["InstanceId"]
    again_s3 = _role_s3(endpoint, again["ObjectKey"].split("/arn:aws:acm:")[0])
    assert again_s3.get_object(Bucket=again["BucketName"], Key=again["ObjectKey"])["Body"].read()


def test_unsupported_type_fails_with_its_name(
    endpoint: server.EndpointInfo, app_dir: Path, aws: dict
) -> None:
    _params(app_dir, pcr0=PCR_B, bad_type=True)
    try:
        res = run_cdk(
            ["deploy", "EnclaveTestStack", "--require-approval", "never"],
            state_dir=Path(endpoint.state_dir),
            cwd=app_dir,
            capture=True,
            timeout=180,
        )
    finally:
        _params(app_dir, pcr0=PCR_B)
    assert res.returncode != 0
    assert "AWS::Foo::Bar" in res.stdout + res.stderr


def test_failed_create_rolls_back(endpoint: server.EndpointInfo, app_dir: Path, aws: dict) -> None:
    cfn, ec2c = aws["cloudformation"], aws["ec2"]
    before = {v["VpcId"] for v in ec2c.describe_vpcs()["Vpcs"]}
    res = run_cdk(
        ["deploy", "FailingStack", "--require-approval", "never"],
        state_dir=Path(endpoint.state_dir),
        cwd=app_dir,
        capture=True,
        timeout=180,
    )
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "FailAssoc" in out and "does not exist" in out, out[-2000:]
    stack = cfn.describe_stacks(StackName="FailingStack")["Stacks"][0]
    assert stack["StackStatus"] == "ROLLBACK_COMPLETE"
    assert {v["VpcId"] for v in ec2c.describe_vpcs()["Vpcs"]} == before
    # reading the failed stack's resources must not bring them back (moto's map is lazy)
    assert cfn.describe_stack_resources(StackName="FailingStack")["StackResources"] == []
    assert {v["VpcId"] for v in ec2c.describe_vpcs()["Vpcs"]} == before
    certs = aws["acm"].list_certificates()["CertificateSummaryList"]
    assert not [c for c in certs if c["DomainName"] == "fail.example.test"]
    cfn.delete_stack(StackName="FailingStack")


def test_no_server_errors(endpoint: server.EndpointInfo) -> None:
    """Every request of the whole loop was answered without a server-side 500."""
    log = (Path(endpoint.state_dir) / "logs" / "endpoint.log").read_text()
    assert "HTTP/1.1" in log
    assert not re.search(r'HTTP/1\.1\S*" 5\d\d ', log)
    assert "Traceback" not in log
