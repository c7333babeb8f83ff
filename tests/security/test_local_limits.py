"""Attacks 7 and 9: resource limits of the emulated host, and who may read the state dir.

7: `run-enclave --memory 99999999999` started an enclave on a 24 GB machine. An enclave's memory
   comes from the allocator's pool (or, outside a host, the machine): nitro-cli's E27 otherwise.
9: the state dir was 0755: any local user read the endpoint log and endpoint.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Target

pytestmark = pytest.mark.slow
NOBODY = 65534


def _enclavekit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "enclavekit", *args], capture_output=True, text=True, timeout=60
    )


def test_enclave_memory_is_bounded_by_the_pool_and_the_machine(tmp_path: Path) -> None:
    eif = tmp_path / "app.eif"
    eif.write_bytes(b"not read: the memory check comes first")
    state = tmp_path / "state"
    # outside a host: the machine's available memory bounds the enclave
    out = _enclavekit(
        "run-enclave", "--state-dir", str(state), "--cpu-count", "2",
        "--memory", "99999999999", "--eif-path", str(eif),
    )  # fmt: skip
    assert out.returncode == 1, out
    assert "[ E27 ] Insufficient memory available" in out.stderr
    assert "this machine's available memory" in out.stderr
    assert "Traceback" not in out.stderr
    # on a host: the allocator's pool (allocator.yaml's memory_mib) bounds it
    pool = state / "emulator" / "allocator-pool.json"
    pool.parent.mkdir(parents=True, exist_ok=True)
    pool.write_text(json.dumps({"memory_mib": 512, "cpu_count": 2}))
    out = _enclavekit(
        "run-enclave", "--state-dir", str(state), "--cpu-count", "2",
        "--memory", "1024", "--eif-path", str(eif),
    )  # fmt: skip
    assert out.returncode == 1, out
    assert "User provided `memory` is 1024 MB" in out.stderr
    assert "(512 MB of 512 MB in the allocator's pool" in out.stderr
    listed = _enclavekit("describe-enclaves", "--state-dir", str(state))
    assert json.loads(listed.stdout) == []


def _as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=30, user=NOBODY, group=NOBODY
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to user nobody needs root (CI is root)")
def test_state_dir_is_owner_only(target: Target) -> None:
    state = target.endpoint.state_dir
    assert (state.stat().st_mode & 0o777) == 0o700
    for name in ("endpoint.json", "logs/endpoint.log"):
        assert ((state / name).stat().st_mode & 0o077) == 0, name
    # what another local user gets: nothing, not even the listing
    for path in (state, state / "endpoint.json", state / "logs" / "endpoint.log"):
        cmd = ("ls", str(path)) if path.is_dir() else ("cat", str(path))
        out = _as_nobody(*cmd)
        assert out.returncode != 0 and "Permission denied" in out.stderr, (path, out)
    # every regular file the endpoint and its hosts wrote is owner-only; the exceptions are an
    # enclave image's own root filesystem, whose modes are part of the (public, measured)
    # image and which the enclave must see as built, and an instance's own disk (its host's
    # rootfs: /etc/passwd 0644 as on Amazon Linux), which its user data and services must see
    # as the AMI has it; both lie under the owner-only state dir checked above
    loose = []
    for p in state.rglob("*"):
        rel = p.relative_to(state).parts
        if p.is_symlink() or not p.is_file() or rel[0] == "clients":  # clients: the test's own
            continue
        if "enclaves" in rel and "image" in rel[rel.index("enclaves") :]:
            continue
        if rel[0] == "instances" and len(rel) > 2 and rel[2] == "rootfs":
            continue
        if p.stat().st_mode & 0o077:
            loose.append(f"{'/'.join(rel)} {oct(p.stat().st_mode & 0o777)}")
    assert loose == []
