"""Evaluation semantics: conditions, matching, explicit deny, and the KMS key/identity rule."""

from __future__ import annotations

import pytest

from enclavekit.policy import (
    Condition,
    RequestContext,
    action_matches,
    condition_matches,
    evaluate,
    evaluate_kms,
    parse_policy,
    resource_matches,
)

ACCT = "111122223333"
ROOT = f"arn:aws:iam::{ACCT}:root"
ROLE = f"arn:aws:iam::{ACCT}:role/data-processing"
KEY = f"arn:aws:kms:us-east-1:{ACCT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
PCR0 = "ab" * 48
OTHER = "cd" * 48
ACTIONS = [
    "kms:Decrypt",
    "kms:DeriveSharedSecret",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyPair",
    "kms:GenerateRandom",
]


def ctx(principal: str = ROLE, action: str = "kms:Decrypt", **keys: object) -> RequestContext:
    return RequestContext(
        principal=principal,
        account=ACCT,
        action=action,
        resource=KEY,
        keys={k.replace("__", ":"): v for k, v in keys.items()},
    )


def cond(
    op: str, key: str, *values: str, if_exists: bool = False, qualifier: str | None = None
) -> Condition:
    return Condition(op, key, values, if_exists, qualifier)


# ----------------------------------------------------------------------------- conditions
@pytest.mark.parametrize(
    ("c", "keys", "expected"),
    [
        (cond("StringEquals", "k", "a", "b"), {"k": "b"}, True),  # values ORed
        (cond("StringEquals", "k", "a"), {"k": "A"}, False),
        (cond("StringEquals", "K", "a"), {"k": "a"}, True),  # key names case-insensitive
        (cond("StringEquals", "k", "a"), {}, False),  # positive + missing -> false
        (cond("StringNotEquals", "k", "a"), {}, True),  # negated + missing -> true
        (cond("StringNotEquals", "k", "a", "b"), {"k": "b"}, False),
        (cond("StringNotEquals", "k", "a", "b"), {"k": "c"}, True),
        (cond("StringEqualsIgnoreCase", "k", PCR0.upper()), {"k": PCR0}, True),
        (cond("StringNotEqualsIgnoreCase", "k", PCR0.upper()), {"k": PCR0}, False),
        (cond("StringNotEqualsIgnoreCase", "k", PCR0), {}, True),
        (cond("StringLike", "k", "ab*c?"), {"k": "abxxcz"}, True),
        (cond("StringLike", "k", "ab*c?"), {"k": "abxxc"}, False),
        (cond("StringLike", "k", "a.b"), {"k": "axb"}, False),  # regex chars are literal
        (cond("StringNotLike", "k", "ab*"), {"k": "xyz"}, True),
        (cond("StringEquals", "k", "a", if_exists=True), {}, True),
        (cond("StringEquals", "k", "a", if_exists=True), {"k": "b"}, False),
        (cond("NumericLessThan", "k", "10"), {"k": "9.5"}, True),
        (cond("NumericGreaterThanEquals", "k", "10"), {"k": "10"}, True),
        (cond("NumericEquals", "k", "10"), {"k": "ten"}, False),
        (cond("NumericNotEquals", "k", "10"), {"k": 11}, True),
        (cond("DateLessThan", "k", "2030-01-01T00:00:00Z"), {"k": "2029-12-31T23:59:59Z"}, True),
        (cond("DateGreaterThan", "k", "2030-01-01T00:00:00Z"), {"k": "1893456001"}, True),
        (cond("DateEquals", "k", "2020-01-01T00:00:00Z"), {"k": "2020-01-01T00:00:00+00:00"}, True),
        (cond("Bool", "k", "true"), {"k": True}, True),
        (cond("Bool", "k", "true"), {"k": "false"}, False),
        (cond("Null", "k", "true"), {}, True),
        (cond("Null", "k", "true"), {"k": "x"}, False),
        (cond("Null", "k", "false"), {"k": "x"}, True),
        (cond("ArnLike", "k", "arn:aws:iam::*:role/data-*"), {"k": ROLE}, True),
        (cond("ArnEquals", "k", "arn:aws:iam::*:role/x"), {"k": ROLE}, False),
        (cond("ArnNotLike", "k", "arn:aws:iam::*:role/x"), {"k": ROLE}, True),
        (cond("ArnLike", "k", "arn:aws:iam::*:role/*"), {"k": "not-an-arn"}, False),
        (cond("IpAddress", "k", "10.0.0.0/8"), {"k": "10.1.2.3"}, True),
        (cond("NotIpAddress", "k", "10.0.0.0/8"), {"k": "10.1.2.3"}, False),
        # set operators
        (cond("StringEquals", "t", "a", "b", qualifier="ForAllValues"), {"t": ["a", "b"]}, True),
        (cond("StringEquals", "t", "a", qualifier="ForAllValues"), {"t": ["a", "c"]}, False),
        (cond("StringEquals", "t", "a", qualifier="ForAllValues"), {}, True),  # missing -> true
        (cond("StringEquals", "t", "a", qualifier="ForAllValues"), {"t": []}, True),
        (cond("StringEquals", "t", "a", qualifier="ForAnyValue"), {"t": ["c", "a"]}, True),
        (cond("StringEquals", "t", "a", qualifier="ForAnyValue"), {"t": ["c"]}, False),
        (cond("StringEquals", "t", "a", qualifier="ForAnyValue"), {}, False),  # missing -> false
        (cond("StringNotEquals", "t", "a", qualifier="ForAnyValue"), {}, False),
        (cond("StringNotEquals", "t", "a", qualifier="ForAnyValue"), {"t": ["a", "b"]}, True),
        (cond("StringNotEquals", "t", "a", qualifier="ForAllValues"), {"t": ["a", "b"]}, False),
        (cond("StringNotEquals", "t", "a", qualifier="ForAllValues"), {"t": ["b", "c"]}, True),
        # multi-valued request key without qualifier: any value / no value
        (cond("StringEquals", "t", "a"), {"t": ["b", "a"]}, True),
        (cond("StringNotEquals", "t", "a"), {"t": ["b", "a"]}, False),
    ],
)
def test_condition_operators(c: Condition, keys: dict, expected: bool) -> None:
    assert condition_matches(c, RequestContext("p", ACCT, "a:b", "r", keys).keys) is expected


