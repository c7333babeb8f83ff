"""enclavekit: AWS Nitro Enclaves as infrastructure as code, proven end to end locally.

The package root stays import-light: the enclave program vendors the pure format modules
(`nsm`, `cms`, `attestation`, `pcr`, `errors`), so nothing here may pull in aws_cdk or moto.
"""

from enclavekit.errors import (
    AttestationError,
    CheckFailed,
    EifFormatError,
    EnclaveKitError,
    InvalidInput,
)

__all__ = [
    "AttestationError",
    "CheckFailed",
    "EifFormatError",
    "EnclaveKitError",
    "InvalidInput",
]
__version__ = "0.1.0"
