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
    │   ├── AttestationError        a well-formed document that does not verify
    │   └── VerificationFailed      an end-to-end verify step that failed
    ├── EmulatorError               the enclave emulator could not do what was asked
    │   └── IsolationUnavailable    a kernel mechanism is not permitted here (we warn, carry on)
    ├── EnclaveAppError             the in-enclave program could not do what was asked (NSM, KMS)
    ├── ParentAgentError            the parent agent could not do what was asked (IMDS, S3, SSM)
    └── BackendError                the local endpoint could not do what was asked

Every message is one line that names the thing, the expected form and what was found.
"""

from __future__ import annotations


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


class VerificationFailed(CheckFailed):
    """An end-to-end verification step that failed."""


class EmulatorError(EnclaveKitError):
    """The enclave emulator could not do what was asked."""


class IsolationUnavailable(EmulatorError):
    """A kernel isolation mechanism that this machine does not permit."""


class EnclaveAppError(EnclaveKitError):
    """The program inside the enclave could not do what was asked (NSM refused, KMS denied)."""


class ParentAgentError(EnclaveKitError):
    """The parent agent could not provision its enclave (no IMDS, no role, a missing parameter)."""


class BackendError(EnclaveKitError):
    """The local AWS endpoint could not do what was asked."""
