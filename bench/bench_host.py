"""Instance start to enclave RUNNING: booted from its user data, against two baselines.

Every stack runs the same EIF (the sample enclave app, from S3) with the same sizes on the same
endpoint, created with CreateStack:
  user data   tests/fixtures/userdata/enclave-host.yaml (tests/host_support.py) — the
              instance's user data installs aws-nitro-enclaves-cli, starts the allocator and
              vsock-proxy units, copies the EIF with the AWS CLI (IMDS role credentials) and
              starts it under a systemd unit; timed until cloud-init has run it (the enclave unit
              is a oneshot: nitro-cli returns once the enclave runs) and it is RUNNING.
  constructs  the same instance with the user data our constructs render
              (`HostSpec.user_data`): also a python3.11 venv with the agent's pinned boto3 tree
              pip-installed from the local wheelhouse, the agent zipapp from S3 and the relay
              and agent units. The venv and pip steps get the results prepared once per
              checkout (`local_backend.host.prepared`, built before the rounds, as `make setup`
              does); the table says whether the hosts replayed them.
Baselines, in the same run:
  Metadata    the same instance with `Metadata["enclavekit:host"]` and no user data: the
              emulated parent fetches the EIF and runs it; timed until the stack is created
              (its start hook returns once the enclave runs). Left out (`-`) once that path is
              gone (the stack then has no enclave to start).
  enclave-run what any path must do: CreateStack of the same stack without user data or
              Metadata (the instance and its VPC, role and profile), plus a bare
              `nitro-cli run-enclave` of the same EIF with the same sizes inside the booted
              user-data host (timed in the host, after terminating its enclave).
The figures are ratios to each baseline (the issue aims at <= 2x).
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from enclavekit.contract import HOST_METADATA_KEY, INSTANCES_DIR, PARENT_FILE

ROOT = Path(__file__).resolve().parent.parent
BUCKET, KEY = "bench-host-eifs", "app/app.eif"
TIMEOUT_S = 300


class _Loader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags kept as their long forms."""


for _tag, _long in (("!Ref", "Ref"), ("!Sub", "Fn::Sub"), ("!GetAtt", "Fn::GetAtt")):
    _Loader.add_constructor(
        _tag, lambda loader, node, long=_long: {long: loader.construct_scalar(node)}
    )


def _support() -> Any:
    """tests/host_support.py: the template and the construct spec the host tests use too."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests import host_support

    return host_support


def templates(measurements: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(user-data template, Metadata template) of the same host."""
    template = _support().ENCLAVE_HOST_TEMPLATE
    user_data = yaml.load(template.read_text(), Loader=_Loader)
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


def bare_template(user_data: dict[str, Any]) -> dict[str, Any]:
    """The same stack with neither user data nor Metadata: what creating it costs alone."""
    body = copy.deepcopy(user_data)
    del body["Resources"]["Host"]["Properties"]["UserData"]
    return body


def construct_template(user_data: dict[str, Any], measurements: Any) -> dict[str, Any]:
    """The hand-written template's host with our constructs' user data instead of its own
    (same EIF, sizes and CID; the role may read the agent bundle too)."""
    from enclavekit.agent_bundle import build_agent_bundle

    spec = _support().construct_host_spec(BUCKET, KEY, measurements, build_agent_bundle().sha256)
    body = copy.deepcopy(user_data)
    body["Resources"]["Host"]["Properties"]["UserData"] = {
        "Fn::Base64": "#!/bin/bash\n" + spec.user_data()
    }
    policy = body["Resources"]["HostRole"]["Properties"]["Policies"][0]["PolicyDocument"]
    policy["Statement"][0]["Resource"] = f"arn:aws:s3:::{BUCKET}/*"
    return body


def _create(cfn: Any, name: str, body: dict[str, Any]) -> float:
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


def _by_user_data(ep: Any, name: str, body: dict[str, Any]) -> tuple[float, Any]:
    """CreateStack -> the user data has run and the host's enclave is RUNNING: (seconds, the
    host's layout)."""
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
    return seconds, layout


def _by_metadata(ep: Any, name: str, body: dict[str, Any]) -> float | None:
    """CreateStack of the Metadata host -> created (its enclave running); None once that path
    is gone (no emulated parent recorded an enclave)."""
    cfn = ep.client("cloudformation")
    seconds = _create(cfn, name, body)
    parent = Path(ep.state_dir) / INSTANCES_DIR / _instance_id(cfn, name) / PARENT_FILE
    try:
        enclave = (json.loads(parent.read_text()).get("enclave") or {}).get("EnclaveID")
    except (OSError, ValueError):
        enclave = None
    return seconds if enclave else None


RUN_ENCLAVE = (
    "nitro-cli terminate-enclave --all >/dev/null; s=$EPOCHREALTIME; "
    "nitro-cli run-enclave --eif-path /opt/app/app.eif --cpu-count 2 --memory 512 "
    "--enclave-cid 16 >/dev/null; rc=$?; e=$EPOCHREALTIME; echo $s $e; exit $rc"
)


