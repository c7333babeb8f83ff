"""Local KMS logic beyond moto: key-policy authorization and attested `Recipient` requests.

Pure of HTTP: responses.py turns these answers into KMS wire errors and bodies.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_der_public_key

from enclavekit import attested_kms
from enclavekit.errors import AwsRequestError, EnclaveKitError, PolicyDocumentError
from enclavekit.policy import Decision, Policy, RequestContext, evaluate, evaluate_kms, parse_policy

from ..identity import Caller, identity_policies

# Operations that accept Recipient: enclavekit.attested_kms (moto 5.2.5 does not implement
# DeriveSharedSecret at all, so that one fails in moto whatever its Recipient).
RECIPIENT_ACTIONS = frozenset(attested_kms.RECIPIENT_OPERATIONS)
KEY_ENCRYPTION_ALGORITHM = "RSAES_OAEP_SHA_256"
MAX_ATTESTATION_DOCUMENT = 262144  # API_RecipientInfo: AttestationDocument 1..262144 bytes
# Operations authorized by identity policies only (no key involved).
IDENTITY_ONLY_ACTIONS = frozenset({"CreateKey", "ListKeys", "ListAliases", "GenerateRandom"})
# Operations whose key is named by a parameter other than KeyId.
KEY_PARAMS = {
    "CreateAlias": "TargetKeyId",
    "UpdateAlias": "TargetKeyId",
    "ReEncrypt": "DestinationKeyId",
}
# Operations that take no key even though they may carry a KeyId-like parameter.
NO_KEY_ACTIONS = frozenset(
    {
        "CreateKey",
        "ListKeys",
        "ListAliases",
        "GenerateRandom",
        "ListRetirableGrants",
        "RetireGrant",
    }
)
ENCRYPTION_ALGORITHM_ACTIONS = frozenset(
    {
        "Encrypt",
        "Decrypt",
        "ReEncrypt",
        "GenerateDataKey",
        "GenerateDataKeyWithoutPlaintext",
        "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext",
    }
)


class KmsRequestError(AwsRequestError):
    """A request KMS answers with error `code` (e.g. ValidationException)."""


@dataclass(frozen=True)
class AttestedRecipient:
    """A verified Recipient: the enclave's document and the RSA key to encrypt the answer to."""

    document: Any  # enclavekit.attestation.AttestationDocument
    public_key: RSAPublicKey

    def condition_keys(self) -> dict[str, str]:
        """kms:RecipientAttestation:ImageSha384 (= PCR0) and :PCR<n>, lower-case hex."""
        return attested_kms.request_keys(self.document.pcrs)

    def envelope(self, plaintext: bytes) -> str:
        """Base64 CiphertextForRecipient: CMS EnvelopedData to the document's key."""
        from enclavekit import cms

        return base64.b64encode(cms.build_enveloped(plaintext, self.public_key)).decode()


class _Trust:
    """The local trust anchor, created on first use (PKI generation is not free)."""

    def __init__(self) -> None:
        self.state_dir: Path | None = None
        self._anchor: Any = None
        self._lock = threading.Lock()

    def configure(self, state_dir: Path) -> None:
        with self._lock:
            if self.state_dir != Path(state_dir):
                self.state_dir, self._anchor = Path(state_dir), None

    def anchor(self) -> Any:
        with self._lock:
            if self._anchor is None:
                if self.state_dir is None:
                    raise KmsRequestError(
                        "KMSInternalException",
                        "local KMS has no state dir: install() was not called",
                    )
                from enclavekit.pki import LocalPki

                self._anchor = LocalPki.load_or_create(self.state_dir).trust_anchor()
            return self._anchor


TRUST = _Trust()


def verify_recipient(recipient: Any, now: dt.datetime | None = None) -> AttestedRecipient:
    """Validate a Recipient parameter and verify its document against the local root.

    Every failure is a ValidationException: the Recipient is an input that does not satisfy
    the operation's constraints (KMS API Reference, RecipientInfo / Common Errors). AWS does
    not document a dedicated error code for an attestation document it cannot verify.
    """
    if not isinstance(recipient, dict):
        raise KmsRequestError(
            "ValidationException",
            "Recipient must be a structure with KeyEncryptionAlgorithm and AttestationDocument",
        )
    alg = recipient.get("KeyEncryptionAlgorithm")
    if alg != KEY_ENCRYPTION_ALGORITHM:
        raise KmsRequestError(
            "ValidationException",
            f"1 validation error detected: Value '{alg}' at 'recipient.keyEncryptionAlgorithm' "
            f"failed to satisfy constraint: Member must satisfy enum value set: "
            f"[{KEY_ENCRYPTION_ALGORITHM}]",
        )
    b64 = recipient.get("AttestationDocument")
    try:
        raw = base64.b64decode(b64 or "", validate=True)
    except (binascii.Error, TypeError, ValueError):
        raw = b""
    if not 1 <= len(raw) <= MAX_ATTESTATION_DOCUMENT:
        raise KmsRequestError(
            "ValidationException",
            "1 validation error detected: Value at 'recipient.attestationDocument' failed to "
            f"satisfy constraint: Member must have length between 1 and {MAX_ATTESTATION_DOCUMENT}",
        )
    from enclavekit import attestation

    anchor = TRUST.anchor()  # outside the try: a missing anchor is KMS's fault, not the caller's
    try:
        doc = attestation.verify(raw, anchor, at=now or dt.datetime.now(dt.UTC))
    except EnclaveKitError as exc:
        raise KmsRequestError(
            "ValidationException", f"The attestation document is not valid: {exc}"
        ) from None
    if not doc.public_key:
        raise KmsRequestError(
            "ValidationException", "The attestation document does not contain a public key"
        )
    try:
        key = load_der_public_key(doc.public_key)
    except ValueError:
        key = None
    if not isinstance(key, RSAPublicKey):
        raise KmsRequestError(
            "ValidationException",
            "The public key in the attestation document must be an RSA key in DER "
            "SubjectPublicKeyInfo form",
        )
    return AttestedRecipient(doc, key)


