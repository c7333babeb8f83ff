"""`local stop` after an endpoint died: its orphaned parents are stopped, nothing else is."""

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


def _fake_parent(instance_dir: Path) -> subprocess.Popen[bytes]:
    """A process that names its instance dir on its command line, as the real agent does."""
    instance_dir.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", str(instance_dir)]
    )
    (instance_dir / "parent.json").write_text(json.dumps({"state": "running", "pid": proc.pid}))
    return proc


def test_sweep_stops_orphaned_parents_only(tmp_path: Path) -> None:
    state = tmp_path / "state"
    orphan = _fake_parent(state / "instances" / "i-0aaaaaaaaaaaaaaaa")
    # a live process whose pid a stale parent.json names, but which is not that parent
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stale = state / "instances" / "i-0bbbbbbbbbbbbbbbb"
    stale.mkdir(parents=True)
    (stale / "parent.json").write_text(json.dumps({"state": "running", "pid": stranger.pid}))
    try:
        swept = sweep(state)
        deadline = time.monotonic() + 10
        while orphan.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert orphan.poll() is not None, "the orphaned parent is still running"
        assert stranger.poll() is None, "a process that is not our parent was signalled"
        assert swept == ["i-0aaaaaaaaaaaaaaaa"]
    finally:
        for p in (orphan, stranger):
            p.kill()
            p.wait()