def _run_enclave(layout: Any) -> float:
    """A bare `nitro-cli run-enclave` of the hand-written host's EIF, timed inside the host."""
    from local_backend.host import control

    out = control.host_exec(layout, ["bash", "-c", RUN_ENCLAVE], timeout=TIMEOUT_S)
    if out.returncode != 0:
        raise RuntimeError(f"bare run-enclave failed: {out.stderr[-800:]}")
    start, end = (float(x) for x in out.stdout.split()[-2:])
    return end - start


def _replayed(layout: Any) -> list[str]:
    """The prepared results the host replayed (its /run/enclavekit-host/prepared.log)."""
    pid = layout.read_host().get("init_pid")
    log = Path(f"/proc/{pid}/root/run/enclavekit-host/prepared.log")
    text = log.read_text() if pid and log.exists() else ""
    return [line.split()[0] for line in text.splitlines() if " replayed: " in line]


def run_once(ep: Any, bodies: dict[str, dict[str, Any]], n: int) -> dict[str, Any]:
    """Round `n`: seconds of each case and baseline, and what the constructs' host replayed."""
    cfn = ep.client("cloudformation")
    out: dict[str, Any] = {}
    out["user_data"], layout = _by_user_data(ep, f"bench-userdata-{n}", bodies["user_data"])
    out["bare_create"] = _create(cfn, f"bench-bare-{n}", bodies["bare"])
    out["run_enclave"] = _run_enclave(layout)
    out["metadata"] = _by_metadata(ep, f"bench-metadata-{n}", bodies["metadata"])
    out["constructs"], layout = _by_user_data(ep, f"bench-constructs-{n}", bodies["constructs"])
    out["replayed"] = _replayed(layout)
    for kind in ("userdata", "bare", "metadata", "constructs"):
        cfn.delete_stack(StackName=f"bench-{kind}-{n}")
    return out


def main(rounds: int = 2) -> None:
    from enclavekit.agent_bundle import build_agent_bundle
    from local_backend.host import prepared
    from local_backend.pytest_plugin import local_endpoint

    # Once per checkout (make setup does it too): the hosts then replay venv and pip.
    ready = prepared.ensure()
    with tempfile.TemporaryDirectory() as tmp, local_endpoint(Path(tmp) / "state") as ep:
        path = Path(tmp) / "app.eif"
        m = _support().build_app_eif(path)
        s3 = ep.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.upload_file(str(path), BUCKET, KEY)
        s3.put_object(Bucket=BUCKET, Key=_support().AGENT_KEY, Body=build_agent_bundle().data)
        user_data, meta = templates({"PCR0": m.hex(0), "PCR1": m.hex(1), "PCR2": m.hex(2)})
        bodies = {
            "user_data": user_data,
            "bare": bare_template(user_data),
            "metadata": meta,
            "constructs": construct_template(user_data, m),
        }
        results = [run_once(ep, bodies, n) for n in range(rounds)]
    print(table(results, ready))


def _median(results: list[dict[str, Any]], name: str) -> float | None:
    values = [r[name] for r in results if r[name] is not None]
    return statistics.median(values) if len(values) == len(results) else None


def table(results: list[dict[str, Any]], prepared_ready: bool) -> str:
    """The figures: seconds and the ratio to each baseline (`-` where it is gone)."""
    md = _median(results, "metadata")
    er = statistics.median(r["bare_create"] + r["run_enclave"] for r in results)
    bare = statistics.median(r["bare_create"] for r in results)
    run = statistics.median(r["run_enclave"] for r in results)

    def row(label: str, seconds: float | None) -> str:
        x_md = f"{seconds / md:.2f}" if seconds is not None and md else "-"
        x_er = f"{seconds / er:.2f}" if seconds is not None else "-"
        shown = f"{seconds:.2f}" if seconds is not None else "-"
        return f"{label:<46}{shown:>9}{x_md:>12}{x_er:>14}"

    replayed = sorted({k for r in results for k in r["replayed"]})
    lines = [
        f"{'instance start -> enclave RUNNING':<46}{'seconds':>9}{'x Metadata':>12}"
        f"{'x enclave-run':>14}",
        row("  Metadata path (baseline)", md),
        row(f"  enclave-run (create {bare:.2f} + run-enclave {run:.2f})", er),
        row("  user data (dnf, allocator, s3, unit)", _median(results, "user_data")),
        row("  our constructs user data (+ venv, agent)", _median(results, "constructs")),
        f"median of {len(results)} rounds; the issue aims at a ratio <= 2",
        "constructs' venv and pip: "
        + (
            f"replayed prepared results ({', '.join(replayed)})"
            if replayed
            else "run for real"
            + ("" if prepared_ready else " (no prepared results on this machine)")
        ),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
