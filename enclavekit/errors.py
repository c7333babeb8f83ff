"""The one exception tree of enclavekit, documented in one place.

    EnclaveKitError                 base of everything we raise on purpose
    ├── InvalidInput (ValueError)   bad input: a file, an argument, a prop. CLI exit 2.
    │   ├── EifFormatError          an EIF that is corrupt, truncated or not an EIF
    │   ├── NsmMessageError         bytes that are not a valid NSM request/response
    │   ├── AttestationDecodeError  bytes that are not an attestation document at all
    │   ├── CmsFormatError          bytes that are not the CMS EnvelopedData KMS returns
    │   ├── PolicyDocumentError     a policy document that is not valid IAM policy grammar
    │   └── TemplateError           a template / cloud assembly that cannot be read
    ├── CheckFailed                 a check ran and said no. CLI exit 1.
    │   └── AttestationError        a well-formed document that does not verify
    ├── EmulatorError               the enclave emulator could not do what was asked
    ├── EnclaveAppError             the in-enclave program could not do what was asked (NSM, KMS)
    ├── ParentAgentError            the parent agent could not do what was asked (IMDS, S3, SSM)
    ├── BackendError                the local endpoint could not do what was asked
    └── AwsRequestError             a request the local AWS endpoint answers with AWS error `code`
        ├── AuthFailure             refused before authorization (local_backend.moto_ext.identity)
        └── KmsRequestError         refused by the local KMS (local_backend.moto_ext.kms.models)

Every message is one line that names the thing, the expected form and what was found.
An AwsRequestError never reaches a command line: the server renders it as the service's wire
error. Exceptions that stay outside the tree do so on purpose, each saying why where it is
defined: moto's own exception classes (the server renders them as AWS does), and OSError where
an emulation answers as the kernel would (a vsock port in use).

Foreign errors are translated here, in one place: `one_line` (any exception, one line),
`os_reason` (an OSError's reason), `aws_error` (botocore's ClientError: AWS's code and message,
without importing botocore, so the enclave program may use it too).
"""

from __future__ import annotations

from typing import Any


class EnclaveKitError(Exception):
    """Base class of every error enclavekit raises on purpose."""

    exit_code = 1


class InvalidInput(EnclaveKitError, ValueError):
    """Input that does not have the expected form (CLI exit status 2)."""

    exit_code = 2


class EifFormatError(InvalidInput):
    """An Enclave Image File that is corrupt, truncated or not an EIF."""


class NsmMessageError(InvalidInput):
    """Bytes that are not a valid NSM request or response."""


class AttestationDecodeError(InvalidInput):
    """Bytes that cannot be decoded as a COSE_Sign1 attestation document."""


class CmsFormatError(InvalidInput):
    """Bytes that are not the CMS EnvelopedData that KMS returns."""


class PolicyDocumentError(InvalidInput):
    """A policy document that is not valid IAM policy grammar."""


class TemplateError(InvalidInput):
    """A CloudFormation template or cloud assembly that cannot be read."""


class CheckFailed(EnclaveKitError):
    """A check ran and its answer was no (CLI exit status 1)."""

    exit_code = 1


class AttestationError(CheckFailed):
    """A well-formed attestation document that does not verify."""


class EmulatorError(EnclaveKitError):
    """The enclave emulator could not do what was asked."""


class EnclaveAppError(EnclaveKitError):
    """The program inside the enclave could not do what was asked (NSM refused, KMS denied)."""


class ParentAgentError(EnclaveKitError):
    """The parent agent could not provision its enclave (no IMDS, no role, a missing parameter)."""


class BackendError(EnclaveKitError):
    """The local AWS endpoint could not do what was asked."""


class AwsRequestError(EnclaveKitError):
    """A request the local AWS endpoint answers with AWS error `code` and `message` (the
    service's response layer renders it in its own wire form)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def one_line(exc: BaseException) -> str:
    """The exception's text on one line (white space folded), or its type when it has none."""
    return " ".join(str(exc).split()) or type(exc).__name__


def os_reason(exc: OSError) -> str:
    """Why an OS call failed, as the OS says it (`No such file or directory`)."""
    return exc.strerror or one_line(exc)


def aws_error(exc: BaseException) -> tuple[str, str] | None:
    """(code, one-line message) when AWS answered the call with an error (botocore's
    ClientError carries the parsed `response`); None when there was no answer at all."""
    response: Any = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    err = response.get("Error") or {}
    return str(err.get("Code", "?")), " ".join(str(err.get("Message", "")).split())
