"""Boot an instance host straight from a user data (no endpoint needed), for the host tests."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from local_backend.host import control
from local_backend.host.layout import HostLayout
from local_backend.pytest_plugin import free_port


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


# The hand-written Nitro Enclaves parent (no enclavekit Metadata) that test_host_cfn_enclave
# deploys and bench_host times, and our constructs' user data for the same EIF.
ROOT = Path(__file__).resolve().parent.parent
ENCLAVE_HOST_TEMPLATE = ROOT / "tests" / "fixtures" / "userdata" / "enclave-host.yaml"
AGENT_KEY = "agent/enclavekit-agent.pyz"


def build_app_eif(path: Path) -> Any:
    """`enclavekit build-enclave` of the sample enclave app into `path`; its measurements."""
    import subprocess
    import sys

    from enclavekit import eif

    subprocess.run(
        [
            str(Path(sys.executable).parent / "enclavekit"),
            "build-enclave",
            "--app-dir",
            str(ROOT / "enclave_app"),
            "--output-file",
            str(path),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return eif.read_eif(path).measurements


def construct_host_spec(bucket: str, key: str, measurements: Any, agent_sha256: str) -> Any:
    """The HostSpec our constructs render for that EIF (s3://bucket/key) and the agent bundle
    at s3://bucket/AGENT_KEY: its `user_data()` is what the host runs."""
    from enclave_constructs.spec import AgentSpec, HostSpec, ImageSpec

    from enclavekit.agent_bundle import runtime_requirements

    return HostSpec(
        image=ImageSpec("enclave-app", "enclave-app", measurements, False, bucket, key),
        cpu_count=2,
        memory_mib=512,
        debug_mode=False,
        port=8443,
        domain=None,
        role="HostRole",
        region="us-east-1",
        agent=AgentSpec(bucket, AGENT_KEY, agent_sha256, runtime_requirements()),
    )
