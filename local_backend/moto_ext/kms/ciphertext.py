"""One reading of a KMS ciphertext blob, used for both authorization and decryption.

Why this module exists: authorizing against one key and decrypting with another is the worst
bug a KMS can have. moto decodes `CiphertextBlob` leniently (non-base64 characters dropped)
and decrypts with the key named *inside* the blob, whatever the request says; an authorizer
that reads the blob differently (strictly, or from `SourceKeyId`) then checks the wrong key, or
none. So the blob is decoded here once, strictly, its key resolved once, and the very same
`SealedBlob` is what the authorizer checks and what `open_blob` decrypts.

The blob layout is moto's (key id, IV, GCM tag, body: not AWS's, which is opaque anyway); the
additional authenticated data binding the encryption context is our own canonical encoding
(`context_aad`), which, unlike moto's plain concatenation of keys and values, is unambiguous:
`{"tenan": "tA"}` and `{"tenant": "A"}` give different bytes.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from moto.kms.utils import HEADER_LEN, IV_LEN, KEY_ID_LEN, TAG_LEN

from .exceptions import KmsRequestError

MAX_CIPHERTEXT_BLOB = 6144  # API_Decrypt: CiphertextBlob length 1..6144
MAX_CONTEXT_ENTRIES = 64  # we refuse absurd contexts before they cost anything
_AAD_MAGIC = b"enclavekit-kms-ec-v1\x00"


def decode_blob_param(value: Any, field: str) -> bytes:
    """A JSON-protocol blob member, base64 decoded strictly (AWS: SerializationException).

    AWS's JSON protocol refuses a blob that is not valid base64 before any operation runs; it
    never drops characters and carries on.
    """
    if not isinstance(value, str):
        raise KmsRequestError(
            "SerializationException",
            f"{field}: expected a base64-encoded string, got {type(value).__name__}",
        )
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise KmsRequestError(
            "SerializationException",
            f"{field}: expected base64 (A-Z a-z 0-9 + / =), got a value that does not decode",
        ) from None


def encryption_context(value: Any, field: str) -> dict[str, str]:
    """A validated encryption context: a map of string to string (AWS refuses anything else)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise KmsRequestError(
            "SerializationException", f"{field}: expected a map of string to string"
        )
    if len(value) > MAX_CONTEXT_ENTRIES:
        raise KmsRequestError(
            "ValidationException",
            f"{field}: expected at most {MAX_CONTEXT_ENTRIES} entries, got {len(value)}",
        )
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise KmsRequestError(
                "SerializationException",
                f"{field}: expected a map of string to string, got {k!r}: {type(v).__name__}",
            )
    return dict(value)


def context_aad(encryption_context: Mapping[str, str] | None) -> bytes:
    """The AAD binding an encryption context: every key and value length-prefixed, sorted.

    Installed in place of moto's `_serialize_encryption_context`, so everything moto encrypts
    (Encrypt, GenerateDataKey*, ReEncrypt's output) and everything we open use the same bytes.
    """
    out = bytearray(_AAD_MAGIC)
    items = sorted((encryption_context or {}).items())
    out += struct.pack(">I", len(items))
    for k, v in items:
        for part in (k.encode("utf-8"), v.encode("utf-8")):
            out += struct.pack(">I", len(part)) + part
    return bytes(out)


@dataclass(frozen=True)
class SealedBlob:
    """A parsed ciphertext blob and the moto Key object it names (None: no such key)."""

    key_id: str
    iv: bytes
    tag: bytes
    body: bytes
    key: Any

    @property
    def key_arn(self) -> str | None:
        return None if self.key is None else self.key.arn


def parse_blob(raw: bytes, resolve: Any) -> SealedBlob:
    """Split `raw` into its parts and resolve the key it names with `resolve(key_id)`.

    A blob too short, too long, or whose key-id field is not a key id is not a ciphertext
    (InvalidCiphertextException, as AWS answers for any blob it cannot read).
    """
    if not HEADER_LEN < len(raw) <= MAX_CIPHERTEXT_BLOB:
        raise KmsRequestError(
            "InvalidCiphertextException",
            "The ciphertext is invalid: expected a KMS ciphertext blob of "
            f"{HEADER_LEN + 1}..{MAX_CIPHERTEXT_BLOB} bytes, got {len(raw)}",
        )
    try:
        key_id = raw[:KEY_ID_LEN].decode("ascii")
    except UnicodeDecodeError:
        key_id = ""
    if not _looks_like_key_id(key_id):
        raise KmsRequestError(
            "InvalidCiphertextException",
            "The ciphertext is invalid: it does not name a KMS key",
        )
    iv = raw[KEY_ID_LEN : KEY_ID_LEN + IV_LEN]
    tag = raw[KEY_ID_LEN + IV_LEN : HEADER_LEN]
    assert len(tag) == TAG_LEN
    return SealedBlob(key_id, iv, tag, raw[HEADER_LEN:], resolve(key_id))


def _looks_like_key_id(text: str) -> bool:
    """moto key ids are UUIDs, or `mrk-` + 32 hex for multi-Region keys (36 characters)."""
    allowed = set("0123456789abcdef-")
    return (
        len(text) == KEY_ID_LEN
        and (text.startswith("mrk-") or text.count("-") == 4)
        and set(text.removeprefix("mrk-")) <= allowed
    )


def open_blob(blob: SealedBlob, context: Mapping[str, str]) -> bytes:
    """Decrypt `blob` with the key it names, binding `context` (InvalidCiphertextException)."""
    if blob.key is None:
        raise KmsRequestError(
            "InvalidCiphertextException",
            "The ciphertext refers to a KMS key that does not exist or that you cannot use",
        )
    try:
        return AESGCM(blob.key.key_material).decrypt(
            blob.iv, blob.body + blob.tag, context_aad(context)
        )
    except (InvalidTag, ValueError):
        # wrong encryption context, tampered body, or a key of another kind: AWS says only this
        raise KmsRequestError("InvalidCiphertextException", "") from None


_STATE_WORDS = {"PendingDeletion": "pending deletion", "PendingImport": "pending import"}


def key_state_error(key: Any) -> KmsRequestError | None:
    """AWS refuses cryptographic use of a disabled or pending-deletion key.

    The state is read first: moto also clears `enabled` when it schedules a deletion, and AWS
    answers KMSInvalidStateException (not DisabledException) for a key pending deletion.
    """
    state = getattr(key, "key_state", "Enabled")
    if state not in ("Enabled", "Disabled", None):
        word = _STATE_WORDS.get(state, state)
        return KmsRequestError("KMSInvalidStateException", f"{key.arn} is {word}.")
    if state == "Disabled" or getattr(key, "enabled", True) is False:
        return KmsRequestError("DisabledException", f"{key.arn} is disabled.")
    return None
