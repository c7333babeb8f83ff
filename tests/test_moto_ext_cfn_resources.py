"""Our CloudFormation resource models on the shared CfnResource mixin (in-process, mock_aws):
S3 bucket policy, Secrets Manager secret, ACM certificate — create, update, delete."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from local_backend import moto_ext
from local_backend.moto_ext.cloudformation.models import supported_types

KW = {
    "region_name": "us-east-1",
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
}


@pytest.fixture()
def aws(tmp_path: Path) -> Iterator[dict[str, object]]:
    moto_ext.install(tmp_path)
    with mock_aws():
        yield {n: boto3.client(n, **KW) for n in ("cloudformation", "acm", "s3", "secretsmanager")}


def _template(domain: str, secret: str, principal: str) -> str:
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": principal},
                "Action": "s3:GetObject",
                "Resource": "arn:aws:s3:::ek-cfn-bucket/*",
            }
        ],
    }
    return json.dumps(
        {
            "Resources": {
                "Bucket": {
                    "Type": "AWS::S3::Bucket",
                    "Properties": {"BucketName": "ek-cfn-bucket"},
                },
                "Policy": {
                    "Type": "AWS::S3::BucketPolicy",
                    "Properties": {"Bucket": {"Ref": "Bucket"}, "PolicyDocument": policy},
                },
                "Secret": {
                    "Type": "AWS::SecretsManager::Secret",
                    "Properties": {"Name": "ek-cfn-secret", "SecretString": secret},
                },
                "Cert": {
                    "Type": "AWS::CertificateManager::Certificate",
                    "Properties": {"DomainName": domain},
                },
            },
            "Outputs": {
                "SecretRef": {"Value": {"Ref": "Secret"}},
                "SecretId": {"Value": {"Fn::GetAtt": ["Secret", "Id"]}},
                "Cert": {"Value": {"Ref": "Cert"}},
                "Policy": {"Value": {"Ref": "Policy"}},
            },
        }
    )


def _deploy(cfn, name: str, body: str, kind: str) -> None:
    """As the cdk CLI deploys: a change set, then execute it."""
    cfn.create_change_set(StackName=name, ChangeSetName="cs", TemplateBody=body, ChangeSetType=kind)
    cfn.execute_change_set(StackName=name, ChangeSetName="cs")


def _outputs(cfn, name: str) -> dict[str, str]:
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def test_registered_with_moto(aws: dict) -> None:
    assert {
        "AWS::S3::BucketPolicy",
        "AWS::SecretsManager::Secret",
        "AWS::CertificateManager::Certificate",
    } <= supported_types()


def test_create_update_delete(aws: dict) -> None:
    cfn, acm, s3, sm = aws["cloudformation"], aws["acm"], aws["s3"], aws["secretsmanager"]
    root = "arn:aws:iam::123456789012:root"
    _deploy(cfn, "s", _template("a.example.com", "one", root), "CREATE")
    out = _outputs(cfn, "s")
    assert out["SecretRef"] == out["SecretId"] and out["SecretRef"].startswith("arn:aws:")
    assert sm.get_secret_value(SecretId="ek-cfn-secret")["SecretString"] == "one"
    assert out["Policy"] == "ek-cfn-bucket"
    assert root in s3.get_bucket_policy(Bucket="ek-cfn-bucket")["Policy"]
    first = out["Cert"]
    assert acm.describe_certificate(CertificateArn=first)["Certificate"]["DomainName"] == (
        "a.example.com"
    )

    other = "arn:aws:iam::210987654321:root"
    _deploy(cfn, "s", _template("b.example.com", "two", other), "UPDATE")
    out = _outputs(cfn, "s")
    assert sm.get_secret_value(SecretId="ek-cfn-secret")["SecretString"] == "two"
    assert out["SecretRef"] == out["SecretId"]  # in place: same ARN
    assert other in s3.get_bucket_policy(Bucket="ek-cfn-bucket")["Policy"]
    assert out["Cert"] != first  # replaced: the new one first, the old one gone
    with pytest.raises(ClientError):
        acm.describe_certificate(CertificateArn=first)

    cfn.delete_stack(StackName="s")
    with pytest.raises(ClientError):
        acm.describe_certificate(CertificateArn=out["Cert"])
