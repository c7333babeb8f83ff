"""Wire side of the local KMS: patches on moto's KmsResponse / KmsBackend.

Parse the request, call models.py, render the answer: every request is authenticated (SigV4
recomputed) and authorized there (`models.authorize_request`); Recipient requests answer
CiphertextForRecipient (CMS) instead of plaintext. A `KmsRequestError` from the logic becomes
the KMS JSON error here, and nowhere else.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable
from typing import Any

from moto.kms import utils as moto_kms_utils
from moto.kms.models import KmsBackend
from moto.kms.responses import KmsResponse

from ..identity import AuthFailure, Caller, authenticate
from . import models
from .ciphertext import SealedBlob, context_aad, encryption_context, open_blob
from .exceptions import KmsError, KmsRequestError
from .models import AttestedRecipient, key_policy_text

_PATCHED = "_enclavekit_kms_patched"
_ORIG: dict[str, Any] = {}


def _wire(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run `fn`, answering a KmsRequestError of the logic as KMS's JSON error."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KmsRequestError as exc:
            raise KmsError.of(exc) from None

    return run


def _params(self: KmsResponse) -> dict[str, Any]:
    try:
        body = json.loads(self.body or "{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _resolve(self: KmsResponse, key_id: Any) -> Any:
    return models.resolve_key(self.kms_backend, self.current_account, key_id)


@_wire
def _authorize(self: KmsResponse, resource: str = "*") -> None:
    """Replaces moto's no-op IAM hook: authenticate, then models.authorize_request."""
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
    self._ek_caller = caller
    self._ek_recipient = None
    self._ek_blob = None
    done = models.authorize_request(
        caller, self._get_action(), _params(self), lambda key_id: _resolve(self, key_id)
    )
    self._ek_recipient, self._ek_blob = done.recipient, done.blob
    if done.account is not None:
        self.current_account = done.account


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


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@_wire
def decrypt(self: KmsResponse) -> str:
    """Decrypt exactly the blob and key that were authorized (never moto's lenient path)."""
    params = _params(self)
    blob = _pinned_blob(self)
    context = encryption_context(params.get("EncryptionContext"), "EncryptionContext")
    out = {
        "KeyId": blob.key_arn,
        "Plaintext": _b64(open_blob(blob, context)),
        "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
    }
    return _seal(self, out, "Plaintext")


@_wire
def re_encrypt(self: KmsResponse) -> str:
    """ReEncrypt: open the authorized blob, seal under the authorized destination key."""
    params = _params(self)
    blob = _pinned_blob(self)
    dest = _resolve(self, params.get("DestinationKeyId"))
    source_ctx = encryption_context(
        params.get("SourceEncryptionContext"), "SourceEncryptionContext"
    )
    dest_ctx = encryption_context(
        params.get("DestinationEncryptionContext"), "DestinationEncryptionContext"
    )
    new_blob = models.re_encrypt(blob, source_ctx, dest, dest_ctx)
    return json.dumps(
        {
            "CiphertextBlob": _b64(new_blob),
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


@_wire
def generate_data_key_pair(self: KmsResponse) -> str:
    """GenerateDataKeyPair (absent from moto 5.2.5)."""
    params = _params(self)
    key_id, spec = params.get("KeyId"), params.get("KeyPairSpec")
    self._validate_key_id(key_id)
    private_der, public_der = models.generate_key_pair(spec)
    blob, arn = self.kms_backend.encrypt(
        key_id=self.kms_backend.any_id_to_key_id(key_id),
        plaintext=private_der,
        encryption_context=params.get("EncryptionContext") or {},
    )
    out = {
        "KeyId": arn,
        "KeyPairSpec": spec,
        "PrivateKeyCiphertextBlob": _b64(blob),
        "PrivateKeyPlaintext": _b64(private_der),
        "PublicKey": _b64(public_der),
    }
    return _seal(self, out, "PrivateKeyPlaintext")


def generate_data_key_pair_without_plaintext(self: KmsResponse) -> str:
    self._ek_recipient = None
    out = json.loads(generate_data_key_pair(self))
    out.pop("PrivateKeyPlaintext", None)
    return json.dumps(out)


def _caller(self: KmsResponse) -> Caller | None:
    return getattr(self, "_ek_caller", None)


@_wire
def put_key_policy(self: KmsResponse) -> str:
    params = _params(self)
    key = _resolve(self, params.get("KeyId"))
    if key is not None:
        bypass = bool(params.get("BypassPolicyLockoutSafetyCheck"))
        models.lockout_check(_caller(self), params.get("Policy"), key.arn, bypass)
    return _ORIG["put_key_policy"](self)


@_wire
def create_key(self: KmsResponse) -> str:
    params = _params(self)
    if params.get("Policy") is not None:
        arn = f"arn:aws:kms:{self.region}:{self.current_account}:key/*"
        bypass = bool(params.get("BypassPolicyLockoutSafetyCheck"))
        models.lockout_check(_caller(self), params["Policy"], arn, bypass)
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
    handlers: dict[str, Callable[..., Any]] = {
        "_authenticate_and_authorize_normal_action": _authorize,
        "decrypt": decrypt,
        "re_encrypt": re_encrypt,
        "generate_data_key": generate_data_key,
        "generate_random": generate_random,
        "generate_data_key_pair": generate_data_key_pair,  # absent from moto 5.2.5
        "generate_data_key_pair_without_plaintext": generate_data_key_pair_without_plaintext,
        "put_key_policy": put_key_policy,
        "create_key": create_key,
    }
    for name, fn in handlers.items():
        setattr(KmsResponse, name, fn)
    KmsBackend.get_key_policy = backend_get_key_policy  # type: ignore[method-assign]
    setattr(KmsResponse, _PATCHED, True)
