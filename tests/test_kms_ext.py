"""The local KMS over a real moto server: SigV4 callers, key policies, attested Recipient calls.

One server per module (moto.server.ThreadedMotoServer on 127.0.0.1, free port), driven by boto3
exactly as the enclave and the parent would drive AWS. Budget: well under 60 s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import cbor2
import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from moto.server import ThreadedMotoServer

from enclavekit import attestation, cms
from enclavekit.errors import CmsFormatError
from enclavekit.localenv import (
    LOCAL_ACCESS_KEY_ID,
    LOCAL_ACCOUNT,
    LOCAL_REGION,
    LOCAL_SECRET_ACCESS_KEY,
)
from enclavekit.pki import LocalPki
from local_backend.moto_ext import kms as kms_ext
from local_backend.pytest_plugin import free_port

ROOT = f"arn:aws:iam::{LOCAL_ACCOUNT}:root"
PCRS = {0: bytes([1]) * 48, 1: bytes([2]) * 48, 2: bytes([3]) * 48}
SECRET = b"the application secret"
ATTESTED = ["kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyPair"]


def _spki(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass
class Env:
    endpoint: str
    pki: LocalPki
    role_arn: str
    role_creds: dict[str, str]
    enclave_key: rsa.RSAPrivateKey
    attacker_key: rsa.RSAPrivateKey
    tmp: Path

    def client(self, service: str, creds: dict[str, str] | None = None, **kw: Any) -> Any:
        c = creds or {
            "aws_access_key_id": LOCAL_ACCESS_KEY_ID,
            "aws_secret_access_key": LOCAL_SECRET_ACCESS_KEY,
        }
        return boto3.client(
            service, endpoint_url=self.endpoint, region_name=LOCAL_REGION, **{**c, **kw}
        )

    @property
    def root(self) -> Any:
        return self.client("kms")

    @property
    def role(self) -> Any:
        return self.client("kms", self.role_creds)

    def document(
        self,
        *,
        pcrs: dict[int, bytes] = PCRS,
        key: rsa.RSAPrivateKey | None = None,
        pki: LocalPki | None = None,
        leaf_now: Any = None,
        timestamp: int | None = None,
    ) -> bytes:
        pki = pki or self.pki
        signing, cert = pki.issue_leaf("i-0123456789abcdef0-enc0123456789abcdef", now=leaf_now)
        return attestation.encode(
            module_id="i-0123456789abcdef0-enc0123456789abcdef",
            pcrs=pcrs,
            signing_key=signing,
            certificate=cert,
            cabundle=pki.cabundle,
            timestamp=timestamp,
            public_key=_spki(key or self.enclave_key),
        )

    def recipient(self, doc: bytes | None = None, **kw: Any) -> dict[str, Any]:
        return {
            "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
            "AttestationDocument": doc if doc is not None else self.document(**kw),
        }


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("kms")
    kms_ext.install(tmp / "state")
    pki = LocalPki.load_or_create(tmp / "state")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        e = Env(
            f"http://localhost:{port}",
            pki,
            "",
            {},
            rsa.generate_private_key(65537, 2048),
            rsa.generate_private_key(65537, 2048),
            tmp,
        )
        iam = e.client("iam")
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "ec2.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        e.role_arn = iam.create_role(
            RoleName="enclave-host", AssumeRolePolicyDocument=json.dumps(trust)
        )["Role"]["Arn"]
        c = e.client("sts").assume_role(RoleArn=e.role_arn, RoleSessionName="i-0123456789abcdef0")[
            "Credentials"
        ]
        e.role_creds = {
            "aws_access_key_id": c["AccessKeyId"],
            "aws_secret_access_key": c["SecretAccessKey"],
            "aws_session_token": c["SessionToken"],
        }
        yield e
    finally:
        server.stop()


def _admin() -> dict[str, Any]:
    return {
        "Sid": "Admin",
        "Effect": "Allow",
        "Principal": {"AWS": ROOT},
        "Action": "kms:*",
        "Resource": "*",
    }


def _pcr_allow(role_arn: str, pcrs: dict[int, bytes] = PCRS) -> dict[str, Any]:
    return {
        "Sid": "Enclave",
        "Effect": "Allow",
        "Principal": {"AWS": role_arn},
        "Action": ATTESTED,
        "Resource": "*",
        "Condition": {
            "StringEqualsIgnoreCase": {
                f"kms:RecipientAttestation:PCR{i}": v.hex().upper() for i, v in pcrs.items()
            }
        },
    }


def _key(env: Env, *statements: dict[str, Any]) -> tuple[str, bytes]:
    policy = {"Version": "2012-10-17", "Statement": list(statements)}
    key_id = env.root.create_key(Policy=json.dumps(policy))["KeyMetadata"]["Arn"]
    blob = env.root.encrypt(KeyId=key_id, Plaintext=SECRET)["CiphertextBlob"]
    return key_id, blob


@pytest.fixture(scope="module")
def bound_key(env: Env) -> tuple[str, bytes]:
    """Root administers; the role may use it only from an enclave with the right PCRs."""
    return _key(env, _admin(), _pcr_allow(env.role_arn))


def _code(info: pytest.ExceptionInfo[ClientError]) -> str:
    return info.value.response["Error"]["Code"]


def _msg(info: pytest.ExceptionInfo[ClientError]) -> str:
    return info.value.response["Error"]["Message"]


# ----------------------------------------------------------------------------- identity
def test_root_administers(env: Env, bound_key: tuple[str, bytes]) -> None:
    key_id, blob = bound_key
    kms = env.root
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["Enabled"]
    kms.enable_key_rotation(KeyId=key_id)
    policy = kms.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"]
    assert isinstance(policy, str) and json.loads(policy)["Statement"][0]["Sid"] == "Admin"
    kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy=policy)
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == SECRET


def test_signature_is_checked(env: Env, bound_key: tuple[str, bytes]) -> None:
    key_id, _ = bound_key
    bad = env.client(
        "kms", {"aws_access_key_id": LOCAL_ACCESS_KEY_ID, "aws_secret_access_key": "not-the-secret"}
    )
    with pytest.raises(ClientError) as info:
        bad.describe_key(KeyId=key_id)
    assert _code(info) == "InvalidSignatureException"
    assert "signature we calculated does not match" in _msg(info)
    unknown = env.client(
        "kms", {"aws_access_key_id": "AKIAIOSFODNN7EXAMPLE", "aws_secret_access_key": "x"}
    )
    with pytest.raises(ClientError) as info:
        unknown.list_keys()
    assert _code(info) == "UnrecognizedClientException"
    forged_token = env.client("kms", {**env.role_creds, "aws_session_token": "forged"})
    with pytest.raises(ClientError) as info:
        forged_token.describe_key(KeyId=key_id)
    assert _code(info) == "UnrecognizedClientException"


def test_iam_user_via_account_delegation(env: Env) -> None:
    iam = env.client("iam")
    iam.create_user(UserName="ops")
    ak = iam.create_access_key(UserName="ops")["AccessKey"]
    ops = env.client(
        "kms",
        {"aws_access_key_id": ak["AccessKeyId"], "aws_secret_access_key": ak["SecretAccessKey"]},
    )
    key_id, blob = _key(env, _admin())
    with pytest.raises(ClientError) as info:
        ops.decrypt(CiphertextBlob=blob)
    assert _code(info) == "AccessDeniedException"
    assert _msg(info) == (
        f"User: arn:aws:iam::{LOCAL_ACCOUNT}:user/ops is not authorized to perform: kms:Decrypt "
        f"on resource: {key_id} because no identity-based policy allows the kms:Decrypt action"
    )
    arn = iam.create_policy(
        PolicyName="decrypt",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "kms:Decrypt", "Resource": key_id}],
            }
        ),
    )["Policy"]["Arn"]
    iam.attach_user_policy(UserName="ops", PolicyArn=arn)
    assert ops.decrypt(CiphertextBlob=blob)["Plaintext"] == SECRET


# ----------------------------------------------------------------------------- attested
def test_role_denied_plain_decrypt(env: Env, bound_key: tuple[str, bytes]) -> None:
    key_id, blob = bound_key
    with pytest.raises(ClientError) as info:
        env.role.decrypt(CiphertextBlob=blob)
    assert _code(info) == "AccessDeniedException"
    assert _msg(info).startswith(
        f"User: arn:aws:sts::{LOCAL_ACCOUNT}:assumed-role/enclave-host/i-0123456789abcdef0 is "
        f"not authorized to perform: kms:Decrypt on resource: {key_id} because no "
    )


def test_attested_decrypt_answers_cms_only(env: Env, bound_key: tuple[str, bytes]) -> None:
    key_id, blob = bound_key
    out = env.role.decrypt(CiphertextBlob=blob, KeyId=key_id, Recipient=env.recipient())
    assert "Plaintext" not in out
    assert out["KeyId"] == key_id
    assert cms.open_enveloped(out["CiphertextForRecipient"], env.enclave_key) == SECRET


@pytest.mark.parametrize(
    "pcrs",
    [
        {**PCRS, 2: bytes([9]) * 48},  # wrong PCR2
        {i: bytes(48) for i in PCRS},  # debug mode: all zero
        {0: PCRS[0], 1: PCRS[1]},
    ],  # PCR2 missing
    ids=["wrong-pcr", "debug", "missing-pcr"],
)
def test_wrong_measurements_denied(
    env: Env, bound_key: tuple[str, bytes], pcrs: dict[int, bytes]
) -> None:
    _, blob = bound_key
    with pytest.raises(ClientError) as info:
        env.role.decrypt(CiphertextBlob=blob, Recipient=env.recipient(pcrs=pcrs))
    assert _code(info) == "AccessDeniedException"


def _forge(doc: bytes) -> bytes:
    parts = cbor2.loads(doc)
    sig = bytearray(parts[3])
    sig[10] ^= 0x01
    parts[3] = bytes(sig)
    return cbor2.dumps(parts)


def test_bad_documents_rejected(env: Env, bound_key: tuple[str, bytes]) -> None:
    _, blob = bound_key
    other = LocalPki.load_or_create(env.tmp / "other-root")
    old = time.time() - 4 * 3600
    from datetime import UTC, datetime

    cases = {
        "forged signature": _forge(env.document()),
        "expired leaf": env.document(
            leaf_now=datetime.fromtimestamp(old, UTC), timestamp=int(old * 1000)
        ),
        "another root": env.document(pki=other),
        "not a document": b"\xa1\x01\x02garbage",
    }
    for name, doc in cases.items():
        with pytest.raises(ClientError) as info:
            env.role.decrypt(CiphertextBlob=blob, Recipient=env.recipient(doc))
        assert _code(info) == "ValidationException", name
        assert "attestation document is not valid" in _msg(info), name
    with pytest.raises(ClientError) as info:
        env.role.decrypt(
            CiphertextBlob=blob,
            Recipient={
                "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_1",
                "AttestationDocument": env.document(),
            },
        )
    assert _code(info) == "ValidationException"
    assert "recipient.keyEncryptionAlgorithm" in _msg(info)


def test_swapped_public_key_cannot_be_opened(env: Env, bound_key: tuple[str, bytes]) -> None:
    """A document carrying someone else's key: KMS encrypts to that key, so the enclave (or
    whoever replays the document) cannot open it; only the document's key holder can."""
    _, blob = bound_key
    out = env.role.decrypt(CiphertextBlob=blob, Recipient=env.recipient(key=env.attacker_key))
    envelope = out["CiphertextForRecipient"]
    with pytest.raises(CmsFormatError):
        cms.open_enveloped(envelope, env.enclave_key)
    assert cms.open_enveloped(envelope, env.attacker_key) == SECRET