def test_keys_and_operators_are_anded() -> None:
    pol = parse_policy(
        {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "kms:*",
                    "Resource": "*",
                    "Condition": {"StringEquals": {"a": "1", "b": "2"}, "StringLike": {"c": "x*"}},
                }
            ]
        }
    )
    assert evaluate(ctx(a="1", b="2", c="xy"), [pol]).allowed
    assert not evaluate(ctx(a="1", b="2", c="y"), [pol]).allowed
    assert not evaluate(ctx(a="1", c="xy"), [pol]).allowed


# ----------------------------------------------------------------------------- matching
@pytest.mark.parametrize(
    ("pattern", "action", "expected"),
    [
        ("kms:Decrypt", "kms:Decrypt", True),
        ("KMS:decrypt", "kms:Decrypt", True),
        ("kms:Gen*", "kms:GenerateDataKeyPair", True),
        ("kms:*", "kms:Decrypt", True),
        ("*", "s3:GetObject", True),
        ("kms:Encrypt", "kms:Decrypt", False),
        ("kms:Decrypt?", "kms:Decrypt", False),
        ("kms:ReEncrypt*", "kms:ReEncryptFrom", True),
        ("s3:*", "kms:Decrypt", False),
    ],
)
def test_action_matching(pattern: str, action: str, expected: bool) -> None:
    assert action_matches(pattern, action) is expected


