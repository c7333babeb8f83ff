"""Local KMS logic beyond moto: key-policy authorization and attested `Recipient` requests.

Pure of HTTP: which keys a request touches and whether the caller may, the attested
Recipient, the one reading of a ciphertext blob that is both authorized and opened, key-pair
generation and the policy lockout check. responses.py only parses the request, calls these and
renders the answer (KmsRequestError -> the KMS wire error).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_der_public_key
from moto.kms import utils as moto_kms_utils
from moto.kms.models import KmsBackend

from enclavekit import attested_kms
from enclavekit.errors import EnclaveKitError, PolicyDocumentError
from enclavekit.policy import Decision, Policy, RequestContext, evaluate, evaluate_kms, parse_policy

from ..identity import Caller, identity_policies
from .ciphertext import (
    SealedBlob,
    decode_blob_param,
    encryption_context,
    key_state_error,
    open_blob,
    parse_blob,
)
from .exceptions import KmsRequestError

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
# Operations that use a key's material: refused for a disabled or pending-deletion key
# (AWS: DisabledException / KMSInvalidStateException), whoever asks.
CRYPTO_ACTIONS = ENCRYPTION_ALGORITHM_ACTIONS | {
    "Sign",
    "Verify",
    "GenerateMac",
    "VerifyMac",
    "GetPublicKey",
    "DeriveSharedSecret",
}
KEY_PAIR_SPECS = {
    "RSA_2048": lambda: rsa.generate_private_key(65537, 2048),
    "RSA_3072": lambda: rsa.generate_private_key(65537, 3072),
    "RSA_4096": lambda: rsa.generate_private_key(65537, 4096),
    "ECC_NIST_P256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ECC_NIST_P384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "ECC_NIST_P521": lambda: ec.generate_private_key(ec.SECP521R1()),
    "ECC_SECG_P256K1": lambda: ec.generate_private_key(ec.SECP256K1()),
}
BLOB_PARAMS = ("CiphertextBlob", "Plaintext", "Message", "Signature")
CONTEXT_PARAMS = ("EncryptionContext", "SourceEncryptionContext", "DestinationEncryptionContext")
INCORRECT_KEY = (
    "The key ID in the request does not identify a KMS key that can perform this operation."
)


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


# ------------------------------------------------------------------ keys of a request


def resolve_key(backend: KmsBackend, account: str, key_id: Any) -> Any:
    """The moto Key a KeyId/ARN/alias names, or None (moto then answers NotFound itself)."""
    if not isinstance(key_id, str) or not key_id:
        return None
    try:
        key = backend.keys.get(backend.any_id_to_key_id(key_id))
    except Exception:  # moto raises assorted errors on unknown aliases  # noqa: BLE001
        return None
    if key is not None or key_id.startswith("alias/"):
        return key
    # A key of another account (by ARN, or named inside a ciphertext blob).
    from moto.kms.models import kms_backends

    raw = key_id.rsplit("/", 1)[-1]
    for other_account in list(kms_backends):
        if other_account == account:
            continue
        accounts = kms_backends[other_account]
        other = accounts.get(backend.region_name) if hasattr(accounts, "get") else None
        if other is not None and raw in other.keys:
            return other.keys[raw]
    return None


Resolver = Callable[[Any], Any]


def validate_wire(params: dict[str, Any]) -> None:
    """Blob members must be strict base64 and contexts maps of strings, before anything runs."""
    for name in BLOB_PARAMS:
        if name in params:
            decode_blob_param(params[name], name)
    for name in CONTEXT_PARAMS:
        if name in params:
            encryption_context(params[name], name)


def sealed_blob(params: dict[str, Any], named_by: str, resolve: Resolver) -> SealedBlob:
    """The request's ciphertext, read once; `named_by` (KeyId / SourceKeyId) must agree."""
    raw = decode_blob_param(params.get("CiphertextBlob"), "CiphertextBlob")
    blob = parse_blob(raw, resolve)
    if blob.key is None:
        raise KmsRequestError(
            "InvalidCiphertextException",
            "The ciphertext refers to a KMS key that does not exist or that you cannot use",
        )
    named = params.get(named_by)
    if named is not None:
        key = resolve(named)
        if key is None:
            raise KmsRequestError("NotFoundException", f"Key '{named}' does not exist")
        if key.arn != blob.key.arn:
            raise KmsRequestError("IncorrectKeyException", INCORRECT_KEY)
    return blob


