"""Emulated parent instances: an enclave-enabled EC2 instance boots its parent and enclave.

`install(state_dir)` plugs into the EC2 extension's start/stop hooks (inside the endpoint
process). Each started instance gets its own directory `<state>/instances/<instance id>/` (its
own vsock namespace, enclaves and logs; the local PKI is shared, so the local KMS trusts every
enclave of this endpoint) and its own agent process (`python -m local_backend.parent`), which is
separate from the endpoint so the relay process can be inspected on its own (verify reads its
memory) and killed with the instance.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclavekit.errors import EmulatorError, EnclaveKitError
from enclavekit.localenv import local_aws_env
from local_backend.parent.agent import INSTANCE_FILE, METADATA_KEY, read_state, write_state

log = logging.getLogger("enclavekit.parent")

BOOT_TIMEOUT_S = 120.0
RESTART_SIGNAL = signal.SIGUSR1  # to a parent agent: start its enclave again
STOP_TIMEOUT_S = 15.0
_state_dir: Path | None = None
_procs: dict[str, subprocess.Popen[bytes]] = {}


def instances_dir(state_dir: Path) -> Path:
    return state_dir / "instances"


def instance_dir(state_dir: Path, instance_id: str) -> Path:
    return instances_dir(state_dir) / instance_id


@dataclass(frozen=True)
class ParentRecord:
    """One emulated parent as its files describe it: what was booted and how it is doing."""

    dir: Path
    info: dict[str, Any]  # instance.json
    state: dict[str, Any]  # parent.json

    @property
    def spec(self) -> dict[str, Any] | None:
        """The host's `Metadata["enclavekit:host"]`, if it has one."""
        return (self.info.get("metadata") or {}).get(METADATA_KEY)

    @property
    def agent_alive(self) -> bool:
        """Whether the agent process parent.json names still runs (and is this parent's: its
        command line names this directory, so a recycled pid does not count)."""
        from local_backend.emulator.state import pid_alive

        pid = self.state.get("pid")
        return bool(pid) and pid_alive(int(pid), str(self.dir))

    @property
    def running(self) -> bool:
        """parent.json says running and its agent is alive: a directory left behind by an
        endpoint killed mid-deploy (its processes gone) is not a running parent."""
        return self.state.get("state") == "running" and self.agent_alive

    def enclave_state(self) -> tuple[str, str | None]:
        """(State, ExitReason) of the enclave this parent runs, as describe-enclaves says:
        RUNNING, or TERMINATED with why (killed, crashed, gone)."""
        from local_backend.emulator.runtime import EnclaveManager

        enclave_id = (self.state.get("enclave") or {}).get("EnclaveID")
        if not enclave_id:
            return "NONE", "no enclave recorded in parent.json"
        try:
            record = EnclaveManager(self.dir).record(enclave_id)
        except (EnclaveKitError, OSError, ValueError) as exc:
            return "TERMINATED", f"no record of enclave {enclave_id} ({exc})"
        return str(record.get("State")), record.get("ExitReason")

    @property
    def enclave_running(self) -> bool:
        return self.enclave_state()[0] == "RUNNING"


def parents(state_dir: Path, stacks: Iterable[str] | None = None) -> list[ParentRecord]:
    """Every emulated parent recorded under `state_dir` (of `stacks`, if given), in order."""
    wanted = None if stacks is None else set(stacks)
    root = instances_dir(Path(state_dir))
    out = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            info = json.loads((d / INSTANCE_FILE).read_text())
        except (OSError, ValueError):
            continue
        if info.get("boot") == "user-data":
            continue  # an instance host (local_backend.host.hooks.hosts lists those)
        if wanted is None or info.get("stack_name") in wanted:
            out.append(ParentRecord(d, info, read_state(d)))
    return out


def _endpoint(state_dir: Path) -> str:
    try:
        return json.loads((state_dir / "endpoint.json").read_text())["endpoint"]
    except (OSError, ValueError, KeyError):
        raise EmulatorError(f"no running endpoint recorded in {state_dir}/endpoint.json") from None


