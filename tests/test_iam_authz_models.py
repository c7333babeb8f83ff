"""AWS's evaluation logic of the IAM layer, on parsed policies (no endpoint)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from enclavekit.policy import parse_policy
from local_backend.moto_ext.iam_authz.models import ResourcePolicy, decide, request_keys
from local_backend.moto_ext.identity import Caller

ME = "111111111111"
OTHER = "222222222222"
USER = Caller("AKIA1", ME, f"arn:aws:iam::{ME}:user/u", f"arn:aws:iam::{ME}:user/u", "user", "u")
ROOT = Caller("AKIA2", ME, f"arn:aws:iam::{ME}:root", f"arn:aws:iam::{ME}:root", "root")
EC2 = Caller("K", ME, "ec2.amazonaws.com", "ec2.amazonaws.com", "service")
OBJ = "arn:aws:s3:::b/k"


def _pol(*statements: dict[str, Any]) -> Any:
    return parse_policy(json.dumps({"Version": "2012-10-17", "Statement": list(statements)}))


def _allow(principal: Any = None, **extra: Any) -> dict[str, Any]:
    st: dict[str, Any] = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": OBJ, **extra}
    if principal is not None:
        st["Principal"] = principal
    return st


def _decide(caller: Caller, identity: list[Any], res: ResourcePolicy, **keys: Any) -> Any:
    return decide(
        caller, "s3:GetObject", OBJ, request_keys(caller, "us-east-1", keys), identity, res
    )


IDENTITY = [_pol(_allow())]
NAMES_USER = _pol(_allow({"AWS": USER.principal}))
NAMES_ACCOUNT = _pol(_allow({"AWS": ME}))


@pytest.mark.parametrize(
    ("identity", "res", "allowed", "reason"),
    [
        ([], ResourcePolicy(None, ME), False, "because no identity-based policy allows"),
        (IDENTITY, ResourcePolicy(None, ME), True, "allowed"),
        ([], ResourcePolicy(NAMES_USER, ME), True, "allowed"),  # same account: policy alone
        ([], ResourcePolicy(NAMES_ACCOUNT, ME), False, "no identity-based policy"),  # delegates
        (IDENTITY, ResourcePolicy(NAMES_ACCOUNT, ME), True, "allowed"),
        # another account's resource: both halves needed
        (IDENTITY, ResourcePolicy(None, OTHER), False, "no resource-based policy allows"),
        ([], ResourcePolicy(NAMES_USER, OTHER), False, "no identity-based policy allows"),
        (IDENTITY, ResourcePolicy(NAMES_USER, OTHER), True, "resource-based and an identity"),
        (IDENTITY, ResourcePolicy(NAMES_ACCOUNT, OTHER), True, "resource-based and an identity"),
        # a trust policy is the only gate: identity alone never assumes a role
        (IDENTITY, ResourcePolicy(None, ME, required=True), False, "no resource-based policy"),
    ],
)
def test_same_and_cross_account(
    identity: list[Any], res: ResourcePolicy, allowed: bool, reason: str
) -> None:
    d = _decide(USER, identity, res)
    assert (d.allowed, reason in d.reason) == (allowed, True), d


def test_explicit_deny_in_either_policy_wins_also_for_the_root() -> None:
    deny = {"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": OBJ}
    d = _decide(ROOT, [], ResourcePolicy(_pol(deny), ME))
    assert not d.allowed and d.reason == "with an explicit deny in a resource-based policy"
    own_deny = {k: v for k, v in deny.items() if k != "Principal"}
    d = _decide(USER, [_pol(_allow(), own_deny)], ResourcePolicy(None, ME))
    assert not d.allowed and d.reason == "with an explicit deny in an identity-based policy"
    assert _decide(ROOT, [], ResourcePolicy(None, ME)).allowed


def test_service_principal_needs_the_resource_policy() -> None:
    trust = _pol(_allow({"Service": "ec2.amazonaws.com"}))
    assert _decide(EC2, [], ResourcePolicy(trust, ME, required=True)).allowed
    other = _pol(_allow({"Service": "lambda.amazonaws.com"}))
    assert not _decide(EC2, [], ResourcePolicy(other, ME, required=True)).allowed


def test_condition_keys_absent_locally_are_false_and_secure_transport_true() -> None:
    vpce = [_pol(_allow(Condition={"StringEquals": {"aws:SourceVpce": "vpce-1"}}))]
    assert not _decide(USER, vpce, ResourcePolicy(None, ME)).allowed
    tls = {"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": OBJ,
           "Condition": {"Bool": {"aws:SecureTransport": "false"}}}  # fmt: skip
    assert _decide(USER, IDENTITY, ResourcePolicy(_pol(tls), ME)).allowed
    arn = [_pol(_allow(Condition={"ArnEquals": {"aws:PrincipalArn": USER.principal}}))]
    assert _decide(USER, arn, ResourcePolicy(None, ME)).allowed
