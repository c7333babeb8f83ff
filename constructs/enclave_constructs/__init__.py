"""CDK constructs for AWS Nitro Enclaves: hosts, images, attested keys, ACM associations.

EnclaveImage        what runs in the enclave, and its measurements (PCR0/1/2[/8])
EnclaveHost         an enclave-enabled instance (or launch template + Auto Scaling group)
AttestedKey         a KMS key whose decrypt-class actions need an attestation of an image
grant_attested_decrypt(key, grantee, image, pcrs=(0, 1, 2))  the same on any kms.Key
EnclaveCertificate  the ACM for Nitro Enclaves association with its three grants
EnclaveSecret       an SSM parameter holding an application secret sealed under a key
lint                the linter on `cdk synth` (EnclaveLintPlugin) and `acknowledge`

spec.py renders the host description (`enclavekit.contract` names its key and fields) and the
user data from one HostSpec. Imports: aws_cdk, constructs, jsii, the core (`enclavekit.*`) and
its rooms `enclavekit.lint` and `enclavekit.agent_bundle`; never `local_backend` or
`enclave_app` (tests/test_import_rules.py). Inside the package the arrows run one way:
host -> attested_key -> image, secret -> host (no cycle, even lazily).
"""

from __future__ import annotations

from ._node import use_project_node

use_project_node()  # before the first aws_cdk import starts the jsii kernel

from .attested_key import ATTESTED_ACTIONS, AttestedKey, grant_attested_decrypt  # noqa: E402
from .certificate import EnclaveCertificate  # noqa: E402
from .host import EnclaveHost, FleetOptions  # noqa: E402
from .image import EnclaveImage  # noqa: E402
from .secret import EnclaveSecret  # noqa: E402
from .spec import HostSpec  # noqa: E402

__all__ = [
    "ATTESTED_ACTIONS",
    "AttestedKey",
    "EnclaveCertificate",
    "EnclaveHost",
    "EnclaveImage",
    "EnclaveSecret",
    "FleetOptions",
    "HostSpec",
    "grant_attested_decrypt",
]
