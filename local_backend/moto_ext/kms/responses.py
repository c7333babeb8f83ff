"""Wire side of the local KMS: patches on moto's KmsResponse / KmsBackend.

Every request is authenticated (SigV4 recomputed); every operation on a key is authorized
with the key policy and the caller's identity policies; Recipient requests answer
CiphertextForRecipient (CMS) instead of plaintext.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from moto.core.exceptions import JsonRESTError
from moto.kms import utils as moto_kms_utils
from moto.kms.models import KmsBackend
from moto.kms.responses import KmsResponse

from enclavekit.policy import RequestContext, evaluate_kms

from ..identity import AuthFailure, Caller, authenticate
from .ciphertext import (
    SealedBlob,
    context_aad,
    decode_blob_param,
    encryption_context,
    key_state_error,
    open_blob,
    parse_blob,
)
from .models import (
    ENCRYPTION_ALGORITHM_ACTIONS,
    IDENTITY_ONLY_ACTIONS,
    KEY_PARAMS,
    NO_KEY_ACTIONS,
    RECIPIENT_ACTIONS,
    AttestedRecipient,
    KmsRequestError,
    _identity,
    access_denied_message,
    authorize_identity_only,
    authorize_key,
    key_policy_text,
    parse_key_policy,
    request_keys,
    verify_recipient,
)

_PATCHED = "_enclavekit_kms_patched"
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
_ORIG: dict[str, Any] = {}
KEY_PAIR_SPECS = {
    "RSA_2048": lambda: rsa.generate_private_key(65537, 2048),
    "RSA_3072": lambda: rsa.generate_private_key(65537, 3072),
    "RSA_4096": lambda: rsa.generate_private_key(65537, 4096),
    "ECC_NIST_P256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ECC_NIST_P384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "ECC_NIST_P521": lambda: ec.generate_private_key(ec.SECP521R1()),
    "ECC_SECG_P256K1": lambda: ec.generate_private_key(ec.SECP256K1()),
}


class KmsError(JsonRESTError):
    """A KMS JSON error with its code and message (moto's own drop the message)."""

    code = 400

    def __init__(self, error_type: str, message: str, status: int = 400) -> None:
        super().__init__(error_type, message)
        self.code = status


def _params(self: KmsResponse) -> dict[str, Any]:
    try:
        body = json.loads(self.body or "{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _resolve(self: KmsResponse, key_id: Any) -> Any:
    """The moto Key a KeyId/ARN/alias names, or None (moto then answers NotFound itself)."""
    if not isinstance(key_id, str) or not key_id:
        return None
    backend = self.kms_backend
    try:
        key = backend.keys.get(backend.any_id_to_key_id(key_id))
    except Exception:  # moto raises assorted errors on unknown aliases  # noqa: BLE001
        return None
    if key is not None or key_id.startswith("alias/"):
        return key
    # A key of another account (by ARN, or named inside a ciphertext blob).
    from moto.kms.models import kms_backends

    raw = key_id.rsplit("/", 1)[-1]
    for account in list(kms_backends):
        if account == self.current_account:
            continue
        other = (
            kms_backends[account].get(self.region)
            if hasattr(kms_backends[account], "get")
            else None
        )
        if other is not None and raw in other.keys:
            return other.keys[raw]
    return None


BLOB_PARAMS = ("CiphertextBlob", "Plaintext", "Message", "Signature")
CONTEXT_PARAMS = ("EncryptionContext", "SourceEncryptionContext", "DestinationEncryptionContext")
INCORRECT_KEY = (
    "The key ID in the request does not identify a KMS key that can perform this operation."
)


def _validate_wire(params: dict[str, Any]) -> None:
    """Blob members must be strict base64 and contexts maps of strings, before anything runs."""
    for name in BLOB_PARAMS:
        if name in params:
            decode_blob_param(params[name], name)
    for name in CONTEXT_PARAMS:
        if name in params:
            encryption_context(params[name], name)


def _sealed(self: KmsResponse, params: dict[str, Any], named_by: str) -> SealedBlob:
    """The request's ciphertext, read once; `named_by` (KeyId / SourceKeyId) must agree."""
    raw = decode_blob_param(params.get("CiphertextBlob"), "CiphertextBlob")
    blob = parse_blob(raw, lambda key_id: _resolve(self, key_id))
    if blob.key is None:
        raise KmsRequestError(
            "InvalidCiphertextException",
            "The ciphertext refers to a KMS key that does not exist or that you cannot use",
        )
    named = params.get(named_by)
    if named is not None:
        key = _resolve(self, named)
        if key is None:
            raise KmsRequestError("NotFoundException", f"Key '{named}' does not exist")
        if key.arn != blob.key.arn:
            raise KmsRequestError("IncorrectKeyException", INCORRECT_KEY)
    return blob


def _checks(self: KmsResponse, action: str, params: dict[str, Any]) -> list[tuple[str, Any]]:
    """(iam action, key) pairs this request needs; Decrypt/ReEncrypt pin the blob they read."""
    if action == "Decrypt":
        self._ek_blob = _sealed(self, params, "KeyId")
        return [("Decrypt", self._ek_blob.key)]
    if action == "ReEncrypt":
        self._ek_blob = _sealed(self, params, "SourceKeyId")
        dest = _resolve(self, params.get("DestinationKeyId"))
        if dest is None:
            raise KmsRequestError(
                "NotFoundException", f"Key '{params.get('DestinationKeyId')}' does not exist"
            )
        return [("ReEncryptFrom", self._ek_blob.key), ("ReEncryptTo", dest)]
    if action == "DeleteAlias":
        # AWS: kms:DeleteAlias on the key the alias points to (unknown alias: moto's NotFound)
        return [(action, _resolve(self, params.get("AliasName")))]
    if action == "UpdateAlias":
        # AWS: kms:UpdateAlias on the key the alias points to now *and* on the new one
        return [
            (action, _resolve(self, params.get("AliasName"))),
            (action, _resolve(self, params.get("TargetKeyId"))),
        ]
    return [(action, _resolve(self, params.get(KEY_PARAMS.get(action, "KeyId"))))]


def _authorize(self: KmsResponse, resource: str = "*") -> None:
    """Replaces moto's no-op IAM hook: authenticate, verify Recipient, authorize."""
    action = self._get_action()
    try:
        caller = authenticate(
            self.method,
            self.uri,
            dict(self.headers.items()),
            self.raw_body if isinstance(self.raw_body, bytes) else (self.raw_body or "").encode(),
        )
    except AuthFailure as exc:
        status = 403 if exc.code == "MissingAuthenticationTokenException" else 400
        raise KmsError(exc.code, exc.message, status) from None
    params = _params(self)
    self._ek_caller = caller
    self._ek_recipient = None
    self._ek_blob = None
    try:
        _validate_wire(params)
        if action in RECIPIENT_ACTIONS and params.get("Recipient") is not None:
            self._ek_recipient = verify_recipient(params["Recipient"])
        keys = request_keys(caller, action, params, self._ek_recipient)
        if action in IDENTITY_ONLY_ACTIONS:
            d = authorize_identity_only(caller, action, keys)
            if not d.allowed:
                raise KmsError(
                    "AccessDeniedException", access_denied_message(caller, action, "*", d)
                )
            return
        if action in NO_KEY_ACTIONS:
            return
        checks = _checks(self, action, params)
        for iam_action, key in checks:
            if key is None:
                continue  # moto answers NotFoundException for the key it cannot find
            d = authorize_key(caller, iam_action, key.arn, key.policy, keys)
            if not d.allowed:
                raise KmsError(
                    "AccessDeniedException", access_denied_message(caller, iam_action, key.arn, d)
                )
        if action in CRYPTO_ACTIONS:
            for _, key in checks:
                err = key_state_error(key)
                if err is not None:
                    raise err
        owners = {key.account_id for _, key in checks if key is not None}
        if len(owners) == 1 and len(checks) == 1:
            # a key of another account, allowed: serve the call from that account's backend
            self.current_account = owners.pop()
    except KmsRequestError as exc:
        raise KmsError(exc.code, exc.message) from None


def _seal(self: KmsResponse, out: dict[str, Any], field: str) -> str:
    """With a Recipient: replace the plaintext field by CiphertextForRecipient."""
    recipient: AttestedRecipient | None = getattr(self, "_ek_recipient", None)
    if recipient is not None:
        plaintext = base64.b64decode(out.pop(field))
        out["CiphertextForRecipient"] = recipient.envelope(plaintext)
    return json.dumps(out)


def _pinned_blob(self: KmsResponse) -> SealedBlob:
    """The blob `_authorize` read and authorized; never re-read from the request."""
    blob: SealedBlob | None = getattr(self, "_ek_blob", None)
    if blob is None:  # _authorize always sets it for these actions; refuse rather than guess
        raise KmsError("KMSInternalException", "ciphertext was not authorized", 500)
    return blob


def decrypt(self: KmsResponse) -> str:
    """Decrypt exactly the blob and key that were authorized (never moto's lenient path)."""
    params = _params(self)
    blob = _pinned_blob(self)
    try:
        context = encryption_context(params.get("EncryptionContext"), "EncryptionContext")
        plaintext = open_blob(blob, context)
    except KmsRequestError as exc:
        raise KmsError(exc.code, exc.message) from None
    out = {
        "KeyId": blob.key_arn,
        "Plaintext": base64.b64encode(plaintext).decode(),
        "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
    }
    return _seal(self, out, "Plaintext")


def re_encrypt(self: KmsResponse) -> str:
    """ReEncrypt: open the authorized blob, seal under the authorized destination key."""
    params = _params(self)
    blob = _pinned_blob(self)
    dest = _resolve(self, params.get("DestinationKeyId"))
    try:
        source_ctx = encryption_context(
            params.get("SourceEncryptionContext"), "SourceEncryptionContext"
        )
        dest_ctx = encryption_context(
            params.get("DestinationEncryptionContext"), "DestinationEncryptionContext"
        )
        plaintext = open_blob(blob, source_ctx)
    except KmsRequestError as exc:
        raise KmsError(exc.code, exc.message) from None
    new_blob = moto_kms_utils.encrypt(
        master_keys={dest.id: dest},
        key_id=dest.id,
        plaintext=plaintext,
        encryption_context=dest_ctx,
    )
    return json.dumps(
        {
            "CiphertextBlob": base64.b64encode(new_blob).decode(),
            "KeyId": dest.arn,
            "SourceKeyId": blob.key_arn,
            "SourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
            "DestinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        }
    )


def generate_data_key(self: KmsResponse) -> str:
    out = json.loads(_ORIG["generate_data_key"](self))
    if getattr(self, "_ek_recipient", None) is None or self._get_action() != "GenerateDataKey":
        return json.dumps(out)
    return _seal(self, out, "Plaintext")


def generate_random(self: KmsResponse) -> str:
    return _seal(self, json.loads(_ORIG["generate_random"](self)), "Plaintext")


def generate_data_key_pair(self: KmsResponse) -> str:
    """GenerateDataKeyPair (absent from moto 5.2.5)."""
    params = _params(self)
    key_id, spec = params.get("KeyId"), params.get("KeyPairSpec")
    self._validate_key_id(key_id)
    if spec not in KEY_PAIR_SPECS:
        raise KmsError(
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
    blob, arn = self.kms_backend.encrypt(
        key_id=self.kms_backend.any_id_to_key_id(key_id),
        plaintext=private_der,
        encryption_context=params.get("EncryptionContext") or {},
    )
    out = {
        "KeyId": arn,
        "KeyPairSpec": spec,
        "PrivateKeyCiphertextBlob": base64.b64encode(blob).decode(),
        "PrivateKeyPlaintext": base64.b64encode(private_der).decode(),
        "PublicKey": base64.b64encode(public_der).decode(),
    }
    return _seal(self, out, "PrivateKeyPlaintext")


def generate_data_key_pair_without_plaintext(self: KmsResponse) -> str:
    self._ek_recipient = None
    out = json.loads(generate_data_key_pair(self))
    out.pop("PrivateKeyPlaintext", None)
    return json.dumps(out)


def _lockout_check(
    self: KmsResponse, policy_text: str, key_arn: str, params: dict[str, Any]
) -> None:
    """AWS refuses a key policy that would stop the caller from ever changing it."""
    policy = parse_key_policy(policy_text)
    if params.get("BypassPolicyLockoutSafetyCheck"):
        return
    caller: Caller | None = getattr(self, "_ek_caller", None)
    if caller is None:
        return
    ctx = RequestContext(
        caller.principal,
        caller.account,
        "kms:PutKeyPolicy",
        key_arn,
        request_keys(caller, "PutKeyPolicy", {}, None),
    )
    if not evaluate_kms(ctx, policy, _identity(caller)).allowed:
        raise KmsError(
            "MalformedPolicyDocumentException",
            "The new key policy will not allow you to update the key policy in the future.",
        )


def put_key_policy(self: KmsResponse) -> str:
    params = _params(self)
    key = _resolve(self, params.get("KeyId"))
    if key is not None:
        try:
            _lockout_check(self, params.get("Policy"), key.arn, params)
        except KmsRequestError as exc:
            raise KmsError(exc.code, exc.message) from None
    return _ORIG["put_key_policy"](self)


def create_key(self: KmsResponse) -> str:
    params = _params(self)
    if params.get("Policy") is not None:
        arn = f"arn:aws:kms:{self.region}:{self.current_account}:key/*"
        try:
            _lockout_check(self, params["Policy"], arn, params)
        except KmsRequestError as exc:
            raise KmsError(exc.code, exc.message) from None
    return _ORIG["create_key"](self)


def backend_get_key_policy(self: KmsBackend, key_id: str) -> str:
    """Always a JSON string (moto keeps CFN-created policies as dicts)."""
    return key_policy_text(self.keys[self.get_key_id(key_id)].policy)


def install() -> None:
    """Patch moto's KMS response and backend classes (idempotent)."""
    if getattr(KmsResponse, _PATCHED, False):
        return
    for name in ("decrypt", "generate_data_key", "generate_random", "put_key_policy", "create_key"):
        _ORIG[name] = getattr(KmsResponse, name)
    # One AAD encoding for everything moto encrypts and everything we open.
    moto_kms_utils._serialize_encryption_context = context_aad
    KmsResponse._authenticate_and_authorize_normal_action = _authorize  # type: ignore[method-assign]
    KmsResponse.decrypt = decrypt  # type: ignore[method-assign]
    KmsResponse.re_encrypt = re_encrypt  # type: ignore[method-assign]
    KmsResponse.generate_data_key = generate_data_key  # type: ignore[method-assign]
    KmsResponse.generate_random = generate_random  # type: ignore[method-assign]
    KmsResponse.generate_data_key_pair = generate_data_key_pair  # type: ignore[attr-defined]
    KmsResponse.generate_data_key_pair_without_plaintext = (  # type: ignore[attr-defined]
        generate_data_key_pair_without_plaintext
    )
    KmsResponse.put_key_policy = put_key_policy  # type: ignore[method-assign]
    KmsResponse.create_key = create_key  # type: ignore[method-assign]
    KmsBackend.get_key_policy = backend_get_key_policy  # type: ignore[method-assign]
    setattr(KmsResponse, _PATCHED, True)
