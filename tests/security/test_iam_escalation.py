"""Attacks through IAM and STS on the deployed sample's PCR-bound secret.

The attested key's policy lets the account root administer the key, which on AWS means: any
principal of the account whose *identity* policy allows `kms:PutKeyPolicy`. Before this test
IAM and STS authorized nothing, so the host role (the credentials every parent-side process
gets from IMDS) ran `iam:PutRolePolicy` on itself with `Action: *`, then `kms:PutKeyPolicy`,
then `kms:Decrypt`: the secret, with no attestation document. It could equally become any role
(`sts:AssumeRole` ignored trust policies), e.g. CloudFormation's execution role. AWS answers
`AccessDenied` to each of these steps.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError
from conftest import SECRET, Target

from enclavekit.localenv import LOCAL_ACCESS_KEY_ID

pytestmark = pytest.mark.slow
EVERYTHING = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}


def _denied(call: Callable[[], Any], code: str = "AccessDenied") -> str:
    with pytest.raises(ClientError) as info:
        call()
    assert info.value.response["Error"]["Code"] == code, info.value.response["Error"]
    return str(info.value.response["Error"]["Message"])


def _role(target: Target, fragment: str) -> str:
    roles = target.endpoint.client("iam").list_roles()["Roles"]
    return next(r["Arn"] for r in roles if fragment in r["RoleName"])


def test_host_role_cannot_grant_itself_permissions(target: Target) -> None:
    """Step 1 of the chain: IAM refuses the host role every change to IAM."""
    iam = target.endpoint.client("iam", **target.role_creds("escalate"))
    name = target.role_arn.rsplit("/", 1)[-1]
    try:
        message = _denied(
            lambda: iam.put_role_policy(
                RoleName=name, PolicyName="pwn", PolicyDocument=json.dumps(EVERYTHING)
            )
        )
        assert "iam:PutRolePolicy" in message and target.role_arn in message
        _denied(
            lambda: iam.attach_role_policy(
                RoleName=name, PolicyArn="arn:aws:iam::aws:policy/AdministratorAccess"
            )
        )
        _denied(
            lambda: iam.update_assume_role_policy(
                RoleName=name, PolicyDocument=json.dumps(EVERYTHING)
            )
        )
        _denied(lambda: iam.create_user(UserName="escalated"))
        # and therefore the key stays out of reach: no policy rewrite, no plaintext
        kms = target.endpoint.client("kms", **target.role_creds("escalate"))
        policy = json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"AWS": target.role_arn},
                        "Action": "kms:*",
                        "Resource": "*",
                    }
                ],
            }
        )
        _denied(
            lambda: kms.put_key_policy(KeyId=target.key_arn, PolicyName="default", Policy=policy),
            "AccessDeniedException",
        )
        _denied(lambda: kms.decrypt(CiphertextBlob=target.secret_blob), "AccessDeniedException")
    finally:  # before the fix the role kept `*`: take it back so other tests are not spoiled
        root = target.endpoint.client("iam")
        if "pwn" in root.list_role_policies(RoleName=name)["PolicyNames"]:
            root.delete_role_policy(RoleName=name, PolicyName="pwn")
    # the host role's own read of itself (what the parent agent does) still works
    assert iam.get_role(RoleName=name)["Role"]["Arn"] == target.role_arn


def test_roles_are_assumed_only_as_their_trust_policies_say(target: Target) -> None:
    """The host role, or a user without a policy, cannot become another role."""
    exec_role = _role(target, "cfn-exec-role")  # trusts cloudformation.amazonaws.com only
    deploy_role = _role(target, "deploy-role")  # trusts the account (identity policies decide)
    host = target.endpoint.client("sts", **target.role_creds("hop"))
    for role in (exec_role, deploy_role, target.role_arn):
        message = _denied(lambda r=role: host.assume_role(RoleArn=r, RoleSessionName="hop"))
        assert "sts:AssumeRole" in message
    nobody = target.endpoint.client("sts", **target.user_creds("no-sts-policy"))
    for role in (exec_role, deploy_role):
        _denied(lambda r=role: nobody.assume_role(RoleArn=r, RoleSessionName="hop"))
    # the same user with sts:AssumeRole on the deploy role: the trust policy delegates, allowed
    allowed = target.endpoint.client(
        "sts",
        **target.user_creds(
            "deployer",
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": deploy_role}
                ],
            },
        ),
    )
    got = allowed.assume_role(RoleArn=deploy_role, RoleSessionName="deploy")
    assert got["AssumedRoleUser"]["Arn"].endswith("/deploy")
    _denied(lambda: allowed.assume_role(RoleArn=exec_role, RoleSessionName="hop"))
    # federation cannot be verified locally: refused, never a free role session (boto3 sends
    # this call unsigned; the endpoint refuses unsigned STS calls)
    with pytest.raises(ClientError) as info:
        nobody.assume_role_with_web_identity(
            RoleArn=target.role_arn, RoleSessionName="web", WebIdentityToken="x" * 20
        )
    assert info.value.response["Error"]["Code"] in (
        "AccessDenied",
        "MissingAuthenticationToken",
        "InvalidIdentityToken",
    ), info.value.response["Error"]


def test_iam_checks_the_signature(target: Target) -> None:
    """A request signed with a wrong secret for the root key: AWS refuses it."""
    forged = target.endpoint.client(
        "iam", aws_access_key_id=LOCAL_ACCESS_KEY_ID, aws_secret_access_key="not-the-secret"
    )
    _denied(lambda: forged.create_user(UserName="forged"), "SignatureDoesNotMatch")
    sts = target.endpoint.client(
        "sts", aws_access_key_id="AKIAUNKNOWN000000000", aws_secret_access_key="x"
    )
    _denied(
        lambda: sts.assume_role(RoleArn=target.role_arn, RoleSessionName="x1"),
        "InvalidClientTokenId",
    )
    assert SECRET  # nothing above returned the secret or credentials
