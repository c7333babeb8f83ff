"""The local KMS's errors, as moto lays a service out: one logic error, one wire error.

`KmsRequestError` is what models.py and ciphertext.py raise (an AWS error code and message,
no HTTP); responses.py turns it into `KmsError`, the JSON error moto's server renders.
"""

from __future__ import annotations

from moto.core.exceptions import JsonRESTError

from enclavekit.errors import AwsRequestError


class KmsRequestError(AwsRequestError):
    """A request KMS answers with error `code` (e.g. ValidationException)."""


class KmsError(JsonRESTError):
    """A KMS JSON error with its code and message (moto's own drop the message)."""

    code = 400

    def __init__(self, error_type: str, message: str, status: int = 400) -> None:
        super().__init__(error_type, message)
        self.code = status

    @classmethod
    def of(cls, exc: KmsRequestError) -> KmsError:
        """The wire form of a logic error."""
        return cls(exc.code, exc.message)
