"""Start, wait for and stop instance hosts (the machine side; used by the EC2 hooks and tests)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from enclavekit.errors import EmulatorError
from enclavekit.localenv import strip_aws_env
from local_backend.host.layout import HostLayout
from local_backend.host.rootfs import project_root

BOOT_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 15.0
_procs: dict[str, subprocess.Popen[bytes]] = {}


def start_host(layout: HostLayout, info: dict[str, Any]) -> subprocess.Popen[bytes]:
    """Write instance.json and start the launcher (its own session); returns at once."""
    layout.dir.mkdir(parents=True, exist_ok=True)
    layout.instance_file.write_text(json.dumps(info, indent=2, default=str) + "\n")
    layout.host_file.unlink(missing_ok=True)
    env = strip_aws_env(os.environ)
    env["PYTHONPATH"] = str(project_root())
    env["PYTHONUNBUFFERED"] = "1"
    with open(layout.dir / "launcher.log", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "local_backend.host.boot", str(layout.dir)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=str(layout.dir),
        )
    _procs[str(layout.dir)] = proc
    return proc


def wait_booted(layout: HostLayout, timeout: float = BOOT_TIMEOUT_S) -> dict[str, Any]:
    """Wait until cloud-init has run the user data (or the host failed); returns host.json."""
    deadline = time.monotonic() + timeout
    proc = _procs.get(str(layout.dir))
    while time.monotonic() < deadline:
        host = layout.read_host()
        # cloud-init's result can be on disk before the launcher has reported PID 1 (a reboot
        # finds the first boot's result at once): wait for both.
        if (host.get("boot") and host.get("state") == "running") or host.get("state") in (
            "failed",
            "stopped",
        ):
            return host
        if proc is not None and proc.poll() is not None:
            return layout.read_host() | {"state": layout.read_host().get("state", "failed")}
        time.sleep(0.05)
    raise EmulatorError(f"instance {layout.dir.name}: user data did not finish in {timeout:.0f} s")


def boot_error(host: dict[str, Any], console_tail: str = "") -> str | None:
    """One line saying why a boot failed, or None when it succeeded."""
    if host.get("state") == "failed":
        return f"host failed: {host.get('error')}"
    boot = host.get("boot") or {}
    if boot.get("state") != "failed":
        return None
    failures = boot.get("failures") or []
    if failures:
        f = failures[0]
        what = f" at `{f['command']}`" if f.get("command") else ""
        return f"user data failed: {Path(f['script']).name} exited {f['status']}{what}"
    return "user data failed: " + "; ".join(boot.get("errors") or [])


def stop_host(layout: HostLayout) -> None:
    """SIGTERM the launcher (PID 1 stops services, the namespaces go), then make sure."""
    proc = _procs.pop(str(layout.dir), None)
    pid = proc.pid if proc else layout.read_host().get("pid")
    if not pid or not _is_launcher(int(pid), layout):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(pid), signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        if proc is None and not _is_launcher(int(pid), layout):
            break
        time.sleep(0.05)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pid), signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def _is_launcher(pid: int, layout: HostLayout) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(layout.dir).encode() in cmdline


def console_output(layout: HostLayout) -> str:
    """The console so far (GetConsoleOutput returns the latest 64 KiB, as EC2's)."""
    try:
        data = layout.console.read_bytes()[-64 * 1024 :]
    except OSError:
        return ""
    return base64.b64encode(data).decode()


def host_exec(
    layout: HostLayout, argv: list[str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `argv` inside the running host (its namespaces, root and PID 1's environment)."""
    pid = layout.read_host().get("init_pid")
    if not pid or layout.read_host().get("state") != "running":
        raise EmulatorError(f"instance {layout.dir.name}: its host is not running")
    env = strip_aws_env(os.environ)
    env["PYTHONPATH"] = str(project_root())
    return subprocess.run(
        [sys.executable, "-m", "local_backend.host.enter", str(pid), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
