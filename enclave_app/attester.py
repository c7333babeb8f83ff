"""The enclave's view of its NSM: fresh attestation documents and its own module id.

Works on any `enclavekit.transport.NsmTransport` (real ioctl or emulated socket).
"""

from __future__ import annotations

from enclavekit import nsm
from enclavekit.errors import EnclaveAppError, EnclaveKitError
from enclavekit.transport import NsmTransport, nsm_request


class Attester:
    """Asks the NSM for attestation documents; one fresh document per call."""

    def __init__(self, transport: NsmTransport) -> None:
        self.transport = transport

    def _call(self, request: object, expected: type, what: str) -> object:
        try:
            response = nsm_request(self.transport, request)
        except EnclaveKitError as exc:
            raise EnclaveAppError(f"NSM {what}: expected a response, got {exc}") from exc
        if isinstance(response, nsm.ErrorResponse):
            raise EnclaveAppError(
                f"NSM {what}: expected {expected.__name__}, got error {response.code.name}"
            )
        if not isinstance(response, expected):
            raise EnclaveAppError(
                f"NSM {what}: expected {expected.__name__}, got {type(response).__name__}"
            )
        return response

    def describe(self) -> nsm.DescribeNSMResponse:
        """The NSM's description (module id, locked PCRs)."""
        return self._call(nsm.DescribeNSM(), nsm.DescribeNSMResponse, "DescribeNSM")  # type: ignore[return-value]

    def attest(
        self,
        *,
        public_key: bytes | None = None,
        nonce: bytes | None = None,
        user_data: bytes | None = None,
    ) -> bytes:
        """A freshly signed COSE_Sign1 attestation document carrying these fields."""
        request = nsm.Attestation(user_data=user_data, nonce=nonce, public_key=public_key)
        response = self._call(request, nsm.AttestationResponse, "Attestation")
        return response.document  # type: ignore[attr-defined]

    def close(self) -> None:
        self.transport.close()