def test_attested_generate_ops(env: Env, bound_key: tuple[str, bytes]) -> None:
    key_id, _ = bound_key
    out = env.role.generate_data_key(KeyId=key_id, KeySpec="AES_256", Recipient=env.recipient())
    assert "Plaintext" not in out
    data_key = cms.open_enveloped(out["CiphertextForRecipient"], env.enclave_key)
    assert len(data_key) == 32
    assert env.root.decrypt(CiphertextBlob=out["CiphertextBlob"])["Plaintext"] == data_key
    pair = env.role.generate_data_key_pair(
        KeyId=key_id, KeyPairSpec="ECC_NIST_P384", Recipient=env.recipient()
    )
    assert "PrivateKeyPlaintext" not in pair
    der = cms.open_enveloped(pair["CiphertextForRecipient"], env.enclave_key)
    private = serialization.load_der_private_key(der, None)
    assert (
        private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == pair["PublicKey"]
    )
    assert env.root.decrypt(CiphertextBlob=pair["PrivateKeyCiphertextBlob"])["Plaintext"] == der
    with pytest.raises(ClientError) as info:
        env.role.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    assert _code(info) == "AccessDeniedException"


def test_generate_random_uses_identity_policy(env: Env) -> None:
    with pytest.raises(ClientError) as info:
        env.role.generate_random(NumberOfBytes=16, Recipient=env.recipient())
    assert _code(info) == "AccessDeniedException"
    assert "kms:GenerateRandom on resource: *" in _msg(info)
    env.client("iam").put_role_policy(
        RoleName="enclave-host",
        PolicyName="random",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "kms:GenerateRandom",
                        "Resource": "*",
                        "Condition": {
                            "StringEqualsIgnoreCase": {
                                "kms:RecipientAttestation:ImageSha384": PCRS[0].hex()
                            }
                        },
                    }
                ],
            }
        ),
    )
    try:
        out = env.role.generate_random(NumberOfBytes=16, Recipient=env.recipient())
        assert "Plaintext" not in out
        assert len(cms.open_enveloped(out["CiphertextForRecipient"], env.enclave_key)) == 16
        with pytest.raises(ClientError) as denied:
            env.role.generate_random(NumberOfBytes=16)
        assert _code(denied) == "AccessDeniedException"
    finally:
        env.client("iam").delete_role_policy(RoleName="enclave-host", PolicyName="random")