def test_resource_matching() -> None:
    assert resource_matches("*", KEY)
    assert resource_matches("arn:aws:kms:*:111122223333:key/*", KEY)
    assert not resource_matches("arn:aws:kms:*:999999999999:key/*", KEY)
    assert not resource_matches(KEY.upper(), KEY)  # ARNs are case-sensitive


def test_not_action_not_resource_not_principal() -> None:
    pol = parse_policy(
        {
            "Statement": [
                {
                    "Effect": "Deny",
                    "NotPrincipal": {"AWS": ROOT},
                    "NotAction": "kms:Describe*",
                    "NotResource": "arn:aws:kms:*:*:alias/*",
                }
            ]
        }
    )
    assert not evaluate(ctx(action="kms:Decrypt"), [pol]).allowed
    assert evaluate(ctx(action="kms:Decrypt"), [pol]).statements == ("#0",)
    assert evaluate(ctx(action="kms:DescribeKey"), [pol]).statements == ()
    assert evaluate(ctx(principal=ROOT), [pol]).statements == ()


def test_generic_evaluate_default_deny_and_explicit_deny_wins() -> None:
    allow = parse_policy(
        {"Statement": [{"Sid": "A", "Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}
    )
    deny = parse_policy(
        {"Statement": [{"Sid": "D", "Effect": "Deny", "Action": "kms:Decrypt", "Resource": "*"}]}
    )
    assert evaluate(ctx(), [allow]).allowed
    d = evaluate(ctx(), [allow, deny])
    assert (d.allowed, d.statements) == (False, ("D",))
    d = evaluate(ctx(), [])
    assert not d.allowed and "no policy allows the kms:Decrypt action" in d.reason


def test_assumed_role_session_matches_its_role() -> None:
    pol = parse_policy(
        {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": ROLE},
                    "Action": "kms:Decrypt",
                    "Resource": "*",
                }
            ]
        }
    )
    session = f"arn:aws:sts::{ACCT}:assumed-role/data-processing/i-0abc"
    assert evaluate(ctx(principal=session), [pol]).allowed
    other = f"arn:aws:sts::{ACCT}:assumed-role/other/i-0abc"
    assert not evaluate(ctx(principal=other), [pol]).allowed


# ----------------------------------------------------------------------------- KMS rule
ADMIN = {
    "Sid": "Enable IAM User Permissions",
    "Effect": "Allow",
    "Principal": {"AWS": ROOT},
    "Action": "kms:*",
    "Resource": "*",
}
# The example of the KMS Developer Guide, "Condition keys for AWS Nitro Enclaves".
ENCLAVE_ALLOW = {
    "Sid": "Enable enclave data processing",
    "Effect": "Allow",
    "Principal": {"AWS": ROLE},
    "Action": ACTIONS,
    "Resource": "*",
    "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": PCR0}},
}
PCR_ALLOW = {
    "Sid": "PCRs",
    "Effect": "Allow",
    "Principal": {"AWS": ROLE},
    "Action": "kms:Decrypt",
    "Resource": "*",
    "Condition": {
        "StringEqualsIgnoreCase": {
            "kms:RecipientAttestation:PCR0": PCR0,
            "kms:RecipientAttestation:PCR1": PCR0,
            "kms:RecipientAttestation:PCR2": PCR0,
        }
    },
}
DENY_UNATTESTED = {
    "Sid": "Deny unattested",
    "Effect": "Deny",
    "Principal": {"AWS": ROLE},
    "Action": ACTIONS,
    "Resource": "*",
    "Condition": {"StringNotEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": PCR0}},
}


def key_policy(*stmts: dict) -> object:
    return parse_policy({"Version": "2012-10-17", "Statement": list(stmts)})


ID_DECRYPT = parse_policy(
    {"Statement": [{"Effect": "Allow", "Action": "kms:Decrypt", "Resource": KEY}]}
)


