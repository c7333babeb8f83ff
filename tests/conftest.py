"""Shared fixtures. Tests that start real components stop them; nothing leaves loopback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The real AWS attestation documents (and the AWS root) from ../shared/testdata, copied into
# the repo so a clone runs its tests on its own; test_testdata_copy keeps the copy honest.
ATTESTATION_DATA = ROOT / "tests" / "data" / "attestation"
SHARED_ATTESTATION_DATA = ROOT.parent / "shared" / "testdata" / "attestation"

# jsii starts `node` at the first `import aws_cdk` (test modules import it at collection time):
# make that the project's Node.js 22, not an end-of-life system Node.
_NODE = ROOT / "node_modules" / "node" / "bin" / "node"
if _NODE.exists():
    os.environ.setdefault("JSII_NODE", str(_NODE))


@pytest.fixture(autouse=True, scope="session")
def _no_real_aws() -> None:
    """No test process may hold a real AWS credential or profile."""
    for key in list(os.environ):
        if key.startswith("AWS_") or key.startswith("CDK_DEFAULT_"):
            del os.environ[key]
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    os.environ["AWS_CONFIG_FILE"] = os.devnull
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull


@pytest.fixture(scope="session")
def attestation_data() -> Path:
    if not ATTESTATION_DATA.is_dir():
        pytest.fail(f"real attestation documents not found at {ATTESTATION_DATA}")
    return ATTESTATION_DATA
