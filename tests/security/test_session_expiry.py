"""An expired STS session must not authenticate (AWS: ExpiredTokenException).

Before: `identity.lookup` matched the access key and the session token but never looked at the
session's expiration, so credentials taken from IMDS once (or copied off the parent) worked
forever; AWS refuses them once they expire, which is what bounds a leaked parent credential.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from local_backend.moto_ext.identity import AuthFailure, lookup

KW = {
    "region_name": "us-east-1",
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
}
TRUST = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}'  # noqa: E501


@pytest.fixture()
def session(tmp_path: Path) -> Iterator[tuple[str, str]]:
    with mock_aws():
        arn = boto3.client("iam", **KW).create_role(
            RoleName="host", AssumeRolePolicyDocument=TRUST
        )["Role"]["Arn"]
        creds = boto3.client("sts", **KW).assume_role(
            RoleArn=arn, RoleSessionName="i-0123456789abcdef0", DurationSeconds=900
        )["Credentials"]
        yield creds["AccessKeyId"], creds["SessionToken"]


def _expire(access_key_id: str) -> None:
    from moto.sts.models import sts_backends

    for parts in sts_backends.values():
        found = parts["aws"].get_assumed_role_from_access_key(access_key_id)
        if found is not None:
            found.expiration = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(
                seconds=1
            )
            return
    raise AssertionError("the session is not in moto's STS backend")


def test_an_expired_session_is_refused(session: tuple[str, str]) -> None:
    akid, token = session
    caller, _ = lookup(akid, token)  # fresh: the role
    assert caller.kind == "role"
    _expire(akid)
    with pytest.raises(AuthFailure) as info:
        lookup(akid, token)
    assert info.value.code == "ExpiredTokenException"
    assert info.value.message == "The security token included in the request is expired"
