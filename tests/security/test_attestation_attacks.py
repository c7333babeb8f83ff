"""Attacks with attestation documents on the deployed sample's key (the ones that held before
issue 8, kept as regression tests against the real deployment).

A positive control first: a document with the image's PCRs, signed the way the emulator's NSM
signs, presented by the host role, gets `CiphertextForRecipient` (so every denial below is a
denial of exactly the thing it changes, not of a broken set-up).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import cbor2
import pytest
from botocore.exceptions import ClientError
from conftest import SECRET, Target
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from enclavekit import attestation, cms
from enclavekit import provisioning as prov
from enclavekit.pki import LocalPki

pytestmark = pytest.mark.slow
MODULE = "i-0aaaaaaaaaaaaaaaa-enc0123456789abcdef"


def _spki(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _document(
    pki: LocalPki,
    pcrs: dict[int, bytes],
    key: rsa.RSAPrivateKey,
    *,
    leaf_now: dt.datetime | None = None,
    cabundle: list[bytes] | None = None,
) -> bytes:
    signing, cert = pki.issue_leaf(MODULE, now=leaf_now)
    return attestation.encode(
        module_id=MODULE,
        pcrs=pcrs,
        signing_key=signing,
        certificate=cert,
        cabundle=cabundle or pki.cabundle,
        public_key=_spki(key),
    )


def _decrypt(target: Target, creds: dict[str, str], doc: bytes) -> dict[str, Any]:
    kms = target.endpoint.client("kms", **creds)
    return kms.decrypt(
        CiphertextBlob=target.secret_blob,
        Recipient={"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": doc},
    )


def _code(call: Any) -> str:
    with pytest.raises(ClientError) as info:
        call()
    return str(info.value.response["Error"]["Code"])


@pytest.fixture(scope="module")
def pcrs(target: Target) -> dict[int, bytes]:
    bound = target.pcrs()
    assert set(bound) >= {0, 1, 2}, bound
    return {i: bytes.fromhex(v) for i, v in bound.items()}


@pytest.fixture(scope="module")
def platform(target: Target) -> LocalPki:
    """The emulator's PKI (the test plays the NSM for the positive control)."""
    return LocalPki.load_or_create(target.endpoint.state_dir)


def test_control_the_right_document_opens_the_secret(target, pcrs, platform) -> None:
    key = rsa.generate_private_key(65537, 2048)
    out = _decrypt(target, target.role_creds(), _document(platform, pcrs, key))
    assert "Plaintext" not in out
    assert cms.open_enveloped(out["CiphertextForRecipient"], key) == SECRET


def test_documents_that_must_be_denied(target, pcrs, platform, tmp_path: Path) -> None:
    key = rsa.generate_private_key(65537, 2048)
    role = target.role_creds()
    other_image = {**pcrs, 0: bytes(48 * [7])}
    debug = {i: bytes(48) for i in pcrs}
    own = LocalPki.load_or_create(tmp_path / "attacker-pki")  # an own P-384 root and chain
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=4)
    cases = {
        "another image's PCR0": (role, _document(platform, other_image, key), "Access"),
        "debug mode (PCRs zero)": (role, _document(platform, debug, key), "Access"),
        "own root and chain": (role, _document(own, pcrs, key), "Validation"),
        "forged intermediate under the real root": (
            role,
            _document(own, pcrs, key, cabundle=[platform.cabundle[0], own.cabundle[1]]),
            "Validation",
        ),
        "expired leaf": (role, _document(platform, pcrs, key, leaf_now=past), "Validation"),
        "right document, principal the policy does not name": (
            target.user_creds("withdoc"),
            _document(platform, pcrs, key),
            "Access",
        ),
    }
    for what, (creds, doc, kind) in cases.items():
        code = _code(lambda c=creds, d=doc: _decrypt(target, c, d))
        expected = "AccessDeniedException" if kind == "Access" else "ValidationException"
        assert code == expected, what


def _enclave_document(target: Target) -> bytes:
    """A genuine document from the deployed enclave (the control protocol's Attest)."""
    vsock = target.host.vsock()
    with vsock.connect(target.host.enclave_cid, prov.CONTROL_PORT) as sock:
        sock.settimeout(30)
        reply = prov.exchange(sock, prov.Attest(nonce=b"n" * 16))
    assert isinstance(reply, prov.AttestResult), reply
    return reply.document


def test_a_genuine_document_is_no_use_to_the_parent(target: Target) -> None:
    """The parent can ask the enclave for a document; replayed, KMS answers only to the
    enclave's key; with the parent's own key swapped in, the signature breaks."""
    genuine = _enclave_document(target)
    out = _decrypt(target, target.role_creds(), genuine)
    assert "Plaintext" not in out  # sealed to the enclave's key, which the parent lacks
    mine = rsa.generate_private_key(65537, 2048)
    with pytest.raises(Exception):  # noqa: B017 - any failure: the parent cannot open it
        cms.open_enveloped(out["CiphertextForRecipient"], mine)
    protected, unprotected, payload, signature = cbor2.loads(genuine)
    body = cbor2.loads(payload)
    body["public_key"] = _spki(mine)
    swapped = cbor2.dumps([protected, unprotected, cbor2.dumps(body), signature])
    assert _code(lambda: _decrypt(target, target.role_creds(), swapped)) == "ValidationException"


def test_unattested_generate_calls_are_denied_to_the_host_role(target: Target) -> None:
    kms = target.endpoint.client("kms", **target.role_creds())
    for call in (
        lambda: kms.generate_data_key(KeyId=target.key_arn, KeySpec="AES_256"),
        lambda: kms.generate_data_key_pair(KeyId=target.key_arn, KeyPairSpec="RSA_2048"),
        lambda: kms.generate_data_key_pair_without_plaintext(
            KeyId=target.key_arn, KeyPairSpec="RSA_2048"
        ),
    ):
        assert _code(call) == "AccessDeniedException"
