"""moto extension for EC2 (Nitro Enclaves): one module per concept.

- hooks.py: the emulator's side: `on_instance_start(fn)` / `on_instance_stop(fn)` with an
  `EnclaveInstance`, console output providers, the started instances.
- instances.py: moto's Instance with EnclaveOptions, its lifecycle running those hooks, and
  `AWS::EC2::Instance` as CDK emits it.
- routing.py: route tables and subnet associations under CloudFormation.
- certificates.py: ACM for Nitro Enclaves certificate associations and their service key;
  cfn_association.py: `AWS::EC2::EnclaveCertificateIamRoleAssociation`.
- responses.py: the wire handlers (RunInstances' EnclaveOptions, the three association actions).

Imports: moto, the core, and moto_ext siblings (acm, s3, cloudformation, cfn_resource).
"""

from __future__ import annotations

from pathlib import Path

from .hooks import (
    EnclaveInstance,
    clear_hooks,
    on_console_output,
    on_instance_start,
    on_instance_stop,
    started_instances,
    stop_all_enclave_instances,
)

__all__ = [
    "EnclaveInstance",
    "clear_hooks",
    "install",
    "on_console_output",
    "on_instance_start",
    "on_instance_stop",
    "started_instances",
    "stop_all_enclave_instances",
]


def install(state_dir: Path) -> None:
    """Patch moto's EC2 models and wire handlers (idempotent)."""
    from . import cfn_association, instances, responses, routing

    _ = cfn_association  # imported, its model is known to moto's CloudFormation

    instances.install()
    routing.install()
    responses.install()