def test_docs_example_image_sha384() -> None:
    kp = key_policy(ADMIN, ENCLAVE_ALLOW)
    attested = ctx(**{"kms__RecipientAttestation__ImageSha384": PCR0})
    assert evaluate_kms(attested, kp, []).allowed
    # upper-case policy value still matches lower-case request value (IgnoreCase)
    kp_upper = key_policy(
        {
            **ENCLAVE_ALLOW,
            "Condition": {
                "StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": PCR0.upper()}
            },
        }
    )
    assert evaluate_kms(attested, kp_upper, []).allowed
    # no attestation document -> denied: "this condition isn't satisfied"
    d = evaluate_kms(ctx(), kp, [])
    assert not d.allowed
    assert d.reason == "because no identity-based policy allows the kms:Decrypt action"
    d = evaluate_kms(ctx(), key_policy(ENCLAVE_ALLOW), [])
    assert d.reason == "because no resource-based policy allows the kms:Decrypt action"
    wrong = ctx(**{"kms__RecipientAttestation__ImageSha384": OTHER})
    assert not evaluate_kms(wrong, kp, []).allowed
    # every attested operation of the example is allowed
    for action in ACTIONS:
        assert evaluate_kms(
            ctx(action=action, **{"kms__RecipientAttestation__ImageSha384": PCR0}), kp, []
        ).allowed


def test_all_pcrs_must_match() -> None:
    kp = key_policy(PCR_ALLOW)
    good = {f"kms__RecipientAttestation__PCR{i}": PCR0 for i in range(3)}
    assert evaluate_kms(ctx(**good), kp, []).allowed
    wrong = {**good, "kms__RecipientAttestation__PCR2": OTHER}
    assert not evaluate_kms(ctx(**wrong), kp, []).allowed
    debug = {f"kms__RecipientAttestation__PCR{i}": "00" * 48 for i in range(3)}
    assert not evaluate_kms(ctx(**debug), kp, []).allowed
    partial = {k: v for k, v in good.items() if not k.endswith("PCR1")}
    assert not evaluate_kms(ctx(**partial), kp, []).allowed


def test_issue_157_unconditional_allow_lets_parent_decrypt() -> None:
    """aws-nitro-enclaves-sdk-c#157: default key policy (root) + an IAM policy granting
    Decrypt lets the parent decrypt without Recipient, PCR statement notwithstanding."""
    kp = key_policy(ADMIN, PCR_ALLOW)
    d = evaluate_kms(ctx(), kp, [ID_DECRYPT])
    assert d.allowed
    assert d.statements == ("Enable IAM User Permissions", "#0")
    # the fix: explicit deny with the negated operator (true when the key is missing)
    kp_fixed = key_policy(ADMIN, PCR_ALLOW, DENY_UNATTESTED)
    d = evaluate_kms(ctx(), kp_fixed, [ID_DECRYPT])
    assert not d.allowed
    assert d.reason == "with an explicit deny in a resource-based policy"
    assert d.statements == ("Deny unattested",)
    # ... while the attested call is still allowed
    good = {f"kms__RecipientAttestation__PCR{i}": PCR0 for i in range(3)}
    assert evaluate_kms(ctx(**good), kp_fixed, [ID_DECRYPT]).allowed
    # and a wrong PCR0 hits the deny
    bad = {**good, "kms__RecipientAttestation__PCR0": OTHER}
    assert evaluate_kms(ctx(**bad), kp_fixed, [ID_DECRYPT]).reason.startswith("with an explicit")


def test_account_delegation_needs_identity_policy() -> None:
    kp = key_policy(ADMIN)
    d = evaluate_kms(ctx(), kp, [])
    assert not d.allowed
    assert d.reason == "because no identity-based policy allows the kms:Decrypt action"
    assert evaluate_kms(ctx(), kp, [ID_DECRYPT]).allowed
    # an identity policy for another key does not help
    other_key = parse_policy(
        {"Statement": [{"Effect": "Allow", "Action": "kms:Decrypt", "Resource": KEY + "-other"}]}
    )
    assert not evaluate_kms(ctx(), kp, [other_key]).allowed
    # account id form of the root principal delegates too
    kp_id = key_policy({**ADMIN, "Principal": {"AWS": ACCT}})
    assert evaluate_kms(ctx(), kp_id, [ID_DECRYPT]).allowed
    # root itself is allowed directly, without identity policies
    assert evaluate_kms(ctx(principal=ROOT), kp, []).allowed


