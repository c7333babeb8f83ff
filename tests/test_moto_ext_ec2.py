"""The EC2/ACM/S3/CloudFormation extensions in-process (moto's mock_aws): emulator hooks,
EnclaveOptions, the association's key policy and object, change-set errors (budget ~5 s)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.kms.models import kms_backends

from local_backend import moto_ext
from local_backend.acm_enclave import p11ne_measurements
from local_backend.moto_ext.ec2 import (
    EnclaveInstance,
    certificates,
    hooks,
    on_instance_start,
    on_instance_stop,
)

KW = {
    "region_name": "us-east-1",
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
}


@pytest.fixture()
def aws(tmp_path: Path) -> Iterator[dict[str, object]]:
    moto_ext.install(tmp_path)
    events: list[tuple[str, EnclaveInstance]] = []
    on_instance_start(lambda i: events.append(("start", i)))
    on_instance_stop(lambda i: events.append(("stop", i)))
    with mock_aws():
        clients = {
            n: boto3.client(n, **KW) for n in ("ec2", "cloudformation", "acm", "iam", "s3", "kms")
        }
        yield {**clients, "events": events}
    hooks.clear_hooks()
    hooks.stop_all_enclave_instances()


def _template(enclave: bool = True, extra: dict | None = None) -> str:
    res: dict = {
        "Vpc": {"Type": "AWS::EC2::VPC", "Properties": {"CidrBlock": "10.1.0.0/16"}},
        "Subnet": {
            "Type": "AWS::EC2::Subnet",
            "Properties": {"VpcId": {"Ref": "Vpc"}, "CidrBlock": "10.1.0.0/24"},
        },
        "Rt": {"Type": "AWS::EC2::RouteTable", "Properties": {"VpcId": {"Ref": "Vpc"}}},
        "RtAssoc": {
            "Type": "AWS::EC2::SubnetRouteTableAssociation",
            "Properties": {"RouteTableId": {"Ref": "Rt"}, "SubnetId": {"Ref": "Subnet"}},
        },
        "Host": {
            "Type": "AWS::EC2::Instance",
            "Metadata": {"enclavekit:host": {"version": 1, "vpc": {"Ref": "Vpc"}}},
            "Properties": {
                "ImageId": "ami-12c6146b",
                "InstanceType": "m5a.xlarge",
                "SubnetId": {"Ref": "Subnet"},
                "EnclaveOptions": {"Enabled": enclave},
            },
        },
        "Meta": {"Type": "AWS::CDK::Metadata", "Properties": {"Analytics": "v2:deflate64:x"}},
    }
    res.update(extra or {})
    return json.dumps({"Resources": res, "Outputs": {"HostId": {"Value": {"Ref": "Host"}}}})


def _deploy(cfn, name: str, body: str, kind: str = "CREATE") -> dict:
    cfn.create_change_set(
        StackName=name, ChangeSetName="cdk-deploy-change-set", TemplateBody=body, ChangeSetType=kind
    )
    cfn.execute_change_set(StackName=name, ChangeSetName="cdk-deploy-change-set")
    return cfn.describe_stacks(StackName=name)["Stacks"][0]


def test_run_and_terminate_call_the_hooks(aws: dict) -> None:
    ec2, events = aws["ec2"], aws["events"]
    plain = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)
    assert plain["Instances"][0]["EnclaveOptions"] == {"Enabled": False}
    iid = ec2.run_instances(
        ImageId="ami-12c6146b",
        MinCount=1,
        MaxCount=1,
        InstanceType="m5a.xlarge",
        EnclaveOptions={"Enabled": True},
    )["Instances"][0]["InstanceId"]
    assert [(k, i.instance_id) for k, i in events] == [("start", iid)]
    assert events[0][1].stack_name is None and events[0][1].instance_type == "m5a.xlarge"
    ec2.terminate_instances(InstanceIds=[iid])
    assert [(k, i.instance_id) for k, i in events] == [("start", iid), ("stop", iid)]
    ec2.terminate_instances(InstanceIds=[iid])  # a second terminate stops nothing twice
    assert len(events) == 2


def test_stack_create_and_delete_call_the_hooks_with_resolved_metadata(aws: dict) -> None:
    cfn, ec2, events = aws["cloudformation"], aws["ec2"], aws["events"]
    stack = _deploy(cfn, "S1", _template())
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    host = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}["HostId"]
    [(kind, info)] = events
    assert kind == "start" and info.instance_id == host and info.logical_id == "Host"
    vpc_id = ec2.describe_instances(InstanceIds=[host])["Reservations"][0]["Instances"][0]["VpcId"]
    assert info.metadata == {"enclavekit:host": {"version": 1, "vpc": vpc_id}}
    cfn.delete_stack(StackName="S1")
    assert [k for k, _ in events] == ["start", "stop"]
    assert [v for v in ec2.describe_vpcs()["Vpcs"] if not v["IsDefault"]] == []


def test_a_failing_start_hook_fails_the_create_and_rolls_back(aws: dict) -> None:
    cfn, ec2 = aws["cloudformation"], aws["ec2"]

    def refuse(info: EnclaveInstance) -> None:
        raise RuntimeError("emulator could not boot the enclave image")

    on_instance_start(refuse)
    stack = _deploy(cfn, "S2", _template())
    assert stack["StackStatus"] == "ROLLBACK_COMPLETE"
    reasons = [
        e.get("ResourceStatusReason") or ""
        for e in cfn.describe_stack_events(StackName="S2")["StackEvents"]
    ]
    assert any("could not boot" in r for r in reasons)
    assert [v for v in ec2.describe_vpcs()["Vpcs"] if not v["IsDefault"]] == []
    assert [k for k, _ in aws["events"]] == ["start", "stop"]  # nothing left running


def test_unsupported_type_is_refused_with_its_name(aws: dict) -> None:
    cfn = aws["cloudformation"]
    body = _template(
        extra={
            "Q": {"Type": "AWS::Foo::Bar", "Properties": {}},
            "W": {"Type": "AWS::CloudFormation::WaitConditionHandle"},
        }
    )
    with pytest.raises(ClientError) as err:
        _deploy(cfn, "S3", body)
    msg = err.value.response["Error"]["Message"]
    assert "AWS::Foo::Bar" in msg and "AWS::CloudFormation::WaitConditionHandle" in msg


def test_change_set_not_found_codes(aws: dict) -> None:
    cfn = aws["cloudformation"]
    _deploy(cfn, "S4", _template(enclave=False))
    with pytest.raises(cfn.exceptions.ChangeSetNotFoundException):
        cfn.describe_change_set(StackName="S4", ChangeSetName="no-such-set")
    # deleting an absent change set of an existing stack succeeds (the CLI does it after a
    # no-change deploy, whose empty change set is already gone here)
    cfn.delete_change_set(StackName="S4", ChangeSetName="no-such-set")
    with pytest.raises(cfn.exceptions.ChangeSetNotFoundException):
        cfn.delete_change_set(StackName="NoSuchStack", ChangeSetName="no-such-set")
    # same-named change sets of two stacks are kept apart
    _deploy(cfn, "S5", _template(enclave=False))
    assert (
        cfn.describe_change_set(StackName="S4", ChangeSetName="cdk-deploy-change-set")["StackName"]
        == "S4"
    )


def test_kms_key_policy_update_is_in_place(aws: dict) -> None:
    cfn, kms = aws["cloudformation"], aws["kms"]

    def key(pcr: str) -> dict:
        root = {"AWS": "arn:aws:iam::123456789012:root"}
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": root, "Action": "kms:*", "Resource": "*"},
                {
                    "Effect": "Allow",
                    "Principal": root,
                    "Action": "kms:Decrypt",
                    "Resource": "*",
                    "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": pcr}},
                },
            ],
        }
        return {"Key": {"Type": "AWS::KMS::Key", "Properties": {"KeyPolicy": policy}}}

    body = json.dumps({"Resources": key("aa"), "Outputs": {"K": {"Value": {"Ref": "Key"}}}})
    first = _deploy(cfn, "S6", body)["Outputs"][0]["OutputValue"]
    policy = kms.get_key_policy(KeyId=first, PolicyName="default")["Policy"]
    assert isinstance(policy, str) and '"aa"' in policy
    body = json.dumps({"Resources": key("bb"), "Outputs": {"K": {"Value": {"Ref": "Key"}}}})
    stack = _deploy(cfn, "S6", body, "UPDATE")
    assert stack["StackStatus"] == "UPDATE_COMPLETE"
    assert stack["Outputs"][0]["OutputValue"] == first
    assert '"bb"' in kms.get_key_policy(KeyId=first, PolicyName="default")["Policy"]


def test_association_key_policy_and_object(aws: dict) -> None:
    acm, iam, ec2, s3 = aws["acm"], aws["iam"], aws["ec2"], aws["s3"]
    cert = acm.request_certificate(DomainName="a.example.test")["CertificateArn"]
    role = iam.create_role(RoleName="r", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    assoc = ec2.associate_enclave_certificate_iam_role(CertificateArn=cert, RoleArn=role)
    backend = kms_backends[certificates.SERVICE_ACCOUNT]["us-east-1"]
    policy = json.loads(backend.get_key_policy(assoc["EncryptionKmsKeyId"]))
    # released to the associated role from ACM's enclave image only (never a host's own image)
    # (other tests of this process may have associated roles of their own in the region)
    [release] = [
        s
        for s in policy["Statement"]
        if s["Action"] == "kms:Decrypt" and s["Principal"] == {"AWS": role}
    ]
    assert release["Condition"] == {
        "StringEqualsIgnoreCase": {
            "kms:RecipientAttestation:ImageSha384": p11ne_measurements().image_sha384
        }
    }
    assert not p11ne_measurements().is_debug
    # the customer account has no such key: it lives in the service account
    with pytest.raises(ClientError):
        aws["kms"].describe_key(KeyId=assoc["EncryptionKmsKeyId"])
    obj = json.loads(
        s3.get_object(Bucket=assoc["CertificateS3BucketName"], Key=assoc["CertificateS3ObjectKey"])[
            "Body"
        ].read()
    )
    blob = base64.b64decode(obj["encryptedPrivateKey"])
    plain, key_id = backend.decrypt(blob, {})
    assert key_id.endswith(f":{certificates.SERVICE_ACCOUNT}:key/{assoc['EncryptionKmsKeyId']}")
    assert plain.startswith(b"-----BEGIN PRIVATE KEY-----")
    acm_key = acm.get_certificate(CertificateArn=cert)  # the object holds this cert's key
    assert obj["certificate"].strip() == acm_key["Certificate"].strip()
    with pytest.raises(ClientError, match="InvalidParameterValue"):
        ec2.associate_enclave_certificate_iam_role(CertificateArn="arn:nope", RoleArn=role)
    ec2.disassociate_enclave_certificate_iam_role(CertificateArn=cert, RoleArn=role)
    policy = json.loads(backend.get_key_policy(assoc["EncryptionKmsKeyId"]))
    assert [s for s in policy["Statement"] if s["Principal"] == {"AWS": role}] == []


def test_instance_change_replaces_it_and_moves_the_hooks(aws: dict) -> None:
    cfn, ec2, events = aws["cloudformation"], aws["ec2"], aws["events"]
    _deploy(cfn, "S7", _template())
    body = json.loads(_template())
    body["Resources"]["Host"]["Metadata"]["enclavekit:host"]["version"] = 2
    stack = _deploy(cfn, "S7", json.dumps(body), "UPDATE")
    assert stack["StackStatus"] == "UPDATE_COMPLETE"
    old, new = events[0][1].instance_id, events[-1][1].instance_id
    assert [k for k, _ in events] == ["start", "stop", "start"] and old != new
    assert events[-1][1].metadata["enclavekit:host"]["version"] == 2
    assert {o["OutputValue"] for o in stack["Outputs"]} == {new}
    state = ec2.describe_instances(InstanceIds=[old])["Reservations"][0]["Instances"][0]["State"]
    assert state["Name"] == "terminated"
