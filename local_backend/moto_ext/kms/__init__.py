"""moto extension for KMS: key policies enforced on every call, attested `Recipient` calls.

See models.py (authorization, attestation, the operations' logic), responses.py (the patches
on moto's wire side: parse, call models, render), ciphertext.py (the one reading of a blob),
exceptions.py and cfn_key.py (AWS::KMS::Key in CloudFormation, updated in place).
"""

from __future__ import annotations

from pathlib import Path

from .models import TRUST


def install(state_dir: Path) -> None:
    """Patch moto's KMS in this process; `state_dir` holds the local PKI (the trust anchor)."""
    from . import cfn_key, responses

    TRUST.configure(Path(state_dir))
    responses.install()
    cfn_key.install()