# ----------------------------------------------------------------------------- policy shapes
def test_explicit_deny_blocks_unattested_despite_identity_allow(env: Env) -> None:
    """aws-nitro-enclaves-sdk-c#157: root delegation + an IAM allow lets the parent decrypt;
    an explicit Deny with StringNotEqualsIgnoreCase (true when the key is absent) stops it."""
    deny = {
        "Sid": "DenyUnattested",
        "Effect": "Deny",
        "Principal": {"AWS": env.role_arn},
        "Action": ATTESTED,
        "Resource": "*",
        "Condition": {
            "StringNotEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": PCRS[0].hex()}
        },
    }
    key_id, blob = _key(env, _admin(), _pcr_allow(env.role_arn))
    iam = env.client("iam")
    iam.put_role_policy(
        RoleName="enclave-host",
        PolicyName="decrypt-all",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*"}],
            }
        ),
    )
    try:
        assert env.role.decrypt(CiphertextBlob=blob)["Plaintext"] == SECRET  # the pitfall
        env.root.put_key_policy(
            KeyId=key_id,
            PolicyName="default",
            Policy=json.dumps(
                {"Version": "2012-10-17", "Statement": [_admin(), _pcr_allow(env.role_arn), deny]}
            ),
        )
        with pytest.raises(ClientError) as info:
            env.role.decrypt(CiphertextBlob=blob)
        assert _msg(info).endswith("with an explicit deny in a resource-based policy")
        out = env.role.decrypt(CiphertextBlob=blob, Recipient=env.recipient())
        assert cms.open_enveloped(out["CiphertextForRecipient"], env.enclave_key) == SECRET
    finally:
        iam.delete_role_policy(RoleName="enclave-host", PolicyName="decrypt-all")


