"""The repo's copy of the real attestation documents is byte-identical to shared/testdata."""

from __future__ import annotations

import pytest

from tests.conftest import ATTESTATION_DATA, SHARED_ATTESTATION_DATA


def test_copy_matches_shared_testdata() -> None:
    if not SHARED_ATTESTATION_DATA.is_dir():  # a clone outside the project workspace
        pytest.skip(f"no shared test data at {SHARED_ATTESTATION_DATA} to compare the copy with")
    shared = {p.name: p.read_bytes() for p in SHARED_ATTESTATION_DATA.iterdir() if p.is_file()}
    ours = {p.name: p.read_bytes() for p in ATTESTATION_DATA.iterdir() if p.is_file()}
    assert ours == shared
