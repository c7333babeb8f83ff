"""Attacks on the local KMS around the deployed sample's PCR-bound secret (issue 8, 1/2/4).

Each test is one attack with the answer real KMS gives. Before the fix, the first two
returned the secret's plaintext to principals with no attestation at all.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from conftest import ROOT_ARN, SECRET, Target

from enclavekit.localenv import LOCAL_ACCESS_KEY_ID, LOCAL_REGION, LOCAL_SECRET_ACCESS_KEY

pytestmark = pytest.mark.slow
ROOT_CREDS = {
    "aws_access_key_id": LOCAL_ACCESS_KEY_ID,
    "aws_secret_access_key": LOCAL_SECRET_ACCESS_KEY,
}


def kms_call(target: Target, creds: dict[str, str], operation: str, body: str) -> dict[str, Any]:
    """A KMS request with a raw JSON body (boto3 cannot send malformed base64), signed with
    SigV4 by botocore. Returns {"status", "code", "body"}."""
    url = target.endpoint.url + "/"
    req = AWSRequest(
        "POST",
        url,
        data=body.encode(),
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": f"TrentService.{operation}",
        },
    )
    SigV4Auth(
        Credentials(
            creds["aws_access_key_id"],
            creds["aws_secret_access_key"],
            creds.get("aws_session_token"),
        ),
        "kms",
        LOCAL_REGION,
    ).add_auth(req)
    http = urllib.request.Request(url, data=body.encode(), headers=dict(req.headers.items()))
    try:
        with urllib.request.urlopen(http, timeout=30) as resp:
            payload = json.loads(resp.read() or b"{}")
            return {"status": resp.status, "code": None, "body": payload}
    except urllib.error.HTTPError as exc:
        payload = json.loads(exc.read() or b"{}")
        code = str(payload.get("__type", "")).rsplit("#", 1)[-1]
        return {"status": exc.code, "code": code, "body": payload}


def principals(target: Target) -> dict[str, dict[str, str]]:
    """Everyone who is not an attested enclave of the right image."""
    return {
        "host role (the parent)": target.role_creds("parent"),
        "IAM user without a policy": target.user_creds("nopolicy"),
        "IAM user with kms:*": target.user_creds(
            "kmsadmin",
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}],
            },
        ),
        "account root": ROOT_CREDS,
    }


def test_malformed_base64_ciphertext_never_skips_the_key_policy(target: Target) -> None:
    """Attack 1: one non-base64 character in CiphertextBlob. Before: our strict decoder gave
    up, authorization was skipped, moto decoded leniently and answered the plaintext."""
    good = base64.b64encode(target.secret_blob).decode()
    for who, creds in principals(target).items():
        for bad in (good[:10] + "*" + good[10:], good[:10] + " " + good[10:], good + "!!"):
            out = kms_call(target, creds, "Decrypt", json.dumps({"CiphertextBlob": bad}))
            assert (out["status"], out["code"]) == (400, "SerializationException"), (who, out)
            assert "Plaintext" not in out["body"]
        # and the well-formed blob: denied by the key policy, for every one of them
        out = kms_call(target, creds, "Decrypt", json.dumps({"CiphertextBlob": good}))
        assert out["code"] == "AccessDeniedException", (who, out)
        assert target.key_arn in out["body"]["message"]


def test_reencrypt_cannot_launder_the_secret_through_an_own_key(target: Target) -> None:
    """Attack 2: ReEncrypt(secret, SourceKeyId=<my key>, DestinationKeyId=<my key>). Before:
    authorized against SourceKeyId, decrypted with the key in the blob, then Decrypt worked."""
    kms = target.endpoint.client("kms")  # the account root owns "my key"
    mine = kms.create_key(Description="attacker's own key")["KeyMetadata"]["Arn"]
    with pytest.raises(ClientError) as info:
        kms.re_encrypt(CiphertextBlob=target.secret_blob, SourceKeyId=mine, DestinationKeyId=mine)
    assert info.value.response["Error"]["Code"] == "IncorrectKeyException"
    # naming no source key: authorized as ReEncryptFrom on the blob's real key, and denied
    with pytest.raises(ClientError) as info:
        kms.re_encrypt(CiphertextBlob=target.secret_blob, DestinationKeyId=mine)
    assert info.value.response["Error"]["Code"] == "AccessDeniedException"
    assert "kms:ReEncryptFrom" in info.value.response["Error"]["Message"]
    # Decrypt naming the wrong KeyId is refused the same way
    with pytest.raises(ClientError) as info:
        kms.decrypt(CiphertextBlob=target.secret_blob, KeyId=mine)
    assert info.value.response["Error"]["Code"] == "IncorrectKeyException"


def test_encryption_context_is_bound_exactly(target: Target) -> None:
    """Attack 4: {"tenan": "tA"} opened a blob sealed with {"tenant": "A"} (keys and values
    were concatenated without separators). AWS binds the exact map."""
    kms = target.endpoint.client("kms")
    key = kms.create_key(Description="tenant data")["KeyMetadata"]["Arn"]
    blob = kms.encrypt(KeyId=key, Plaintext=b"tenant A data", EncryptionContext={"tenant": "A"})[
        "CiphertextBlob"
    ]
    for wrong in ({"tenan": "tA"}, {"tenantA": ""}, {}, {"tenant": "A", "x": "y"}):
        with pytest.raises(ClientError) as info:
            kms.decrypt(CiphertextBlob=blob, EncryptionContext=wrong)
        assert info.value.response["Error"]["Code"] == "InvalidCiphertextException", wrong
    ok = kms.decrypt(CiphertextBlob=blob, EncryptionContext={"tenant": "A"})
    assert ok["Plaintext"] == b"tenant A data"


def test_a_tampered_or_truncated_blob_is_invalid_ciphertext(target: Target) -> None:
    kms = target.endpoint.client("kms")
    blob = bytearray(target.secret_blob)
    blob[-1] ^= 1
    for bad in (bytes(blob), target.secret_blob[:40], b"x" * 100):
        with pytest.raises(ClientError) as info:
            kms.decrypt(CiphertextBlob=bad)
        code = info.value.response["Error"]["Code"]
        # a blob naming the app key is still authorized first: the root is denied it
        assert code in ("InvalidCiphertextException", "AccessDeniedException"), code


def test_host_role_cannot_administer_or_grant_itself(target: Target) -> None:
    """The parent (host role) cannot rewrite the policy, grant itself, or re-encrypt."""
    kms = target.endpoint.client("kms", **target.role_creds())
    attempts = {
        "PutKeyPolicy": lambda: kms.put_key_policy(
            KeyId=target.key_arn,
            PolicyName="default",
            Policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"AWS": ROOT_ARN},
                            "Action": "kms:*",
                            "Resource": "*",
                        }
                    ],
                }
            ),
        ),
        "CreateGrant": lambda: kms.create_grant(
            KeyId=target.key_arn, GranteePrincipal=target.role_arn, Operations=["Decrypt"]
        ),
        "ReEncrypt": lambda: kms.re_encrypt(
            CiphertextBlob=target.secret_blob, DestinationKeyId=target.key_arn
        ),
        "Decrypt": lambda: kms.decrypt(CiphertextBlob=target.secret_blob),
        "GenerateDataKey": lambda: kms.generate_data_key(KeyId=target.key_arn, KeySpec="AES_256"),
        "GenerateDataKeyWithoutPlaintext": lambda: kms.generate_data_key_without_plaintext(
            KeyId=target.key_arn, KeySpec="AES_256"
        ),
        "GenerateDataKeyPair": lambda: kms.generate_data_key_pair(
            KeyId=target.key_arn, KeyPairSpec="RSA_2048"
        ),
    }
    for what, call in attempts.items():
        with pytest.raises(ClientError) as info:
            call()
        assert info.value.response["Error"]["Code"] == "AccessDeniedException", what
    # DeriveSharedSecret (absent from moto and boto3's older models): authorized first, denied
    out = kms_call(
        target,
        target.role_creds(),
        "DeriveSharedSecret",
        json.dumps(
            {
                "KeyId": target.key_arn,
                "KeyAgreementAlgorithm": "ECDH",
                "PublicKey": base64.b64encode(b"\x04" + b"\x01" * 64).decode(),
            }
        ),
    )
    assert out["code"] == "AccessDeniedException", out
    assert SECRET  # the secret never came back in any answer above
