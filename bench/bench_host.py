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
  constructs  the same instance with the user data our constructs render
              (`HostSpec.user_data`): also a python3.11 venv with the agent's pinned boto3 tree
              pip-installed from the local wheelhouse, the agent zipapp from S3 and the relay
              and agent units; timed until cloud-init has run it (the enclave unit starts last,
              with the relay and agent units) and the enclave is RUNNING.
The figures are ratios to the Metadata path (the issue aims at <= 2x).
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

from enclavekit.contract import HOST_METADATA_KEY

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
        HOST_METADATA_KEY: {
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


AGENT_KEY = "agent/enclavekit-agent.pyz"


def construct_template(user_data: dict[str, Any], measurements: Any) -> dict[str, Any]:
    """The hand-written template's host with our constructs' user data instead of its own
    (same EIF, sizes and CID; the role may read the agent bundle too)."""
    from enclave_constructs.spec import AgentSpec, HostSpec, ImageSpec

    from enclavekit.agent_bundle import build_agent_bundle, runtime_requirements

    bundle = build_agent_bundle()
    spec = HostSpec(
        image=ImageSpec("enclave-app", "enclave-app", measurements, False, BUCKET, KEY),
        cpu_count=2,
        memory_mib=512,
        debug_mode=False,
        port=8443,
        domain=None,
        role="HostRole",
        region="us-east-1",
        agent=AgentSpec(BUCKET, AGENT_KEY, bundle.sha256, runtime_requirements()),
    )
    body = copy.deepcopy(user_data)
    body["Resources"]["Host"]["Properties"]["UserData"] = {
        "Fn::Base64": "#!/bin/bash\n" + spec.user_data()
    }
    policy = body["Resources"]["HostRole"]["Properties"]["Policies"][0]["PolicyDocument"]
    policy["Statement"][0]["Resource"] = f"arn:aws:s3:::{BUCKET}/*"
    return body


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


def _by_user_data(ep: Any, name: str, body: dict[str, Any]) -> float:
    """CreateStack -> the user data has run and the host's enclave is RUNNING (seconds)."""
    from local_backend.host import control, hooks
    from local_backend.host.layout import instance_layout

    cfn = ep.client("cloudformation")
    t0 = time.perf_counter()
    _create(cfn, name, body)
    layout = instance_layout(Path(ep.state_dir), _instance_id(cfn, name))
    # The user data ends once its enclave unit has started (a oneshot unit: nitro-cli returns
    # when the enclave runs); waiting on cloud-init's result file costs the host no CPU.
    host = control.wait_booted(layout, timeout=TIMEOUT_S)
    if control.boot_error(host):
        raise RuntimeError(f"{control.boot_error(host)}: {layout.console.read_text()[-800:]}")
    seconds = time.perf_counter() - t0
    if not any(e.get("State") == "RUNNING" for e in hooks.host_enclaves(layout)):
        raise RuntimeError(f"{name}: user data finished without a RUNNING enclave")
    return seconds


def run_once(ep: Any, bodies: dict[str, dict[str, Any]], n: int) -> tuple[float, float, float]:
    """(hand-written user data, Metadata path, constructs' user data) seconds of round `n`."""
    cfn = ep.client("cloudformation")
    by_user_data = _by_user_data(ep, f"bench-userdata-{n}", bodies["user_data"])
    by_metadata = _create(cfn, f"bench-metadata-{n}", bodies["metadata"])
    by_constructs = _by_user_data(ep, f"bench-constructs-{n}", bodies["constructs"])
    for kind in ("userdata", "metadata", "constructs"):
        cfn.delete_stack(StackName=f"bench-{kind}-{n}")
    return by_user_data, by_metadata, by_constructs


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
        from enclavekit.agent_bundle import build_agent_bundle

        s3.put_object(Bucket=BUCKET, Key=AGENT_KEY, Body=build_agent_bundle().data)
        user_data, meta = templates({"PCR0": m.hex(0), "PCR1": m.hex(1), "PCR2": m.hex(2)})
        bodies = {
            "user_data": user_data,
            "metadata": meta,
            "constructs": construct_template(user_data, m),
        }
        results = [run_once(ep, bodies, n) for n in range(rounds)]
    ud = statistics.median(r[0] for r in results)
    md = statistics.median(r[1] for r in results)
    cs = statistics.median(r[2] for r in results)
    print(f"{'instance start -> enclave RUNNING':<44}{'seconds':>10}{'ratio':>10}")
    print(f"{'  Metadata path (baseline)':<44}{md:>10.2f}{1.0:>10.2f}")
    print(f"{'  user data (dnf, allocator, s3, unit)':<44}{ud:>10.2f}{ud / md:>10.2f}")
    print(f"{'  our constructs user data (+ venv, agent)':<44}{cs:>10.2f}{cs / md:>10.2f}")
    print(f"median of {rounds} rounds; the issue aims at a ratio <= 2")


if __name__ == "__main__":
    main()