def key_checks(
    action: str, params: dict[str, Any], resolve: Resolver
) -> tuple[list[tuple[str, Any]], SealedBlob | None]:
    """(iam action, key) pairs this request needs, and the blob Decrypt/ReEncrypt pin."""
    if action == "Decrypt":
        blob = sealed_blob(params, "KeyId", resolve)
        return [("Decrypt", blob.key)], blob
    if action == "ReEncrypt":
        blob = sealed_blob(params, "SourceKeyId", resolve)
        dest = resolve(params.get("DestinationKeyId"))
        if dest is None:
            raise KmsRequestError(
                "NotFoundException", f"Key '{params.get('DestinationKeyId')}' does not exist"
            )
        return [("ReEncryptFrom", blob.key), ("ReEncryptTo", dest)], blob
    if action == "DeleteAlias":
        # AWS: kms:DeleteAlias on the key the alias points to (unknown alias: moto's NotFound)
        return [(action, resolve(params.get("AliasName")))], None
    if action == "UpdateAlias":
        # AWS: kms:UpdateAlias on the key the alias points to now *and* on the new one
        return [
            (action, resolve(params.get("AliasName"))),
            (action, resolve(params.get("TargetKeyId"))),
        ], None
    return [(action, resolve(params.get(KEY_PARAMS.get(action, "KeyId"))))], None


@dataclass(frozen=True)
class Authorized:
    """What an authorized request carries to its operation."""

    recipient: AttestedRecipient | None = None
    blob: SealedBlob | None = None  # Decrypt / ReEncrypt: exactly the blob that was checked
    account: str | None = None  # a key of another account, allowed: serve from that account


def authorize_request(
    caller: Caller, action: str, params: dict[str, Any], resolve: Resolver
) -> Authorized:
    """Verify the Recipient, authorize every key the request touches, refuse unusable keys."""
    validate_wire(params)
    recipient = None
    if action in RECIPIENT_ACTIONS and params.get("Recipient") is not None:
        recipient = verify_recipient(params["Recipient"])
    keys = request_keys(caller, action, params, recipient)
    if action in IDENTITY_ONLY_ACTIONS:
        d = authorize_identity_only(caller, action, keys)
        if not d.allowed:
            raise KmsRequestError(
                "AccessDeniedException", access_denied_message(caller, action, "*", d)
            )
        return Authorized(recipient)
    if action in NO_KEY_ACTIONS:
        return Authorized(recipient)
    checks, blob = key_checks(action, params, resolve)
    for iam_action, key in checks:
        if key is None:
            continue  # moto answers NotFoundException for the key it cannot find
        d = authorize_key(caller, iam_action, key.arn, key.policy, keys)
        if not d.allowed:
            raise KmsRequestError(
                "AccessDeniedException", access_denied_message(caller, iam_action, key.arn, d)
            )
    if action in CRYPTO_ACTIONS:
        for _, key in checks:
            err = key_state_error(key)
            if err is not None:
                raise err
    owners = {key.account_id for _, key in checks if key is not None}
    account = owners.pop() if len(owners) == 1 and len(checks) == 1 else None
    return Authorized(recipient, blob, account)


# ------------------------------------------------------------------ operations


def re_encrypt(
    blob: SealedBlob, source_context: dict[str, str], dest: Any, dest_context: dict[str, str]
) -> bytes:
    """Open the authorized blob and seal its plaintext under the authorized destination key."""
    plaintext = open_blob(blob, source_context)
    return moto_kms_utils.encrypt(
        master_keys={dest.id: dest},
        key_id=dest.id,
        plaintext=plaintext,
        encryption_context=dest_context,
    )


def generate_key_pair(spec: Any) -> tuple[bytes, bytes]:
    """(PKCS#8 private DER, SubjectPublicKeyInfo DER) of a new key pair of `spec`."""
    if spec not in KEY_PAIR_SPECS:
        raise KmsRequestError(
            "ValidationException",
            f"1 validation error detected: Value '{spec}' at 'keyPairSpec' failed to satisfy "
            f"constraint: Member must satisfy enum value set: [{', '.join(KEY_PAIR_SPECS)}]",
        )
    private = KEY_PAIR_SPECS[spec]()
    private_der = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_der, public_der


def lockout_check(caller: Caller | None, policy_text: Any, key_arn: str, bypass: bool) -> None:
    """AWS refuses a key policy that would stop the caller from ever changing it."""
    policy = parse_key_policy(policy_text)
    if bypass or caller is None:
        return
    ctx = RequestContext(
        caller.principal,
        caller.account,
        "kms:PutKeyPolicy",
        key_arn,
        request_keys(caller, "PutKeyPolicy", {}, None),
    )
    if not evaluate_kms(ctx, policy, _identity(caller)).allowed:
        raise KmsRequestError(
            "MalformedPolicyDocumentException",
            "The new key policy will not allow you to update the key policy in the future.",
        )
