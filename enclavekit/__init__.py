"""enclavekit: AWS Nitro Enclaves as infrastructure as code, proven end to end locally.

The core: what every other part shares. The pure format modules (`errors`, `pcr`, `nsm`,
`attestation`, `cms`, `transport`, `provisioning`, listed in enclave_app/enclave.json) are
vendored into the enclave image and import only the stdlib, cbor2, cryptography and each other;
the rest (`eif`, `build`, `policy/`, `attested_kms`, `lint/`, `cli/`, ...) may add boto3 and
yaml. Imports: never `local_backend`, `enclave_constructs`, aws_cdk or moto; the exceptions
still there are listed, with why, in tests/test_import_rules.py. The package root stays
import-light for the same reason.
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
