"""enclavekit: AWS Nitro Enclaves as infrastructure as code, proven end to end locally.

The core: what every other part shares. The pure format modules (`errors`, `contract`, `pcr`,
`nsm`, `attestation`, `cms`, `transport`, `provisioning`, listed in enclave_app/enclave.json)
are vendored into the enclave image and import only the stdlib, cbor2, cryptography and each
other; `contract` holds every name and number that crosses a boundary (host description, CIDs,
ports, state dir layout). The rest of the core (`eif`, `build`, `pki`, `policy/`,
`attested_kms`, ...) may add boto3 and yaml.

Rooms above the core, in this package for now (tests/test_import_rules.py ROOMS): `lint/` (the
linter), `cli/` (the command; may import every room, and `local_backend` lazily), `agent` +
`agent_bundle` (the parent agent); the pytest plugin lives in the backend. A room imports the
core; the core imports no room. Imports: never `local_backend`, `enclave_constructs`, aws_cdk or
moto; the CLI's one gateway, `cli/backend.py`, imports `local_backend` inside its functions
only (tests/test_import_rules.py GATEWAYS). The package root stays import-light for the same reason.
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