def test_key_policy_without_pcr_condition_lets_parent_decrypt(env: Env) -> None:
    """Issue 4's negative test: without the PCR condition the parent gets plaintext."""
    loose = {**_pcr_allow(env.role_arn)}
    del loose["Condition"]
    _, blob = _key(env, _admin(), loose)
    assert env.role.decrypt(CiphertextBlob=blob)["Plaintext"] == SECRET


def test_put_key_policy_validates(env: Env, bound_key: tuple[str, bytes]) -> None:
    key_id, _ = bound_key
    for bad in ("{not json", json.dumps({"Statement": [{"Effect": "Maybe", "Action": "kms:*"}]})):
        with pytest.raises(ClientError) as info:
            env.root.put_key_policy(KeyId=key_id, PolicyName="default", Policy=bad)
        assert _code(info) == "MalformedPolicyDocumentException"
    lockout = json.dumps({"Version": "2012-10-17", "Statement": [_pcr_allow(env.role_arn)]})
    with pytest.raises(ClientError) as info:
        env.root.put_key_policy(KeyId=key_id, PolicyName="default", Policy=lockout)
    assert "will not allow you to update the key policy" in _msg(info)


def test_cfn_key_policy_is_a_json_string(env: Env) -> None:
    policy = {"Version": "2012-10-17", "Statement": [_admin()]}
    template = {"Resources": {"K": {"Type": "AWS::KMS::Key", "Properties": {"KeyPolicy": policy}}}}
    cfn = env.client("cloudformation")
    cfn.create_stack(StackName="kms-policy", TemplateBody=json.dumps(template))
    key_id = cfn.describe_stack_resources(StackName="kms-policy")["StackResources"][0][
        "PhysicalResourceId"
    ]
    text = env.root.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"]
    assert isinstance(text, str) and json.loads(text) == policy
    blob = env.root.encrypt(KeyId=key_id, Plaintext=b"x")["CiphertextBlob"]
    assert env.root.decrypt(CiphertextBlob=blob)["Plaintext"] == b"x"
    with pytest.raises(ClientError) as denied:
        env.role.decrypt(CiphertextBlob=blob)
    assert _code(denied) == "AccessDeniedException"
    assert key_id in denied.value.response["Error"]["Message"]  # denied for that key


