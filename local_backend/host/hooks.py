"""The endpoint's side of instance hosts: start/stop with the EC2 instance, status, console.

`local_backend.parent`'s start hook hands every started instance that has user data to
`start_instance_host` (nothing boots from Metadata). As on EC2, the instance is *running* once
its host is up; the user data runs on after that, and a user data that fails marks the boot
failed (host.json, console, `local status`) without failing RunInstances or the stack.

Interface for readers on the machine (verify, up, tests), all under
`<state>/instances/<iid>/`: `instance.json` (`"boot": "user-data"`, the EnclaveInstance
fields), `host.json` (`state` booting|running|failed|stopped, `init_pid`, `ports`
[{port, host_port}], `warnings`, `boot` {state done|failed, errors, failures
[{script, status, command}]} once cloud-init has run), `console.log`. `hosts(state_dir)` reads
them; `host_enclaves(layout)` lists the enclaves nitro-cli runs inside a running host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from enclavekit.errors import EmulatorError
from local_backend.endpoint_file import EndpointInfo, read_endpoint
from local_backend.host import control
from local_backend.host.layout import HostLayout, instance_layout

log = logging.getLogger("enclavekit.host")


def _endpoint(state_dir: Path) -> EndpointInfo:
    info = read_endpoint(state_dir)
    if info is None:
        raise EmulatorError(f"{state_dir}: no endpoint.json: the local endpoint is not running")
    return info


def start_instance_host(state_dir: Path, info: Any) -> None:
    """Boot the host of `info` (an EnclaveInstance); returns once its launcher runs."""
    layout = instance_layout(state_dir, info.instance_id)
    record = dataclasses.asdict(info)
    record.update(
        boot="user-data",
        endpoint=_endpoint(state_dir).endpoint,
        tls_endpoint=_endpoint(state_dir).tls_endpoint,
        state_dir=str(state_dir),
        ingress=list(info.ingress),
    )
    _ensure_acm_image()
    control.start_host(layout, record)
    log.info("instance %s: host booting from its user data", info.instance_id)


def _ensure_acm_image() -> None:
    """The ACM enclave image the host's `dnf install aws-nitro-enclaves-acm` copies (built once
    per content on the machine; a host cannot build it)."""
    from local_backend.host.catalog_acm import ensure_acm_image

    try:
        ensure_acm_image()
    except Exception as exc:  # the host's dnf then names the missing file
        log.warning("ACM enclave image not built (%s: %s)", type(exc).__name__, exc)


def stop_instance_host(state_dir: Path, info: Any) -> None:
    layout = instance_layout(state_dir, info.instance_id)
    if is_host_dir(layout.dir):
        control.stop_host(layout)
        log.info("instance %s: host stopped", info.instance_id)


def is_host_dir(d: Path) -> bool:
    try:
        return HostLayout(d).read_info().get("boot") == "user-data"
    except (OSError, ValueError):
        return False


def hosts(state_dir: Path) -> list[HostLayout]:
    root = Path(state_dir) / "instances"
    return (
        [HostLayout(d) for d in sorted(root.iterdir()) if is_host_dir(d)] if root.is_dir() else []
    )


def host_enclaves(layout: HostLayout) -> list[dict[str, Any]]:
    """`nitro-cli describe-enclaves` run inside a running host (its pids and paths are the
    host's own); [] when the host is not running or has no nitro-cli."""
    if layout.read_host().get("state") != "running":
        return []
    with contextlib.suppress(Exception):
        out = control.host_exec(layout, ["nitro-cli", "describe-enclaves"])
        if out.returncode == 0:
            return json.loads(out.stdout)
    return []


def hosts_status(state_dir: Path) -> list[dict[str, Any]]:
    """One `local status` row per running instance host."""
    rows = []
    for layout in hosts(state_dir):
        host = layout.read_host()
        if host.get("state") not in ("booting", "running"):
            continue
        info = layout.read_info()
        boot = host.get("boot") or {}
        enclaves = host_enclaves(layout)
        first = enclaves[0] if enclaves else {}
        rows.append(
            {
                "instance_id": info["instance_id"],
                "stack": info.get("stack_name"),
                "host": info.get("logical_id"),
                "boot": "user-data",
                "user_data": boot.get("state", "running"),
                "boot_error": control.boot_error(host),
                "ports": host.get("ports", []),
                "enclaves": [
                    {k: e.get(k) for k in ("EnclaveID", "EnclaveCID", "State")} for e in enclaves
                ],
                "enclave_id": first.get("EnclaveID"),
                "cid": first.get("EnclaveCID"),
                "domain": None,
                "host_port": None,
                "provisioned": False,
            }
        )
    return rows


def sweep_hosts(state_dir: Path) -> list[str]:
    """Stop every host launcher left running under `state_dir`; returns instance ids."""
    swept = []
    for layout in hosts(state_dir):
        if layout.read_host().get("state") in ("booting", "running"):
            control.stop_host(layout)
            swept.append(layout.dir.name)
    return swept


_state: dict[str, Path] = {}


def set_state_dir(state_dir: Path) -> None:
    """The endpoint's state dir (parent.install calls this once)."""
    _state["dir"] = Path(state_dir)


def console_output_of(instance_id: str) -> str | None:
    """The EC2 console provider: the host's console under the endpoint's state dir."""
    state_dir = _state.get("dir")
    return console_output(state_dir, instance_id) if state_dir else None


def console_output(state_dir: Path, instance_id: str) -> str | None:
    """GetConsoleOutput's Output (base64) for a host, or None if the instance has none."""
    layout = instance_layout(state_dir, instance_id)
    if not layout.console.exists():
        return None
    return control.console_output(layout)
