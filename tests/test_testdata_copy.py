"""The repo's copy of the real attestation documents is byte-identical to shared/testdata.

A clone has no `../shared`: there the copy is checked against `tests/data/attestation.sha256`,
the SHA-256 of every file of shared/testdata, committed with the copy (`sha256sum *` in that
directory). Where `../shared` exists, the source is checked against the same digests, so a
change of the source shows up as a failure here until the copy and its digests follow it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.conftest import ATTESTATION_DATA, SHARED_ATTESTATION_DATA

DIGESTS = ATTESTATION_DATA.parent / "attestation.sha256"


def _digests(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def _committed() -> dict[str, str]:
    rows = [line.split() for line in DIGESTS.read_text().splitlines() if line.strip()]
    assert all(len(r) == 2 and len(r[0]) == 64 for r in rows), f"{DIGESTS}: sha256sum lines"
    return {name: digest for digest, name in rows}


def test_copy_matches_the_committed_digests_of_shared_testdata() -> None:
    committed = _committed()
    assert len(committed) >= 8  # the root, its zip, the README and the documents
    assert _digests(ATTESTATION_DATA) == committed
    if SHARED_ATTESTATION_DATA.is_dir():  # in the project workspace: the source itself too
        assert _digests(SHARED_ATTESTATION_DATA) == committed