def test_key_of_another_account(env: Env) -> None:
    """A service account's key (as the ACM association uses): the key policy must name the
    role and the role's own policy must allow it too."""
    from moto.kms.models import kms_backends

    backend = kms_backends["111111111111"][LOCAL_REGION]
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::111111111111:root"},
                "Action": "kms:*",
                "Resource": "*",
            },
            _pcr_allow(env.role_arn),
        ],
    }
    key = backend.create_key(
        json.dumps(policy), "ENCRYPT_DECRYPT", "SYMMETRIC_DEFAULT", "service key", None
    )
    blob, _ = backend.encrypt(key_id=key.id, plaintext=SECRET, encryption_context={})
    with pytest.raises(ClientError) as info:
        env.role.decrypt(CiphertextBlob=blob, KeyId=key.arn, Recipient=env.recipient())
    assert _msg(info).endswith("because no identity-based policy allows the kms:Decrypt action")
    iam = env.client("iam")
    iam.put_role_policy(
        RoleName="enclave-host",
        PolicyName="svc-key",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "kms:Decrypt", "Resource": key.arn}],
            }
        ),
    )
    try:
        out = env.role.decrypt(CiphertextBlob=blob, KeyId=key.arn, Recipient=env.recipient())
        assert cms.open_enveloped(out["CiphertextForRecipient"], env.enclave_key) == SECRET
        with pytest.raises(ClientError) as info:
            env.role.decrypt(CiphertextBlob=blob)
        assert _code(info) == "AccessDeniedException"
    finally:
        iam.delete_role_policy(RoleName="enclave-host", PolicyName="svc-key")
