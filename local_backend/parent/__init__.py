"""The EC2 start/stop hooks: every started instance boots its host from its user data.

`install(state_dir)` plugs into the EC2 extension's start/stop hooks (inside the endpoint
process). As on EC2, what an instance runs is its user data: each started instance that has one
gets a host (`local_backend.host`: its own root filesystem, namespaces, IMDS, systemd, nitro-cli
and enclaves) under `<state>/instances/<instance id>/`; an instance without user data boots
nothing. Nothing boots from `Metadata["enclavekit:host"]`. The parent side of hosts that run our
parent agent (its service, the enclave's provisioning, re-sync and restart) is read by
`local_backend.parent.view`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from local_backend.host import hooks
from local_backend.host.layout import instance_layout

log = logging.getLogger("enclavekit.parent")

_state_dir: Path | None = None


def instances_dir(state_dir: Path) -> Path:
    return state_dir / "instances"


def instance_dir(state_dir: Path, instance_id: str) -> Path:
    return instances_dir(state_dir) / instance_id


def start_parent(info: Any) -> None:
    """Start hook: an instance runs its user data in its host, as on EC2; nothing else boots.

    Our constructs' user data installs nitro-cli, fetches the EIF and the parent agent's
    zipapp and starts both as systemd units; `Metadata["enclavekit:host"]` is only a
    description (lint and verify read it), never a boot recipe. As on EC2 the instance is
    running once its host is up: a user data that fails marks the boot failed (host.json,
    console, `local status`), not the create.
    """
    assert _state_dir is not None
    if info.user_data:
        hooks.start_instance_host(_state_dir, info)
    else:
        log.info("instance %s: no user data: nothing to boot", info.instance_id)


def stop_parent(info: Any) -> None:
    """Stop hook: stop the instance's host (its services and enclaves go with it)."""
    assert _state_dir is not None
    hooks.stop_instance_host(_state_dir, info)


def instances_status(state_dir: Path) -> list[dict[str, Any]]:
    """One row per running instance host: what `enclavekit local status` shows. A host running
    our parent agent adds its service (domain, forwarded port) and whether the enclave says it
    was provisioned."""
    from local_backend.parent.view import AgentHost, agent_config, launcher_alive

    rows = []
    for row in hooks.hosts_status(state_dir):
        layout = instance_layout(state_dir, row["instance_id"])
        if not launcher_alive(layout):
            continue  # left by an endpoint that died: not a running host
        rows.append(row)
        if agent_config(layout) is None:
            continue
        st = AgentHost(layout).state()
        row.update(
            domain=st["domain"],
            host_port=st["relay_port"],
            provisioned=st["provisioned"],
            enclave_status=st["enclave_status"],
            enclave_state=st["enclave_state"],
            exit_reason=st["enclave"].get("ExitReason"),
        )
    return rows


def sweep(state_dir: Path) -> list[str]:
    """Stop every host left running under `state_dir` by an endpoint that died without
    running its stop hooks. Only a launcher whose command line names its own instance dir is
    signalled, so a recycled pid is never hit. Returns the instance ids stopped."""
    from local_backend.host import control
    from local_backend.parent.view import launcher_alive

    swept = []
    for layout in hooks.hosts(Path(state_dir)):
        if launcher_alive(layout):
            control.stop_host(layout)
            swept.append(layout.dir.name)
    return swept


def resync(state_dir: Path, stacks: Iterable[str] | None = None) -> int:
    """Ask every running parent agent to re-sync now (after sealing a secret); returns count."""
    from local_backend.parent.view import resync as _resync

    return _resync(state_dir, stacks)


def restart_enclaves(state_dir: Path, stacks: Iterable[str] | None = None) -> list[str]:
    """Restart the enclave unit of every running agent host whose enclave stopped (the agent
    then provisions it). Returns "instance id (why it had stopped)" for each."""
    from local_backend.parent.view import restart_enclaves as _restart

    return _restart(state_dir, stacks)


def install(state_dir: Path) -> None:
    """Register the hooks with the EC2 extension (idempotent)."""
    global _state_dir
    from local_backend.moto_ext.ec2 import on_console_output, on_instance_start, on_instance_stop

    _state_dir = Path(state_dir).resolve()
    # A new endpoint knows no instance yet: every host still recorded here belongs to an
    # endpoint that died (killed mid-deploy, say). Its launcher goes, and its host.json says
    # "stopped", so nothing takes it for a running host of a redeployed stack.
    for instance_id in sweep(_state_dir):
        log.warning("stopped the host of %s, left by an endpoint that died", instance_id)
    for layout in hooks.hosts(_state_dir):
        if layout.read_host().get("state") in ("booting", "running"):
            layout.write_host(state="stopped", stopped_by="endpoint start: its endpoint died")
    on_instance_start(start_parent)
    on_instance_stop(stop_parent)
    hooks.set_state_dir(_state_dir)
    on_console_output(hooks.console_output_of)
