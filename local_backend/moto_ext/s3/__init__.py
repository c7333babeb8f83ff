"""moto extension for S3: `AWS::S3::BucketPolicy` in CloudFormation, and object helpers for the
ACM association (see models)."""

from __future__ import annotations

from pathlib import Path


def install(state_dir: Path) -> None:
    """Register the BucketPolicy resource model and fix bucket-policy conditions."""
    from . import models

    models.install()
