"""The sample app survives `enclavekit local stop` + `local start` without a redeploy.

Deploy the sample app with the real cdk CLI (bootstrap, deploy, seal, provision), note what a
client holds (the sealed secret's ciphertext, the stack's outputs, the host's instance id),
then stop the endpoint with the CLI: nothing of ours is left running. Start it again on the
same state dir: the stack, the KMS key (with its material: the old ciphertext decrypts for the
enclave again), the parameters and the certificate are back, the host boots again from what
was recorded, its enclave is provisioned from the restored secrets, and `enclavekit verify`
passes every check. Then the restored stack destroys cleanly, as any other.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2e_support import copy_sample_app

from local_backend import pytest_plugin as plugin

pytestmark = pytest.mark.slow


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "enclavekit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _wait_provisioned(endpoint: plugin.LocalEndpoint, stacks: tuple[str, ...]) -> None:
    deadline = time.monotonic() + plugin.PROVISION_TIMEOUT_S
    while True:
        hosts = plugin.hosts_of(endpoint, stacks)
        if hosts and all(h.parent_state().get("provisioned") for h in hosts):
            return
        if time.monotonic() > deadline:
            states = [h.parent_state() for h in hosts]
            pytest.fail(f"hosts not provisioned after the restart: {states}")
        time.sleep(0.2)


def test_sample_app_survives_stop_and_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    app = copy_sample_app(tmp_path / "app")
    endpoint = plugin.start_endpoint(state)
    try:
        deployment = plugin.deploy(endpoint, app)
        assert deployment.verify().ok
        (host,) = deployment.hosts
        ssm = endpoint.client("ssm")
        sealed = {
            p["Name"]: ssm.get_parameter(Name=p["Name"])["Parameter"]["Value"]
            for p in ssm.describe_parameters()["Parameters"]
        }

        stopped = _cli("local", "stop", "--state-dir", str(state))
        assert stopped.returncode == 0, stopped.stderr
        assert plugin.processes_of(state) == []  # no parent, relay or enclave outlived it

        started = _cli("local", "start", "--port", str(endpoint.port), "--state-dir", str(state))
        assert started.returncode == 0, started.stderr
        info = json.loads((state / "endpoint.json").read_text())
        endpoint = plugin.LocalEndpoint(
            url=info["endpoint"], port=info["port"], state_dir=state.resolve(), pid=info["pid"]
        )
        cfn = endpoint.client("cloudformation")
        for stack in deployment.stacks:
            status = cfn.describe_stacks(StackName=stack)["Stacks"][0]
            assert status["StackStatus"] in ("CREATE_COMPLETE", "UPDATE_COMPLETE")
            outputs = {o["OutputKey"]: o["OutputValue"] for o in status.get("Outputs", [])}
            assert outputs == deployment.outputs[stack]
        ssm = endpoint.client("ssm")
        for name, value in sealed.items():  # the same ciphertexts, not re-sealed
            assert ssm.get_parameter(Name=name)["Parameter"]["Value"] == value

        _wait_provisioned(endpoint, deployment.stacks)
        (again,) = plugin.hosts_of(endpoint, deployment.stacks)
        assert again.instance_id == host.instance_id  # the same instance, booted again
        assert again.enclave_id != host.enclave_id  # ... with a new enclave

        verified = _cli("verify", "--json", "--state-dir", str(state))
        assert verified.returncode == 0, verified.stdout + verified.stderr
        report = json.loads(verified.stdout)
        checks = [c for h in report["hosts"] for c in h["checks"]]
        assert report["ok"] and len(checks) >= 8 and all(c["ok"] for c in checks), report

        restored = plugin.Deployment(
            endpoint=endpoint,
            app_dir=deployment.app_dir,
            stacks=deployment.stacks,
            outputs=deployment.outputs,
            hosts=(again,),
            cdk=deployment.cdk,
        )
        restored.destroy()
        assert not [
            s for s in cfn.describe_stacks()["Stacks"] if s["StackName"] in deployment.stacks
        ]
    finally:
        left = plugin.stop_endpoint(endpoint)
    assert left == []
    log = (state / "logs" / "endpoint.log").read_text()
    assert " 500 -" not in log