def key_policy_text(policy: Any) -> str:
    """moto keeps CFN-created key policies as dicts; KMS always answers a JSON string."""
    if policy is None:
        return "{}"
    return policy if isinstance(policy, str) else json.dumps(policy)


def parse_key_policy(text: Any) -> Policy:
    """A key policy for PutKeyPolicy/CreateKey; MalformedPolicyDocumentException if invalid."""
    try:
        return parse_policy(key_policy_text(text))
    except PolicyDocumentError as exc:
        raise KmsRequestError("MalformedPolicyDocumentException", str(exc)) from None


def request_keys(
    caller: Caller, action: str, params: dict[str, Any], recipient: AttestedRecipient | None
) -> dict[str, Any]:
    """The condition keys of a request (kms:ViaService is never present locally)."""
    now = dt.datetime.now(dt.UTC)
    keys: dict[str, Any] = {
        "kms:CallerAccount": caller.account,
        "aws:PrincipalArn": caller.principal,
        "aws:PrincipalAccount": caller.account,
        "aws:PrincipalType": {"root": "Account", "user": "User", "role": "AssumedRole"}[
            caller.kind
        ],
        "aws:SecureTransport": "false",
        "aws:CurrentTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "aws:EpochTime": str(int(now.timestamp())),
    }
    if action in ENCRYPTION_ALGORITHM_ACTIONS:
        keys["kms:EncryptionAlgorithm"] = params.get("EncryptionAlgorithm") or "SYMMETRIC_DEFAULT"
    context = params.get("EncryptionContext") or params.get("SourceEncryptionContext")
    if isinstance(context, dict) and context:
        keys["kms:EncryptionContextKeys"] = sorted(context)
        for k, v in context.items():
            keys[f"kms:EncryptionContext:{k}"] = str(v)
    if recipient is not None:
        keys.update(recipient.condition_keys())
    return keys


def authorize_key(
    caller: Caller, action: str, key_arn: str, key_policy: Any, keys: dict[str, Any]
) -> Decision:
    """KMS authorization of `kms:<action>` on a key for the caller."""
    try:
        policy = parse_policy(key_policy_text(key_policy))
    except PolicyDocumentError:
        policy = Policy(statements=())  # an unreadable key policy allows nobody
    ctx = RequestContext(
        principal=caller.principal,
        account=caller.account,
        action=f"kms:{action}",
        resource=key_arn,
        keys=keys,
    )
    return evaluate_kms(ctx, policy, _identity(caller))


def authorize_identity_only(caller: Caller, action: str, keys: dict[str, Any]) -> Decision:
    """Operations without a key: identity policies decide; the account root may do anything."""
    ctx = RequestContext(
        principal=caller.principal,
        account=caller.account,
        action=f"kms:{action}",
        resource="*",
        keys=keys,
    )
    if caller.kind == "root":
        return Decision(True, "the account root", ())
    d = evaluate(ctx, _identity(caller))
    if d.allowed:
        return d
    if d.statements:
        return Decision(False, "with an explicit deny in an identity-based policy", d.statements)
    return Decision(False, f"because no identity-based policy allows the kms:{action} action")


def _identity(caller: Caller) -> list[Policy]:
    out: list[Policy] = []
    for doc in identity_policies(caller):
        try:
            out.append(parse_policy(doc))
        except PolicyDocumentError:
            continue  # IAM would have refused it; moto stores it anyway
    return out


def access_denied_message(caller: Caller, action: str, resource: str, d: Decision) -> str:
    """AWS's AccessDeniedException text."""
    return (
        f"User: {caller.display_arn} is not authorized to perform: kms:{action} "
        f"on resource: {resource} {d.reason}"
    )
