"""Attacks on KMS aliases and on keys that were switched off.

Aliases: DeleteAlias was authorized against nothing (any authenticated caller, even an IAM user
without a policy, deleted the alias of the attested key), and UpdateAlias only against the new
target, so whoever controls some key of their own repointed an alias that names the attested
key to it: everything then encrypted "to the app's alias" is readable by them. AWS needs
kms:DeleteAlias / kms:UpdateAlias on the key the alias points to (and on the new key).

Key state: a disabled key (the operator's kill switch) or one pending deletion still encrypted,
generated data keys and key pairs, signed and gave its public key. AWS: DisabledException /
KMSInvalidStateException for every cryptographic use.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError
from conftest import Target

pytestmark = pytest.mark.slow


def _code(call: Callable[[], Any]) -> str:
    with pytest.raises(ClientError) as info:
        call()
    return str(info.value.response["Error"]["Code"])


def test_alias_of_the_attested_key_cannot_be_deleted_or_repointed(target: Target) -> None:
    root = target.endpoint.client("kms")
    alias = "alias/attack-app"
    root.create_alias(AliasName=alias, TargetKeyId=target.key_arn)
    # an IAM user without any policy, and the host role (the parent)
    outsider = target.endpoint.client("kms", **target.user_creds("alias-outsider"))
    host = target.endpoint.client("kms", **target.role_creds("alias"))
    for who in (outsider, host):
        assert _code(lambda c=who: c.delete_alias(AliasName=alias)) == "AccessDeniedException"
    # a user who fully controls a key of its own, and nothing of the attested key
    user = target.user_creds("alias-hijacker")
    user_arn = target.endpoint.client("sts", **user).get_caller_identity()["Arn"]
    own = root.create_key(
        Description="the hijacker's key",
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"AWS": f"arn:aws:iam::{user_arn.split(':')[4]}:root"},
                        "Action": "kms:*",
                        "Resource": "*",
                    },
                    {
                        "Effect": "Allow",
                        "Principal": {"AWS": user_arn},
                        "Action": "kms:*",
                        "Resource": "*",
                    },
                ],
            }
        ),
    )["KeyMetadata"]["Arn"]
    hijacker = target.endpoint.client("kms", **user)
    code = _code(lambda: hijacker.update_alias(AliasName=alias, TargetKeyId=own))
    assert code == "AccessDeniedException"
    code = _code(lambda: hijacker.delete_alias(AliasName=alias))
    assert code == "AccessDeniedException"
    # the alias still names the attested key
    named = {a["AliasName"]: a.get("TargetKeyId") for a in root.list_aliases()["Aliases"]}
    assert named[alias] == target.key_arn.rsplit("/", 1)[1]
    # the owner of both keys (root) may repoint it, as on AWS
    root.update_alias(AliasName=alias, TargetKeyId=own)
    root.delete_alias(AliasName=alias)


def test_a_disabled_or_deleted_key_does_no_cryptography(target: Target) -> None:
    kms = target.endpoint.client("kms")
    key = kms.create_key(Description="switched off")["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key, Plaintext=b"sealed before")["CiphertextBlob"]
    signer = kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")["KeyMetadata"]
    uses: dict[str, Callable[[], Any]] = {
        "Encrypt": lambda: kms.encrypt(KeyId=key, Plaintext=b"x"),
        "Decrypt": lambda: kms.decrypt(CiphertextBlob=blob),
        "GenerateDataKey": lambda: kms.generate_data_key(KeyId=key, KeySpec="AES_256"),
        "GenerateDataKeyWithoutPlaintext": lambda: kms.generate_data_key_without_plaintext(
            KeyId=key, KeySpec="AES_256"
        ),
        "GenerateDataKeyPair": lambda: kms.generate_data_key_pair(
            KeyId=key, KeyPairSpec="ECC_NIST_P256"
        ),
        "Sign": lambda: kms.sign(
            KeyId=signer["KeyId"], Message=b"m", SigningAlgorithm="ECDSA_SHA_256"
        ),
        "GetPublicKey": lambda: kms.get_public_key(KeyId=signer["KeyId"]),
    }
    kms.disable_key(KeyId=key)
    kms.disable_key(KeyId=signer["KeyId"])
    got = {name: _code(call) for name, call in uses.items()}
    assert got == dict.fromkeys(uses, "DisabledException")
    kms.enable_key(KeyId=key)
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"sealed before"
    kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    for name in ("Encrypt", "Decrypt", "GenerateDataKey"):
        assert _code(uses[name]) == "KMSInvalidStateException", name
