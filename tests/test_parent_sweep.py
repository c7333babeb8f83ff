"""`local stop` after an endpoint died: its orphaned hosts are stopped, nothing else is."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from local_backend.parent import sweep

# Starts real processes and waits for the sweep to stop them.
pytestmark = pytest.mark.slow


def _host_files(instance_dir: Path, pid: int) -> None:
    """instance.json and host.json as a host's start hook and launcher write them."""
    instance_dir.mkdir(parents=True)
    (instance_dir / "instance.json").write_text(json.dumps({"boot": "user-data"}))
    (instance_dir / "host.json").write_text(json.dumps({"state": "running", "pid": pid}))


def _fake_parent(instance_dir: Path) -> subprocess.Popen[bytes]:
    """A process that names its instance dir on its command line, as the host launcher does."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", str(instance_dir)]
    )
    _host_files(instance_dir, proc.pid)
    return proc


def test_sweep_stops_orphaned_parents_only(tmp_path: Path) -> None:
    state = tmp_path / "state"
    orphan = _fake_parent(state / "instances" / "i-0aaaaaaaaaaaaaaaa")
    # a live process whose pid a stale host.json names, but which is not that host's launcher
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    _host_files(state / "instances" / "i-0bbbbbbbbbbbbbbbb", stranger.pid)
    try:
        swept = sweep(state)
        deadline = time.monotonic() + 10
        while orphan.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert orphan.poll() is not None, "the orphaned host is still running"
        assert stranger.poll() is None, "a process that is not our launcher was signalled"
        assert swept == ["i-0aaaaaaaaaaaaaaaa"]
    finally:
        for p in (orphan, stranger):
            p.kill()
            p.wait()
