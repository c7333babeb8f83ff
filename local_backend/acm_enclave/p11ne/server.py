"""The provisioning RPC server (AWS's `p11ne-server vsock 10000`, src/vtok_srv/worker.rs).

Each call does what vtok_srv's worker does, in the same order and with the same errors:
AddToken checks the label is free, decrypts every key, then takes the first free slot;
RefreshToken re-decrypts the first key and requires the same PEM; UpdateToken keeps the
token's old label and PIN (as vtok_srv does) and replaces its keys; DescribeToken answers
each key's URI. Keys are decrypted with KMS `Decrypt` carrying `Recipient` {a fresh attestation
document, RSAES_OAEP_SHA_256}, no KeyId and no EncryptionContext (as the AWS Nitro Enclaves
SDK's `aws_kms_decrypt_blocking`), through the parent's vsock-proxy at (3, 8000) to
`kms.<region>.amazonaws.com`, over TLS checked against the image's trust store
(enclave_app/trust.py); `CiphertextForRecipient` is opened here.

One addition to AWS's schema: DescribeToken's answer carries `signatures`, the number of
signatures the token has made (libp11ne.so counts them), so the parent can check that TLS
handshakes were signed in the enclave. AWS's agent ignores fields it does not know.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import socket
from collections.abc import Callable
from typing import Any

from enclave_app.kms import AttestedKms, KmsDenied, KmsUnreachable
from enclavekit.errors import EnclaveAppError, InvalidInput
from enclavekit.provisioning import Credentials

from . import rpc
from .device import Device, DeviceError, Key

log = logging.getLogger("p11ne.server")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")

# (envelope key, ciphertext) -> plaintext; raises KmsDenied / KmsUnreachable / EnclaveAppError
Decryptor = Callable[[rpc.EnvelopeKey, bytes], bytes]


class Worker:
    """Answers one parsed request against the device."""

    def __init__(self, device: Device, decrypt: Decryptor) -> None:
        self.device = device
        self.decrypt = decrypt

    def handle(self, request: rpc.Request) -> Any:
        """The JSON answer: {"Ok": ...} or {"Err": ...}."""
        try:
            rpc.validate(request)
            with self.device.lock:
                self.device.expire()
                ok = getattr(self, request.call)(**request.args)
        except rpc.ApiError as exc:
            log.warning("%s: %s", request.call, exc.value)
            return {"Err": exc.value}
        except DeviceError as exc:
            log.error("%s: %s", request.call, exc)
            return {"Err": "InternalError"}
        return {"Ok": ok}

    # ------------------------------------------------------------------ calls
    def AddToken(self, token: rpc.Token) -> Any:  # noqa: N802 - the wire's call names
        device = self.device
        if device.find(token.label) is not None:
            raise rpc.ApiError("TokenLabelInUse")
        keys = self._decrypt_keys(token.keys, token.envelope_key)
        free = next((i for i, s in enumerate(device.slots) if s is None), None)
        if free is None:
            raise rpc.ApiError("TooManyTokens")
        self._put(free, token.label, token.pin, keys)
        log.info("token %r added in slot %d with %d key(s)", token.label, free, len(keys))
        return "None"

    def DescribeDevice(self) -> Any:  # noqa: N802
        tokens = [
            {"label": s.label, "slot_id": i, "ttl_secs": self._ttl(s)}
            for i, s in enumerate(self.device.slots)
            if s is not None
        ]
        return {
            "DeviceDescription": {
                "free_slot_count": rpc.MAX_SLOTS - len(tokens),
                "tokens": tokens,
            }
        }

    def DescribeToken(self, label: str, pin: str) -> Any:  # noqa: N802
        index, slot = self._slot(label, pin)
        return {
            "TokenDescription": {
                "label": slot.label,
                "slot_id": index,
                "ttl_secs": self._ttl(slot),
                "keys": [
                    {
                        "label": k.label,
                        "id": k.id,
                        "uri": rpc.key_uri(index, slot.label, k.id, k.label),
                    }
                    for k in slot.keys
                ],
                "signatures": self.device.signatures(slot.label),
            }
        }

    def RefreshToken(self, label: str, pin: str, envelope_key: rpc.EnvelopeKey) -> Any:  # noqa: N802
        _index, slot = self._slot(label, pin)
        if not slot.keys:
            raise rpc.ApiError("EmptyToken")
        first = slot.keys[0]
        blob = _b64(first.encrypted_pem_b64)
        try:
            fresh = self.decrypt(envelope_key, blob).decode()
        except (EnclaveAppError, InvalidInput, UnicodeDecodeError) as exc:
            log.warning("RefreshToken %r: %s", label, exc)
            raise rpc.ApiError("TokenRefreshFailed") from None
        if fresh != first.pem:
            raise rpc.ApiError("TokenRefreshFailed")
        del fresh
        slot.expiry = _expiry()
        log.info("token %r refreshed with a fresh attestation", label)
        return "None"

    def RemoveToken(self, label: str, pin: str) -> Any:  # noqa: N802
        index, _slot = self._slot(label, pin)
        self.device.remove(index)
        log.info("token %r removed from slot %d", label, index)
        return "None"

    def UpdateToken(self, label: str, pin: str, token: rpc.Token) -> Any:  # noqa: N802
        device = self.device
        if label != token.label and device.find(token.label) is not None:
            raise rpc.ApiError("TokenLabelInUse")
        index, _slot = self._slot(label, pin)
        keys = self._decrypt_keys(token.keys, token.envelope_key)
        self._put(index, label, pin, keys)  # vtok_srv keeps the old label and PIN
        log.info("token %r updated in slot %d with %d key(s)", label, index, len(keys))
        return "None"

    # ------------------------------------------------------------------ internals
    def _slot(self, label: str, pin: str) -> tuple[int, Any]:
        index = self.device.find(label)
        if index is None:
            raise rpc.ApiError("TokenNotFound")
        slot = self.device.slots[index]
        if slot.pin != pin:
            raise rpc.ApiError("AccessDenied")
        return index, slot

    def _put(self, index: int, label: str, pin: str, keys: tuple[Key, ...]) -> None:
        try:
            self.device.put(index, label, pin, keys)
        except DeviceError as exc:
            log.error("token %r: %s", label, exc)
            raise rpc.ApiError("TokenProvisioningFailed") from None

    def _decrypt_keys(
        self, keys: tuple[rpc.PrivateKey, ...], envelope: rpc.EnvelopeKey
    ) -> tuple[Key, ...]:
        out = []
        for key in keys:
            blob = _b64(key.encrypted_pem_b64)
            try:
                plain = self.decrypt(envelope, blob)
            except (EnclaveAppError, InvalidInput) as exc:
                log.error("key %r: KMS Decrypt failed: %s", key.label, exc)
                raise rpc.ApiError("KmsDecryptFailed") from None
            try:
                pem = plain.decode()
            except UnicodeDecodeError:
                raise rpc.ApiError("TokenProvisioningFailed") from None
            finally:
                del plain
            log.info("key %r decrypted with attestation; kept in enclave memory", key.label)
            out.append(Key(key.id, key.label, pem, key.encrypted_pem_b64, key.cert_pem))
        return tuple(out)

    @staticmethod
    def _ttl(slot: Any) -> int:
        import time

        return max(int(slot.expiry - time.monotonic()), 0)


def _expiry() -> float:
    import time

    return time.monotonic() + rpc.TOKEN_EXPIRY_SECS


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise rpc.ApiError("TokenKeyDecodingFailed") from None


class KmsDecryptor:
    """Attested KMS Decrypt as the AWS Nitro Enclaves SDK makes it from inside p11ne."""

    def __init__(self, attester: Any, key: Any, forwarder: Any, verify: bool | str) -> None:
        self.attester, self.key, self.forwarder, self.verify = attester, key, forwarder, verify

    def __call__(self, envelope: rpc.EnvelopeKey, ciphertext: bytes) -> bytes:
        if not _REGION.match(envelope.region):
            raise EnclaveAppError(f"region: expected an AWS region, found {envelope.region!r}")
        try:
            creds = Credentials(
                envelope.access_key_id, envelope.secret_access_key, envelope.session_token or None
            )
        except InvalidInput as exc:
            raise EnclaveAppError(f"credentials: {exc}") from None
        kms = AttestedKms(
            attester=self.attester,
            key=self.key,
            region=envelope.region,
            credentials=creds,
            endpoint_url=f"https://kms.{envelope.region}.amazonaws.com",
            proxy_url=self.forwarder(envelope.region),
            verify=self.verify,
            timeout=10.0,
        )
        try:
            return kms.decrypt(ciphertext)
        except (KmsDenied, KmsUnreachable):
            raise
        finally:
            kms.close()


def serve_connection(conn: socket.socket, worker: Worker) -> None:
    """One request, one answer (or none for a request that does not parse), then close."""
    with conn:
        conn.settimeout(rpc.TIMEOUT_S)
        try:
            request = rpc.parse_request(rpc.read_request(conn))
        except (rpc.ParseError, OSError) as exc:
            log.warning("RPC request refused (no answer): %s", exc)
            return
        # A KMS round trip takes longer than AWS's 1 s; the client waits for the answer.
        conn.settimeout(None)
        answer = worker.handle(request)
        conn.settimeout(rpc.TIMEOUT_S)
        try:
            conn.sendall(rpc.encode_response(answer))
        except OSError as exc:
            log.warning("RPC answer not delivered: %s", exc)
