"""The emulator's side of EC2: who is told when an enclave-enabled instance starts or stops.

The parent (local_backend.parent) registers `on_instance_start(fn)` / `on_instance_stop(fn)`;
moto's instance lifecycle (instances.py; Auto Scaling through its `start_instance`) calls
`instance_started(info)` / `instance_stopped(id)`. Each instance's hooks run once per start:
a second start of a running instance is a no-op, and a stop runs only for a started instance.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("enclavekit.endpoint.ec2")


@dataclass(frozen=True)
class EnclaveInstance:
    """What the emulator needs to boot (or stop) an enclave-enabled instance's parent."""

    instance_id: str
    account_id: str
    region: str
    instance_type: str
    image_id: str
    subnet_id: str | None
    private_ip: str | None
    instance_profile_arn: str | None
    role_arns: tuple[str, ...]
    stack_name: str | None = None
    stack_id: str | None = None
    logical_id: str | None = None
    # The resource's `Metadata` with intrinsics resolved against the deployed stack.
    metadata: dict[str, Any] | None = None
    # What the instance host needs to run the instance's user data (local_backend.host).
    user_data: str | None = None  # base64, as EC2 stores it
    enclave_enabled: bool = True
    ingress: tuple[dict[str, Any], ...] = ()  # TCP/UDP rules of its security groups
    metadata_options: dict[str, str] | None = None  # HttpTokens, HttpEndpoint, ...
    tags: dict[str, str] | None = None
    availability_zone: str | None = None


_lock = threading.RLock()
_start_hooks: list[Callable[[EnclaveInstance], None]] = []
_stop_hooks: list[Callable[[EnclaveInstance], None]] = []
_started: dict[str, EnclaveInstance] = {}


def on_instance_start(fn: Callable[[EnclaveInstance], None]) -> Callable[[EnclaveInstance], None]:
    """Call `fn(info)` when an enclave-enabled instance starts (RunInstances, StartInstances, or
    a CloudFormation create/update once the stack has applied). An exception fails the request
    (a CloudFormation create then rolls back). Usable as a decorator."""
    if fn not in _start_hooks:
        _start_hooks.append(fn)
    return fn


def on_instance_stop(fn: Callable[[EnclaveInstance], None]) -> Callable[[EnclaveInstance], None]:
    """Call `fn(info)` when a started enclave-enabled instance stops or terminates (also on stack
    delete, rollback and endpoint shutdown). Exceptions are logged, never block termination."""
    if fn not in _stop_hooks:
        _stop_hooks.append(fn)
    return fn


_console_providers: list[Callable[[str], str | None]] = []


def on_console_output(fn: Callable[[str], str | None]) -> Callable[[str], str | None]:
    """`fn(instance_id) -> base64 console output | None`: what GetConsoleOutput returns."""
    if fn not in _console_providers:
        _console_providers.append(fn)
    return fn


def console_output(instance_id: str) -> str | None:
    """What GetConsoleOutput answers for `instance_id`: the first provider that knows it."""
    for fn in list(_console_providers):
        out = fn(instance_id)
        if out is not None:
            return out
    return None


def clear_hooks() -> None:
    """Forget every registered hook (tests)."""
    _start_hooks.clear()
    _stop_hooks.clear()


def started_instances() -> dict[str, EnclaveInstance]:
    """The enclave-enabled instances whose start hooks ran and whose stop hooks have not."""
    with _lock:
        return dict(_started)


def instance_started(info: EnclaveInstance) -> None:
    """Run the start hooks for `info` (a no-op if it is started already). A failing hook
    stops the instance again and the error propagates (the request or stack operation fails)."""
    with _lock:
        if info.instance_id in _started:
            return
        _started[info.instance_id] = info
    try:
        for fn in list(_start_hooks):
            fn(info)
    except Exception:
        instance_stopped(info.instance_id)
        raise


def instance_stopped(instance_id: str) -> None:
    """Run the stop hooks of a started instance (a no-op otherwise); never raises."""
    with _lock:
        info = _started.pop(instance_id, None)
    if info is None:
        return
    for fn in list(_stop_hooks):
        try:
            fn(info)
        except Exception:  # noqa: BLE001 - a stop must always complete
            log.exception("stop hook failed for %s", instance_id)


def stop_all_enclave_instances() -> None:
    """Run the stop hooks of every started enclave instance (endpoint shutdown)."""
    for instance_id in list(started_instances()):
        instance_stopped(instance_id)


def boot_again(info: EnclaveInstance) -> None:
    """Run the start hooks of an instance that was running when the endpoint stopped
    (local_backend.persist restores it); raises as a first start would."""
    instance_started(info)
