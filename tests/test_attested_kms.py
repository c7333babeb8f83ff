"""The one attested-KMS vocabulary: encoding, decoding and the bindings of a policy."""

from __future__ import annotations

import pytest

from enclavekit import attested_kms as ak
from enclavekit.policy import action_matches, parse_policy

ROLE = "arn:aws:iam::000000000000:role/Host"
OTHER = "arn:aws:iam::000000000000:role/Other"


def test_every_recipient_operation_is_granted_and_named_once() -> None:
    assert len(set(ak.RECIPIENT_OPERATIONS)) == len(ak.RECIPIENT_OPERATIONS)
    for action in ak.ATTESTED_ACTIONS:
        assert any(action_matches(p, action) for p in ak.GRANT_ACTIONS), action
    # The grant patterns reach nothing that is not decrypt-class (no Encrypt, no admin).
    for action in ("kms:Encrypt", "kms:ReEncryptFrom", "kms:PutKeyPolicy", "kms:CreateGrant"):
        assert not any(action_matches(p, action) for p in ak.GRANT_ACTIONS), action


def test_the_parts_use_the_vocabulary() -> None:
    """The constructs, the linter and the local KMS read the same lists (no copies)."""
    from enclave_constructs import ATTESTED_ACTIONS as construct_actions

    from enclavekit.lint.world import ATTESTED_ACTIONS as lint_actions
    from local_backend.moto_ext.kms.models import RECIPIENT_ACTIONS

    assert construct_actions == ak.GRANT_ACTIONS
    assert lint_actions == ak.ATTESTED_ACTIONS
    assert frozenset(ak.RECIPIENT_OPERATIONS) == RECIPIENT_ACTIONS


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("kms:RecipientAttestation:ImageSha384", "ImageSha384"),
        ("KMS:recipientattestation:imagesha384", "ImageSha384"),
        ("kms:RecipientAttestation:PCR0", "PCR0"),
        ("kms:RecipientAttestation:pcr31", "PCR31"),
        ("kms:RecipientAttestation:PCR01", "PCR1"),
        ("kms:RecipientAttestation:PCR32", None),
        ("kms:RecipientAttestation", None),
        ("kms:RecipientAttestation:Pcr", None),
        ("kms:EncryptionContext:PCR0", None),
    ],
)
def test_condition_name(key: str, name: str | None) -> None:
    assert ak.condition_name(key) == name
    if name is not None:
        assert ak.condition_name(ak.condition_key(name)) == name


def test_family_membership_includes_malformed_keys() -> None:
    """The linter flags malformed keys of the family, so membership is wider than validity."""
    assert ak.is_attestation_key("kms:recipientattestation")
    assert ak.is_attestation_key("kms:RecipientAttestation:PCR99")
    assert not ak.is_attestation_key("kms:EncryptionContext:x")


def test_request_keys_set_image_sha384_to_pcr0() -> None:
    keys = ak.request_keys({0: b"\x01" * 48, 8: b"\xab" * 48})
    assert keys == {
        "kms:RecipientAttestation:PCR0": "01" * 48,
        "kms:RecipientAttestation:PCR8": "ab" * 48,
        "kms:RecipientAttestation:ImageSha384": "01" * 48,
    }
    assert ak.request_keys({1: b"\x02" * 48}) == {"kms:RecipientAttestation:PCR1": "02" * 48}


def test_bindings_by_principal() -> None:
    policy = parse_policy(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": ROLE},
                    "Action": "kms:Decrypt",
                    "Resource": "*",
                    "Condition": {
                        "StringEqualsIgnoreCase": {
                            "kms:RecipientAttestation:ImageSha384": "AA" * 48,
                            "kms:RecipientAttestation:PCR2": "bb" * 48,
                            "kms:RecipientAttestation:Bogus": "x",
                        },
                        "Bool": {"aws:SecureTransport": "true"},
                    },
                },
                {
                    "Effect": "Deny",
                    "Principal": {"AWS": OTHER},
                    "Action": "kms:Decrypt",
                    "Resource": "*",
                    "Condition": {
                        "StringNotEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": "cc" * 48}
                    },
                },
            ],
        }
    )
    every = list(ak.bindings(policy))
    assert [(b.statement, b.effect, b.name, b.pcr) for b in every] == [
        (0, "Allow", "ImageSha384", 0),
        (0, "Allow", "PCR2", 2),
        (1, "Deny", "PCR0", 0),
    ]
    assert every[0].values == ("AA" * 48,)
    assert every[2].operator == "StringNotEqualsIgnoreCase"
    assert [b.name for b in ak.bindings(policy, principal=OTHER)] == ["PCR0"]
    assert list(ak.bindings(policy, principal="arn:aws:iam::000000000000:role/None")) == []
