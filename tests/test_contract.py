"""enclavekit.contract is the one definition of what crosses the boundaries.

A name of the contract written out again as a literal elsewhere is a second definition that can
drift: this test finds the distinctive ones (host description key and path, unsealed marker,
state dir and its file names, its environment variable) in the non-test tree. PENDING lists the
places still writing them, each with why; the list only shrinks (a stale entry fails too).
endpoint.json has one reader: local_backend.endpoint_file.read_endpoint.
"""

from __future__ import annotations

import ast
from pathlib import Path

from enclavekit import contract

ROOT = Path(__file__).resolve().parents[1]
TREES = ("enclavekit", "local_backend", "constructs", "enclave_app", "bench", "app.py")
VALUES = {
    contract.HOST_METADATA_KEY,
    contract.HOST_CONFIG_PATH,
    contract.UNSEALED,
    str(contract.DEFAULT_STATE_DIR),
    contract.STATE_ENV,
    contract.ENDPOINT_FILE,
    contract.INSTANCE_FILE,
    contract.PARENT_FILE,
}
PENDING: dict[tuple[str, str], str] = {}


def _files() -> list[Path]:
    out: list[Path] = []
    for name in TREES:
        path = ROOT / name
        out.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return [p for p in out if p != ROOT / "enclavekit" / "contract.py"]


def test_contract_values_are_written_once() -> None:
    found: set[tuple[str, str]] = set()
    for path in _files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in VALUES:
                found.add((str(path.relative_to(ROOT)), node.value))
    new = sorted(found - set(PENDING))
    stale = sorted(set(PENDING) - found)
    assert not new, f"import these from enclavekit.contract instead: {new}"
    assert not stale, f"no longer written: remove from PENDING in {__file__}: {stale}"
