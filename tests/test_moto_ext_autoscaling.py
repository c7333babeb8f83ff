"""The Auto Scaling extension in-process (moto's mock_aws): enclave fleets from a launch
template call the emulator hooks with the template's resolved Metadata and profile role, on
create, scaling, in-place stack updates, replacement and delete (budget ~5 s)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from local_backend import moto_ext
from local_backend.moto_ext.ec2 import EnclaveInstance, hooks, on_instance_start, on_instance_stop

KW = {
    "region_name": "us-east-1",
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
}


@pytest.fixture()
def aws(tmp_path: Path) -> Iterator[dict[str, object]]:
    moto_ext.install(tmp_path)
    events: list[tuple[str, EnclaveInstance, str]] = []
    fail: list[bool] = []

    def start(info: EnclaveInstance) -> None:
        if fail:
            raise RuntimeError("enclave boot failed (test)")
        status = (
            boto3.client("cloudformation", **KW).describe_stacks(StackName=info.stack_name)[
                "Stacks"
            ][0]["StackStatus"]
            if info.stack_name
            else ""
        )
        events.append(("start", info, status))

    on_instance_start(start)
    on_instance_stop(lambda i: events.append(("stop", i, "")))
    with mock_aws():
        clients = {
            n: boto3.client(n, **KW) for n in ("ec2", "cloudformation", "autoscaling", "iam")
        }
        yield {**clients, "events": events, "fail": fail}
    hooks.clear_hooks()
    hooks.stop_all_enclave_instances()


def _template(*, size: int = 2, tag: str = "v1", enclave: bool = True) -> str:
    res = {
        "Vpc": {"Type": "AWS::EC2::VPC", "Properties": {"CidrBlock": "10.2.0.0/16"}},
        "Subnet": {
            "Type": "AWS::EC2::Subnet",
            "Properties": {
                "VpcId": {"Ref": "Vpc"},
                "CidrBlock": "10.2.0.0/24",
                "AvailabilityZone": "us-east-1a",
            },
        },
        "Role": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Action": "sts:AssumeRole",
                            "Principal": {"Service": "ec2.amazonaws.com"},
                        }
                    ],
                }
            },
        },
        "Profile": {
            "Type": "AWS::IAM::InstanceProfile",
            "Properties": {"Roles": [{"Ref": "Role"}]},
        },
        "Template": {
            "Type": "AWS::EC2::LaunchTemplate",
            "Metadata": {
                "enclavekit:host": {"version": 1, "tag": tag, "role": "Role", "vpc": {"Ref": "Vpc"}}
            },
            "Properties": {
                "LaunchTemplateData": {
                    "ImageId": "ami-12c6146b",
                    "InstanceType": "m5a.xlarge",
                    "EnclaveOptions": {"Enabled": enclave},
                    "MetadataOptions": {"HttpTokens": "required"},
                    "IamInstanceProfile": {"Arn": {"Fn::GetAtt": ["Profile", "Arn"]}},
                    "TagSpecifications": [
                        {"ResourceType": "instance", "Tags": [{"Key": "build", "Value": tag}]}
                    ],
                }
            },
        },
        "Fleet": {
            "Type": "AWS::AutoScaling::AutoScalingGroup",
            "Properties": {
                "LaunchTemplate": {
                    "LaunchTemplateId": {"Ref": "Template"},
                    "Version": {"Fn::GetAtt": ["Template", "LatestVersionNumber"]},
                },
                "MinSize": str(size),
                "MaxSize": str(size),
                "VPCZoneIdentifier": [{"Ref": "Subnet"}],
            },
        },
    }
    return json.dumps(
        {
            "Resources": res,
            "Outputs": {
                "Group": {"Value": {"Ref": "Fleet"}},
                "RoleArn": {"Value": {"Fn::GetAtt": ["Role", "Arn"]}},
                "Vpc": {"Value": {"Ref": "Vpc"}},
            },
        }
    )


def _deploy(cfn, body: str, kind: str = "CREATE") -> dict[str, str]:
    cfn.create_change_set(
        StackName="Fleet",
        ChangeSetName="cdk-deploy-change-set",
        TemplateBody=body,
        ChangeSetType=kind,
    )
    cfn.execute_change_set(StackName="Fleet", ChangeSetName="cdk-deploy-change-set")
    stack = cfn.describe_stacks(StackName="Fleet")["Stacks"][0]
    assert stack["StackStatus"] == f"{kind}_COMPLETE", stack
    return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}


def _in_service(aws: dict, group: str) -> list[str]:
    g = aws["autoscaling"].describe_auto_scaling_groups(AutoScalingGroupNames=[group])[
        "AutoScalingGroups"
    ][0]
    return sorted(i["InstanceId"] for i in g["Instances"] if i["LifecycleState"] == "InService")


def _ids(events: list, kind: str) -> list[str]:
    return sorted(i.instance_id for k, i, _ in events if k == kind)


def test_create_starts_each_instance_after_the_stack_applied(aws: dict) -> None:
    out = _deploy(aws["cloudformation"], _template())
    ids = _in_service(aws, out["Group"])
    events = aws["events"]
    assert len(ids) == 2 and _ids(events, "start") == ids
    for _, info, status in events:
        assert status == "CREATE_IN_PROGRESS"  # after apply, before the stack completes
        assert info.logical_id == "Template" and info.stack_name == "Fleet"
        assert info.metadata == {
            "enclavekit:host": {"version": 1, "tag": "v1", "role": "Role", "vpc": out["Vpc"]}
        }
        assert info.role_arns == (out["RoleArn"],)
        assert info.instance_profile_arn and info.instance_type == "m5a.xlarge"
    for iid in ids:
        inst = aws["ec2"].describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
        assert inst["MetadataOptions"]["HttpTokens"] == "required"
        assert inst["IamInstanceProfile"]["Arn"] == events[0][1].instance_profile_arn
        attr = aws["ec2"].describe_instance_attribute(InstanceId=iid, Attribute="enclaveOptions")
        assert attr["EnclaveOptions"] == {"Enabled": True}


def test_scaling_update_replacement_and_delete_move_the_hooks(aws: dict) -> None:
    cfn, asg, ec2, events = aws["cloudformation"], aws["autoscaling"], aws["ec2"], aws["events"]
    group = _deploy(cfn, _template())["Group"]
    first = _in_service(aws, group)
    # API scale-out: started at once, from the recorded Metadata
    asg.update_auto_scaling_group(AutoScalingGroupName=group, MaxSize=3, DesiredCapacity=3)
    third = sorted(set(_in_service(aws, group)) - set(first))
    assert len(third) == 1 and _ids(events, "start") == sorted(first + third)
    assert events[-1][1].metadata["enclavekit:host"]["tag"] == "v1"
    # an in-place stack update to 1 instance keeps the group and one of its instances
    events.clear()
    _deploy(cfn, _template(size=1, tag="v2"), kind="UPDATE")
    kept = _in_service(aws, group)
    assert len(kept) == 1 and kept[0] in first + third
    assert _ids(events, "start") == [] and len(_ids(events, "stop")) == 2
    # a terminated instance is replaced from the template's new version and new Metadata
    events.clear()
    ec2.terminate_instances(InstanceIds=kept)
    (new,) = _in_service(aws, group)
    assert _ids(events, "stop") == kept and _ids(events, "start") == [new]
    assert events[-1][1].metadata["enclavekit:host"]["tag"] == "v2"
    tags = {
        t["Key"]: t["Value"]
        for t in ec2.describe_instances(InstanceIds=[new])["Reservations"][0]["Instances"][0][
            "Tags"
        ]
    }
    assert tags["aws:ec2launchtemplate:version"] == "2" and tags["build"] == "v2"
    # stack delete stops the rest
    events.clear()
    cfn.delete_stack(StackName="Fleet")
    assert _ids(events, "stop") == [new] and hooks.started_instances() == {}


def test_a_failing_boot_on_scale_out_drops_that_instance(aws: dict) -> None:
    group = _deploy(aws["cloudformation"], _template(size=1))["Group"]
    (first,) = _in_service(aws, group)
    aws["fail"].append(True)
    with pytest.raises(ClientError):
        aws["autoscaling"].set_desired_capacity(AutoScalingGroupName=group, DesiredCapacity=2)
    assert _in_service(aws, group) == [first]
    assert list(hooks.started_instances()) == [first]


def test_a_fleet_without_enclaves_boots_nothing(aws: dict) -> None:
    group = _deploy(aws["cloudformation"], _template(enclave=False))["Group"]
    assert len(_in_service(aws, group)) == 2 and aws["events"] == []