def start_parent(info: Any) -> None:
    """Start hook: boot the emulated parent of `info` (an EnclaveInstance) and its enclave.

    Waits until the enclave runs (or failed); a failure raises, so a CloudFormation create
    fails and rolls back rather than leaving a host without its enclave.
    """
    assert _state_dir is not None
    spec = (info.metadata or {}).get(METADATA_KEY)
    if not spec or not spec.get("image"):
        # What AWS does: the instance runs its user data (local_backend.host).
        if info.user_data:
            from local_backend.host import hooks

            hooks.start_instance_host(_state_dir, info)
        else:
            log.info(
                "instance %s: no user data and no enclavekit image: nothing to boot",
                info.instance_id,
            )
        return
    d = instance_dir(_state_dir, info.instance_id)
    d.mkdir(parents=True, exist_ok=True)
    record = {
        "instance_id": info.instance_id,
        "account_id": info.account_id,
        "region": info.region,
        "role_arns": list(info.role_arns),
        "stack_name": info.stack_name,
        "logical_id": info.logical_id,
        "metadata": info.metadata,
        "endpoint": _endpoint(_state_dir),
        "state_dir": str(_state_dir),
    }
    (d / INSTANCE_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    (d / "parent.json").unlink(missing_ok=True)
    env = local_aws_env(record["endpoint"], region=info.region, scratch_dir=d / "aws")
    env["PYTHONUNBUFFERED"] = "1"
    with open(d / "parent.log", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "local_backend.parent", str(d)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=str(d),
        )
    _procs[info.instance_id] = proc
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while time.monotonic() < deadline:
        st = read_state(d)
        if st.get("state") == "running":
            log.info(
                "instance %s: parent pid %s, enclave %s, relay port %s",
                info.instance_id,
                proc.pid,
                st["enclave"]["EnclaveID"],
                st["relay_port"],
            )
            return
        if st.get("state") == "failed" or proc.poll() is not None:
            break
        time.sleep(0.05)
    reason = read_state(d).get("error") or "did not come up in time"
    stop_parent(info)
    raise EmulatorError(f"instance {info.instance_id}: enclave boot failed: {reason}")


def stop_parent(info: Any) -> None:
    """Stop hook: stop the parent process (which terminates its enclaves and relays)."""
    assert _state_dir is not None
    from local_backend.host import hooks

    hooks.stop_instance_host(_state_dir, info)
    proc = _procs.pop(info.instance_id, None)
    pid = proc.pid if proc else read_state(instance_dir(_state_dir, info.instance_id)).get("pid")
    if not pid:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        if proc is None:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
        time.sleep(0.05)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        if proc is not None:
            proc.wait(timeout=5)
    # Whatever the agent could not stop: enclaves of this instance must not outlive it.
    from local_backend.emulator.runtime import EnclaveManager

    with contextlib.suppress(Exception):
        EnclaveManager(instance_dir(_state_dir, info.instance_id)).terminate_all()
    log.info("instance %s: parent stopped", info.instance_id)


def instances_status(state_dir: Path) -> list[dict[str, Any]]:
    """One row per emulated parent or user-data host: what `enclavekit local status` shows."""
    from local_backend.host import hooks

    rows = hooks.hosts_status(state_dir)
    for p in parents(state_dir):
        if not p.running:
            continue
        d, info, st = p.dir, p.info, p.state
        enclave = st.get("enclave") or {}
        enclave_state, exit_reason = p.enclave_state()
        alive = enclave_state == "RUNNING"
        rows.append(
            {
                "instance_id": d.name,
                "stack": info.get("stack_name"),
                "host": info.get("logical_id"),
                "enclave_id": enclave.get("EnclaveID"),
                "cid": enclave.get("EnclaveCID"),
                "domain": st.get("domain"),
                "host_port": st.get("relay_port"),
                "enclave_state": enclave_state,
                "exit_reason": None if alive else exit_reason,
                "provisioned": alive and bool(st.get("provisioned")),
            }
        )
    return rows


def sweep(state_dir: Path) -> list[str]:
    """Stop every parent (and its enclaves) left under `state_dir` — after an endpoint that
    died without running its stop hooks. Only processes whose command line names their own
    instance directory are signalled, so a recycled pid is never hit. Returns instance ids."""
    from local_backend.emulator.runtime import EnclaveManager
    from local_backend.host import hooks

    swept = hooks.sweep_hosts(Path(state_dir))
    root = instances_dir(Path(state_dir))
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if d.name in swept or hooks.is_host_dir(d):
            continue
        pid = read_state(d).get("pid")
        alive = False
        if pid:
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                alive = str(d).encode() in cmdline
        if alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        try:
            left = EnclaveManager(d).terminate_all()
        except Exception:  # noqa: BLE001 - best effort; reported by the caller's status
            left = []
        if alive or left:
            swept.append(d.name)
    return swept


def resync(state_dir: Path) -> int:
    """Ask every running parent agent to re-sync now (after sealing a secret); returns count."""
    count = 0
    for p in parents(state_dir):
        if p.running and p.state.get("pid"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(p.state["pid"]), signal.SIGHUP)
                count += 1
    return count


def restart_enclaves(state_dir: Path, stacks: Iterable[str] | None = None) -> list[str]:
    """Ask every running parent whose enclave is no longer running to start it again (as
    `systemctl restart` of its enclave unit would; the agent then provisions it). Returns
    "instance id (why it had stopped)" for each parent asked."""
    asked = []
    for p in parents(state_dir, stacks):
        if not p.running:
            continue
        enclave_state, reason = p.enclave_state()
        if enclave_state == "RUNNING":
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(p.state["pid"]), RESTART_SIGNAL)
            asked.append(f"{p.dir.name} (enclave {enclave_state}: {reason})")
    return asked


def install(state_dir: Path) -> None:
    """Register the parent with the EC2 extension's hooks (idempotent)."""
    global _state_dir
    from local_backend.moto_ext.ec2 import on_instance_start, on_instance_stop

    _state_dir = Path(state_dir).resolve()
    # A new endpoint knows no instance yet: every parent still recorded here belongs to an
    # endpoint that died (killed mid-deploy, say). Its processes go, and its directory says
    # "stopped", so nothing takes it for a running host of a redeployed stack.
    for instance_id in sweep(_state_dir):
        log.warning("stopped the parent of %s, left by an endpoint that died", instance_id)
    for p in parents(_state_dir):
        if p.state.get("state") in ("booting", "running"):
            write_state(p.dir, state="stopped", stopped_by="endpoint start: its endpoint died")
    on_instance_start(start_parent)
    on_instance_stop(stop_parent)
    from local_backend.host import hooks
    from local_backend.moto_ext.ec2.models import on_console_output

    hooks.set_state_dir(_state_dir)
    on_console_output(hooks.console_output_of)
