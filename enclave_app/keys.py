"""The enclave's RSA-2048 recipient key: generated at start, never leaves enclave memory.

KMS encrypts `CiphertextForRecipient` to the public key carried in the attestation document,
which must be RSA (DER SubjectPublicKeyInfo); the AWS SDK uses RSA-2048 (reference notes §1.2).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

KEY_BITS = 2048


@dataclass(frozen=True)
class RecipientKey:
    """An RSA key pair whose public half goes into every attestation document we request."""

    private_key: rsa.RSAPrivateKey = field(repr=False)
    spki_der: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> RecipientKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(private_key=key, spki_der=spki)

    @property
    def fingerprint(self) -> str:
        """SHA-256 hex of the SPKI: safe to log and report (it is the public half)."""
        return hashlib.sha256(self.spki_der).hexdigest()
