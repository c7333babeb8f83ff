"""Instance start to enclave RUNNING: booted from its user data vs the Metadata path.

Both stacks run the same EIF (the sample enclave app, from S3) with the same sizes on the same
endpoint, created with CreateStack:
  user data   tests/fixtures/userdata/enclave-host.yaml — the instance's user data installs
              aws-nitro-enclaves-cli, starts the allocator and vsock-proxy units, copies the
              EIF with the AWS CLI (IMDS role credentials) and starts it under a systemd unit;
              timed until `nitro-cli describe-enclaves` inside the host says RUNNING.
  Metadata    (baseline) the same instance with `Metadata["enclavekit:host"]` and no user data:
              the emulated parent fetches the EIF and runs it; timed until the stack is
              created (its start hook returns once the enclave runs).
The figure is the ratio user data / Metadata (the issue aims at <= 2x).
"""

from __future__ import annotations

import copy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "tests" / "fixtures" / "userdata" / "enclave-host.yaml"
BUCKET, KEY = "bench-host-eifs", "app/app.eif"
TIMEOUT_S = 300


class _Loader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags kept as their long forms."""


for _tag, _long in (("!Ref", "Ref"), ("!Sub", "Fn::Sub"), ("!GetAtt", "Fn::GetAtt")):
    _Loader.add_constructor(
        _tag, lambda loader, node, long=_long: {long: loader.construct_scalar(node)}
    )


def templates(measurements: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(user-data template, Metadata template) of the same host."""
    user_data = yaml.load(TEMPLATE.read_text(), Loader=_Loader)
    meta = copy.deepcopy(user_data)
    host = meta["Resources"]["Host"]
    del host["Properties"]["UserData"]
    host["Metadata"] = {
        "enclavekit:host": {
            "version": 1,
            "image": {
                "name": "enclave-app",
                "measurements": measurements,
                "asset": {"bucket": {"Ref": "EifBucket"}, "key": {"Ref": "EifKey"}},
            },
            "enclave": {"cpu_count": 2, "memory_mib": 512, "cid": 16, "debug_mode": False},
            "service": {"port": 8443, "enclave_port": 8443},
            "role": "HostRole",
            "secrets": [],
            "attested_keys": [],
        }
    }
    return user_data, meta


def _create(cfn: Any, name: str, body: dict[str, Any]) -> float:
    import json

    t0 = time.perf_counter()
    cfn.create_stack(
        StackName=name,
        TemplateBody=json.dumps(body),
        Capabilities=["CAPABILITY_IAM"],
        Parameters=[
            {"ParameterKey": "EifBucket", "ParameterValue": BUCKET},
            {"ParameterKey": "EifKey", "ParameterValue": KEY},
        ],
    )
    cfn.get_waiter("stack_create_complete").wait(
        StackName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": int(TIMEOUT_S / 0.2)}
    )
    return time.perf_counter() - t0


def _instance_id(cfn: Any, name: str) -> str:
    outputs = cfn.describe_stacks(StackName=name)["Stacks"][0]["Outputs"]
    return next(o["OutputValue"] for o in outputs if o["OutputKey"] == "InstanceId")


def run_once(
    ep: Any, user_data: dict[str, Any], meta: dict[str, Any], n: int
) -> tuple[float, float]:
    from local_backend.host import control, hooks
    from local_backend.host.layout import instance_layout

    cfn = ep.client("cloudformation")
    t0 = time.perf_counter()
    _create(cfn, f"bench-userdata-{n}", user_data)
    layout = instance_layout(Path(ep.state_dir), _instance_id(cfn, f"bench-userdata-{n}"))
    # The user data ends once its enclave unit has started (a oneshot unit: nitro-cli returns
    # when the enclave runs); waiting on cloud-init's result file costs the host no CPU.
    host = control.wait_booted(layout, timeout=TIMEOUT_S)
    if control.boot_error(host):
        raise RuntimeError(f"{control.boot_error(host)}: {layout.console.read_text()[-800:]}")
    by_user_data = time.perf_counter() - t0
    if not any(e.get("State") == "RUNNING" for e in hooks.host_enclaves(layout)):
        raise RuntimeError("user data finished without a RUNNING enclave")
    by_metadata = _create(cfn, f"bench-metadata-{n}", meta)
    for name in (f"bench-userdata-{n}", f"bench-metadata-{n}"):
        cfn.delete_stack(StackName=name)
    return by_user_data, by_metadata


def main(rounds: int = 2) -> None:
    from enclavekit import eif
    from enclavekit.pytest_plugin import local_endpoint

    with tempfile.TemporaryDirectory() as tmp, local_endpoint(Path(tmp) / "state") as ep:
        path = Path(tmp) / "app.eif"
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
        m = eif.read_eif(path).measurements
        s3 = ep.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.upload_file(str(path), BUCKET, KEY)
        user_data, meta = templates({"PCR0": m.hex(0), "PCR1": m.hex(1), "PCR2": m.hex(2)})
        results = [run_once(ep, user_data, meta, n) for n in range(rounds)]
    ud = statistics.median(r[0] for r in results)
    md = statistics.median(r[1] for r in results)
    print(f"{'instance start -> enclave RUNNING':<40}{'seconds':>10}{'ratio':>10}")
    print(f"{'  Metadata path (baseline)':<40}{md:>10.2f}{1.0:>10.2f}")
    print(f"{'  user data (dnf, allocator, s3, unit)':<40}{ud:>10.2f}{ud / md:>10.2f}")
    print(f"median of {rounds} rounds; the issue aims at a ratio <= 2")


if __name__ == "__main__":
    main()