def test_no_delegation_without_root_or_to_other_account() -> None:
    kp = key_policy({**ADMIN, "Principal": {"AWS": "arn:aws:iam::999999999999:root"}})
    d = evaluate_kms(ctx(), kp, [ID_DECRYPT])
    assert not d.allowed and "no resource-based policy" in d.reason
    kp_role_only = key_policy({**ADMIN, "Principal": {"AWS": ROLE}, "Action": "kms:Encrypt"})
    assert not evaluate_kms(ctx(), kp_role_only, [ID_DECRYPT]).allowed


def test_identity_deny_wins_over_key_allow() -> None:
    kp = key_policy({**ADMIN, "Principal": {"AWS": ROLE}})
    deny = parse_policy(
        {"Statement": [{"Sid": "No", "Effect": "Deny", "Action": "kms:*", "Resource": "*"}]}
    )
    d = evaluate_kms(ctx(), kp, [ID_DECRYPT, deny])
    assert (d.allowed, d.reason, d.statements) == (
        False,
        "with an explicit deny in an identity-based policy",
        ("No",),
    )


def test_wildcard_principal_and_caller_account_condition() -> None:
    kp = key_policy(
        {
            "Effect": "Allow",
            "Principal": {"AWS": "*"},
            "Action": "kms:Decrypt",
            "Resource": "*",
            "Condition": {"StringEquals": {"kms:CallerAccount": ACCT}},
        }
    )
    assert evaluate_kms(ctx(**{"kms__CallerAccount": ACCT}), kp, []).allowed
    assert not evaluate_kms(ctx(**{"kms__CallerAccount": "999999999999"}), kp, []).allowed


def test_identity_policy_with_attestation_condition() -> None:
    """Condition keys work in identity policies too (the docs say so)."""
    kp = key_policy(ADMIN)
    idp = parse_policy(
        {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "kms:Decrypt",
                    "Resource": "*",
                    "Condition": {
                        "StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": PCR0}
                    },
                }
            ]
        }
    )
    assert not evaluate_kms(ctx(), kp, [idp]).allowed
    assert evaluate_kms(ctx(**{"kms__RecipientAttestation__PCR0": PCR0}), kp, [idp]).allowed


def test_cross_account_key_needs_both_policies() -> None:
    """A key of another account: the key policy's allow alone is not enough."""
    other_key = "arn:aws:kms:us-east-1:999999999999:key/abcd"
    c = RequestContext(principal=ROLE, account=ACCT, action="kms:Decrypt", resource=other_key)
    kp_role = key_policy({**ADMIN, "Principal": {"AWS": ROLE}, "Action": "kms:Decrypt"})
    d = evaluate_kms(c, kp_role, [])
    assert not d.allowed
    assert d.reason == "because no identity-based policy allows the kms:Decrypt action"
    assert evaluate_kms(c, kp_role, [ID_DECRYPT]).allowed is False  # ID_DECRYPT names KEY
    any_key = parse_policy(
        {"Statement": [{"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*"}]}
    )
    assert evaluate_kms(c, kp_role, [any_key]).allowed
    kp_acct = key_policy({**ADMIN, "Principal": {"AWS": ACCT}})
    assert evaluate_kms(c, kp_acct, [any_key]).allowed
    kp_foreign = key_policy(ADMIN | {"Principal": {"AWS": "999999999999"}})
    assert not evaluate_kms(c, kp_foreign, [any_key]).allowed
