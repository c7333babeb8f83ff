"""Our extensions to moto, one package per service in moto's models/responses style.

`install(state_dir)` patches moto in this process before the server starts serving; each
service package's own `install` does its part and is idempotent. Imports: moto, the core
(`enclavekit.policy`, `enclavekit.attested_kms`, ...) and `local_backend` siblings.
"""

from __future__ import annotations

import importlib
from pathlib import Path

SERVICES = (
    "internal_failure",
    "awslambda",
    "cloudformation",
    "ec2",
    "autoscaling",
    "acm",
    "acmpca",
    "s3",
    "kms",
    "elbv2",
    "secretsmanager",
    "stepfunctions",
    "ecr",
)


def install(state_dir: Path) -> None:
    """Apply every service extension (idempotent)."""
    for name in SERVICES:
        importlib.import_module(f"{__name__}.{name}").install(state_dir)
