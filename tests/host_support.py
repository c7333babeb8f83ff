"""Boot an instance host straight from a user data (no endpoint needed), for the host tests."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from enclavekit.pytest_plugin import free_port
from local_backend.host import control
from local_backend.host.layout import HostLayout


def instance_info(state_dir: Path, user_data: str | bytes, **extra: Any) -> dict[str, Any]:
    raw = user_data.encode() if isinstance(user_data, str) else user_data
    info = {
        "instance_id": "i-0123456789abcdef0",
        "account_id": "123456789012",
        "region": "us-east-1",
        "instance_type": "m5.xlarge",
        "image_id": "ami-0123456789abcdef0",
        "private_ip": "10.0.0.5",
        "role_arns": [],
        "endpoint": f"http://localhost:{free_port()}",
        "state_dir": str(state_dir),
        "user_data": base64.b64encode(raw).decode(),
        "ingress": [],
    }
    info.update(extra)
    return info


@contextmanager
def booted(
    state_dir: Path, user_data: str | bytes, **extra: Any
) -> Iterator[tuple[HostLayout, dict[str, Any]]]:
    """A host that has run `user_data`; stopped on exit. Yields (layout, host.json)."""
    info = instance_info(state_dir, user_data, **extra)
    layout = HostLayout(Path(state_dir) / "instances" / info["instance_id"])
    control.start_host(layout, info)
    try:
        yield layout, control.wait_booted(layout, timeout=120)
    finally:
        control.stop_host(layout)


def console(layout: HostLayout) -> str:
    return layout.console.read_text(errors="replace")
