"""Attested KMS calls: Decrypt / GenerateDataKey / GenerateRandom with `Recipient`.

Every call carries a *fresh* attestation document (as the AWS Nitro Enclaves SDK does) whose
`public_key` is our RSA-2048 SPKI. KMS evaluates the key policy with the document's PCRs and
answers `CiphertextForRecipient` — a CMS EnvelopedData only our private key opens — and no
plaintext. A response that carries plaintext instead is refused: it means the call was not
attested, which is exactly what the key policy must forbid.
"""

from __future__ import annotations

import logging
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from enclavekit import cms
from enclavekit.errors import EnclaveAppError, InvalidInput
from enclavekit.provisioning import Credentials

from .attester import Attester
from .keys import RecipientKey

log = logging.getLogger(__name__)
KEY_ENCRYPTION_ALGORITHM = "RSAES_OAEP_SHA_256"
_METHODS = {
    "Decrypt": "decrypt",
    "GenerateDataKey": "generate_data_key",
    "GenerateRandom": "generate_random",
}


class KmsDenied(EnclaveAppError):
    """KMS answered the call with an error (access denied, bad ciphertext, unknown key...)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class KmsUnreachable(EnclaveAppError):
    """The call never got an answer from KMS (proxy down, timeout)."""


class AttestedKms:
    """A boto3 KMS client whose every decrypting call is attested and opened in the enclave."""

    def __init__(
        self,
        *,
        attester: Attester,
        key: RecipientKey,
        region: str,
        credentials: Credentials,
        endpoint_url: str,
        proxy_url: str | None = None,
        verify: bool | str | None = None,
        timeout: float = 15.0,
    ) -> None:
        self.attester = attester
        self.key = key
        config = botocore.config.Config(
            region_name=region,
            proxies={"https": proxy_url} if proxy_url else None,
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"max_attempts": 2, "mode": "standard"},
        )
        # Explicit credentials and endpoint: no credential chain, no IMDS, no config files.
        session = boto3.session.Session(
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            aws_session_token=credentials.session_token,
            region_name=region,
        )
        self.client = session.client("kms", endpoint_url=endpoint_url, config=config, verify=verify)

    def recipient(self) -> dict[str, Any]:
        """The `Recipient` parameter with a document freshly signed by the NSM."""
        return {
            "KeyEncryptionAlgorithm": KEY_ENCRYPTION_ALGORITHM,
            "AttestationDocument": self.attester.attest(public_key=self.key.spki_der),
        }

    def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        try:
            return getattr(self.client, _METHODS[operation])(Recipient=self.recipient(), **params)
        except botocore.exceptions.ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", "Unknown"))
            message = str(err.get("Message", "")).replace("\n", " ")[:300]
            raise KmsDenied(
                f"KMS {operation}: expected CiphertextForRecipient, got {code}: {message}", code
            ) from None
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise KmsUnreachable(
                f"KMS {operation}: expected an answer through the vsock proxy, got "
                f"{type(exc).__name__}: {exc}"
            ) from None

    def _open(self, operation: str, response: dict[str, Any]) -> bytes:
        if response.get("Plaintext"):
            raise EnclaveAppError(
                f"KMS {operation}: expected CiphertextForRecipient and no plaintext, got "
                "plaintext (the Recipient was ignored, so the call was not attested)"
            )
        envelope = response.get("CiphertextForRecipient")
        if not envelope:
            raise EnclaveAppError(
                f"KMS {operation}: expected CiphertextForRecipient, got a response without it"
            )
        try:
            return cms.open_enveloped(envelope, self.key.private_key)
        except InvalidInput as exc:
            raise EnclaveAppError(
                f"KMS {operation}: CiphertextForRecipient does not open with our key ({exc})"
            ) from None

    def decrypt(
        self,
        ciphertext: bytes,
        *,
        key_id: str | None = None,
        encryption_context: dict[str, str] | None = None,
    ) -> bytes:
        """Plaintext of a KMS CiphertextBlob, released only to this attested enclave."""
        params: dict[str, Any] = {"CiphertextBlob": ciphertext}
        if key_id:
            params["KeyId"] = key_id
        if encryption_context:
            params["EncryptionContext"] = encryption_context
        return self._open("Decrypt", self._call("Decrypt", **params))

    def generate_data_key(self, key_id: str, key_spec: str = "AES_256") -> tuple[bytes, bytes]:
        """(plaintext data key, CiphertextBlob): the plaintext reaches only this enclave."""
        response = self._call("GenerateDataKey", KeyId=key_id, KeySpec=key_spec)
        return self._open("GenerateDataKey", response), response["CiphertextBlob"]

    def generate_random(self, number_of_bytes: int) -> bytes:
        """Random bytes from KMS, encrypted to this enclave on the way."""
        return self._open(
            "GenerateRandom", self._call("GenerateRandom", NumberOfBytes=number_of_bytes)
        )

    def close(self) -> None:
        self.client.close()
