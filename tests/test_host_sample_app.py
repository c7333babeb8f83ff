"""The sample app booted by the user data our constructs render, through CDK and CloudFormation.

Its `Metadata["enclavekit:host"]` is removed from the template, so nothing but the user data
(CloudFormation-resolved: asset buckets, the certificate ARN, parameter names) can boot it, as on
EC2: the enclave and relay units, the agent from the zipapp asset on a pip-installed boto3
tree. Sealing the app secret and `systemctl reload` of the agent unit hands it to the enclave;
verify then checks the whole chain. The certificate key is not released to this image
(set-up C: only ACM's own enclave gets it on AWS), which the enclave reports as degraded.
"""

from __future__ import annotations

import base64
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_support import assert_setup_c_denied, copy_sample_app, patch_app

from enclavekit import provisioning as prov
from enclavekit.transport import PARENT_CID, EmulatedVsock
from local_backend import pytest_plugin as plugin
from local_backend.host import control, hooks
from local_backend.host.layout import HOST_EMULATOR_STATE
from local_backend.verify import CHECKS, VERIFIER_DIR, verify

pytestmark = pytest.mark.slow

STACK = "UserDataSample"
AGENT = "enclavekit-enclave-app-agent"


def _status(host: dict[str, Any]) -> prov.Message:
    vsock = EmulatedVsock(
        Path(f"/proc/{host['init_pid']}/root{HOST_EMULATOR_STATE}/vsock"), PARENT_CID
    )
    with vsock.connect(16, prov.CONTROL_PORT) as sock:
        return prov.exchange(sock, prov.Status())


def test_sample_app_boots_from_its_user_data(enclavekit_endpoint: Any, tmp_path: Path) -> None:
    ep = enclavekit_endpoint
    app = copy_sample_app(
        tmp_path / "app", stack_name=STACK, context={"certificate_in_image": True}
    )
    patch_app(app, "host.cfn_resource.cfn_options.metadata = {}  # user data alone boots it")
    started = time.monotonic()
    deployed = plugin.deploy(ep, app, seal=False)
    state = Path(ep.state_dir)
    [layout] = [h for h in hooks.hosts(state) if h.read_info().get("stack_name") == STACK]
    # found by what its user data wrote for the agent: there is no Metadata to read
    assert [h.instance_dir for h in deployed.hosts] == [layout.dir]
    host = control.wait_booted(layout, timeout=280)
    assert control.boot_error(host) is None, layout.console.read_text()[-3000:]
    seconds = time.monotonic() - started
    [enclave] = hooks.host_enclaves(layout)
    assert enclave["State"] == "RUNNING" and enclave["EnclaveCID"] == 16
    assert [p["port"] for p in host["ports"]] == [443]  # the service port, its security group
    relay = control.host_exec(layout, ["systemctl", "is-active", "enclavekit-enclave-app-relay"])
    assert relay.stdout.strip() == "active"
    deadline = time.monotonic() + 60
    while "waiting for sealed secrets: app-secret" not in (
        journal := control.host_exec(layout, ["journalctl", "-u", AGENT]).stdout
    ):
        assert time.monotonic() < deadline, journal
        time.sleep(0.5)
    # Seal the app secret as `enclavekit up` does; the agent hands it over on reload.
    cfn, kms, ssm = ep.client("cloudformation"), ep.client("kms"), ep.client("ssm")
    resources = {
        r["LogicalResourceId"]: r
        for r in cfn.describe_stack_resources(StackName=STACK)["StackResources"]
    }
    key = next(r for n, r in resources.items() if r["ResourceType"] == "AWS::KMS::Key")
    param = next(r for r in resources.values() if r["ResourceType"] == "AWS::SSM::Parameter")[
        "PhysicalResourceId"
    ]
    secret = secrets.token_bytes(32)
    blob = kms.encrypt(KeyId=key["PhysicalResourceId"], Plaintext=secret)
    ref = state / VERIFIER_DIR / STACK / "app-secret.secret"  # up's copy, for verify's challenge
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_bytes(secret)
    ssm.put_parameter(
        Name=param,
        Value=base64.b64encode(blob["CiphertextBlob"]).decode(),
        Type="String",
        Overwrite=True,
    )
    assert control.host_exec(layout, ["systemctl", "reload", AGENT]).returncode == 0
    deadline = time.monotonic() + 60
    while "app-secret" not in (status := _status(host)).secrets:
        assert time.monotonic() < deadline, control.host_exec(layout, ["journalctl", "-u", AGENT])
        time.sleep(0.5)
    # The secret came through the enclave's attested KMS Decrypt; the certificate key did not.
    assert status.state == "degraded" and status.certificate_sha256 is None, status
    # verify checks the chain of what the host runs: its user data wrote the agent's host.json
    report = verify(state, stack=STACK)
    [hr] = report.hosts
    assert [c.name for c in hr.checks] == [name for name, _ in CHECKS], report.table()
    assert_setup_c_denied(report)  # all pass but the TLS pair: ACM denies this image the key
    print(f"\ncdk deploy -> enclave RUNNING via the sample app's user data: {seconds:.1f} s")
