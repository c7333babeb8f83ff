"""The sample app end to end with the real cdk CLI, the local endpoint and the enclave emulator.

One endpoint for the module (free loopback port, temporary state dir), a private copy of the
sample app whose enclave image is built in the copy. In order: bootstrap; deploy (the enclave
boots and is provisioned; the sample is set-up C, so ACM denies its image the certificate's
key as AWS does: the enclave holds its secret only and serves no TLS, and verify fails its two
TLS checks with that reason); an update that changes the image (new PCRs in the key policy,
the instance replaced, the old enclave gone); a no-change deploy; destroy; redeploy.
Negative: an unsupported resource type fails the deploy with its name (a key policy without
the PCR condition, and every other property verify checks, is broken in
test_verify_breakages). Last: nothing of ours is left running or listening.

Budget: under 4 minutes on 2 cores (about 2 minutes when the machine is quiet).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from e2e_support import assert_setup_c_denied, copy_sample_app, patch_app

from enclavekit import provisioning as prov
from enclavekit.build import build_enclave
from enclavekit.eif import describe_eif
from local_backend import pytest_plugin as plugin
from local_backend.moto_ext.identity import EC2_SERVICE_ACCESS_KEY_ID
from local_backend.moto_ext.identity import EC2_SERVICE_SECRET_ACCESS_KEY as EC2_SERVICE_SECRET

pytestmark = pytest.mark.slow

STACK = "EnclaveService"
DOMAIN = "enclave.example.test"
SECRET = b"e2e application secret " + secrets.token_hex(8).encode()
PCR_PREFIX = "kms:recipientattestation:"


class Loop:
    """What the ordered tests hand on to each other (one deployment's life cycle)."""

    deployment: plugin.Deployment | None = None
    relay_ports: set[int] = set()
    timings: dict[str, float] = {}


@pytest.fixture(scope="module")
def ep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[plugin.LocalEndpoint]:
    endpoint = plugin.start_endpoint(tmp_path_factory.mktemp("e2e-state"))
    try:
        yield endpoint
    finally:
        plugin.stop_endpoint(endpoint)  # idempotent; the last test checks it strictly


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_sample_app(
        tmp_path_factory.mktemp("sample") / "app", context={"certificate_in_image": True}
    )


def _timed(name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    started = time.monotonic()
    try:
        return fn(*args, **kwargs)
    finally:
        Loop.timings[name] = time.monotonic() - started


def _expected_pcr0(app: Path, tmp: Path) -> str:
    """PCR0 of the copy's image, built independently (the build is byte-reproducible)."""
    built = build_enclave(app / "enclave_app", tmp / "expected.eif")
    return describe_eif(built.path)["Measurements"]["PCR0"]


def _policy_pcr0s(ep: plugin.LocalEndpoint, key_arn: str) -> set[str]:
    """Every value the key policy's attestation conditions give PCR0."""
    raw = ep.client("kms").get_key_policy(KeyId=key_arn, PolicyName="default")["Policy"]
    policy = json.loads(raw) if isinstance(raw, str) else raw
    found: set[str] = set()
    for st in policy["Statement"]:
        for block in (st.get("Condition") or {}).values():
            for key, value in block.items():
                if key.lower() == PCR_PREFIX + "pcr0":
                    found.update([value] if isinstance(value, str) else value)
    return {v.lower() for v in found}


def _challenge(host: plugin.DeployedHost) -> bool:
    """Does the enclave hold SECRET? (HMAC of a fresh nonce over its control port.)"""
    nonce = secrets.token_bytes(32)
    with host.vsock().connect(host.enclave_cid, prov.CONTROL_PORT) as sock:
        sock.settimeout(30)
        reply = prov.exchange(sock, prov.Challenge(name="app-secret", nonce=nonce))
    assert isinstance(reply, prov.ChallengeAnswer), reply
    return hmac.compare_digest(reply.mac, hmac.new(SECRET, nonce, hashlib.sha256).digest())


def _parent_decrypt(ep: plugin.LocalEndpoint, role_arn: str, parameter: str) -> str | bytes:
    """The parent's view: instance-role credentials, Decrypt of the sealed secret without
    attestation. Returns the plaintext, or the error code."""
    sts = ep.client(  # the instance role, as IMDS serves it: EC2 assumes it
        "sts", aws_access_key_id=EC2_SERVICE_ACCESS_KEY_ID, aws_secret_access_key=EC2_SERVICE_SECRET
    )
    creds = sts.assume_role(RoleArn=role_arn, RoleSessionName="parent")["Credentials"]
    role = {
        "aws_access_key_id": creds["AccessKeyId"],
        "aws_secret_access_key": creds["SecretAccessKey"],
        "aws_session_token": creds["SessionToken"],
    }
    value = ep.client("ssm", **role).get_parameter(Name=parameter)["Parameter"]["Value"]
    try:
        out = ep.client("kms", **role).decrypt(CiphertextBlob=base64.b64decode(value))
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return bytes(out["Plaintext"])


def _enclave_running(host: plugin.DeployedHost, pcr0: str) -> None:
    enclaves = host.enclaves()  # nitro-cli describe-enclaves inside the host
    assert [e["EnclaveID"] for e in enclaves] == [host.enclave_id]
    assert enclaves[0]["State"] == "RUNNING"
    assert enclaves[0]["Measurements"]["PCR0"] == pcr0


def _gone(ep: plugin.LocalEndpoint, host: plugin.DeployedHost) -> None:
    """The instance, its host (launcher and PID 1, so its enclave), its relay port are gone."""
    state = host.parent_state()
    assert state["state"] == "stopped"
    assert plugin.processes_of(host.instance_dir) == []
    assert plugin.listening([host.relay_port]) == set()
    with pytest.raises(ProcessLookupError):
        os.kill(state["pid"], 0)
    with pytest.raises(ProcessLookupError):  # the host's PID 1: its namespaces, enclaves too
        os.kill(state["init_pid"], 0)
    reservations = ep.client("ec2").describe_instances(
        Filters=[{"Name": "instance-id", "Values": [host.instance_id]}]
    )["Reservations"]
    states = [i["State"]["Name"] for r in reservations for i in r["Instances"]]
    assert states in ([], ["terminated"]), states


def _denied_the_acm_key(deployed: plugin.Deployment, host: plugin.DeployedHost) -> None:
    """Set-up C as on AWS: ACM releases the certificate's key only to its own enclave image, so
    the sample's image is denied it (AccessDeniedException): it holds its secret only
    (degraded), says why, and serves no TLS. (Set-up A, nginx on the parent with the key in
    ACM's enclave, is issue 10's replacement for this sample.)"""
    with host.vsock().connect(host.enclave_cid, prov.CONTROL_PORT) as sock:
        sock.settimeout(30)
        status = prov.exchange(sock, prov.Status())
    assert isinstance(status, prov.StatusReport), status
    assert status.state == "degraded" and status.certificate_sha256 is None
    assert status.secrets == ("app-secret",)
    assert status.last_error and "certificate key" in status.last_error
    assert "AccessDeniedException" in status.last_error
    with pytest.raises(pytest.fail.Exception, match="TLS to .* failed"):
        deployed.https(host, "/e2e")
    Loop.relay_ports.add(host.relay_port)


# ------------------------------------------------------------------ the loop, in order


def test_bootstrap_deploy_boots_the_enclave_denied_the_acm_key(
    ep: plugin.LocalEndpoint, app: Path, tmp_path: Path
) -> None:
    run = _timed("bootstrap", plugin.bootstrap, ep)
    assert run is not None and "bootstrapped" in run.output
    cfn = ep.client("cloudformation")
    assert cfn.describe_stacks(StackName="CDKToolkit")["Stacks"][0]["StackStatus"] == (
        "CREATE_COMPLETE"
    )
    assert plugin.bootstrap(ep) is None  # once per endpoint

    deployed = _timed("deploy", plugin.deploy, ep, app, secrets={"app-secret": SECRET})
    Loop.deployment = deployed
    assert deployed.stacks == (STACK,)
    out = deployed.outputs[STACK]
    pcr0 = _expected_pcr0(app, tmp_path)
    assert out["ImagePcr0"] == pcr0
    assert _policy_pcr0s(ep, out["KeyArn"]) == {pcr0}
    host = deployed.host()
    assert host.instance_id == out["InstanceId"] and host.domain == DOMAIN
    _enclave_running(host, pcr0)
    _denied_the_acm_key(deployed, host)
    assert _challenge(host)  # the enclave decrypted the secret with its attestation
    assert _parent_decrypt(ep, out["RoleArn"], out["SecretParameter"]) == "AccessDeniedException"

    report = _timed("verify", deployed.verify)
    assert_setup_c_denied(report)


def test_update_of_the_image_changes_pcrs_key_policy_and_instance(
    ep: plugin.LocalEndpoint, app: Path, tmp_path: Path
) -> None:
    before = Loop.deployment
    assert before is not None, "needs the first deployment"
    old_host, old_out = before.host(), before.outputs[STACK]
    main = app / "enclave_app" / "main.py"
    main.write_text(main.read_text() + "\n# e2e: a new release of the enclave program\n")
    pcr0 = _expected_pcr0(app, tmp_path)
    assert pcr0 != old_out["ImagePcr0"]

    deployed = _timed("update", plugin.deploy, ep, app)
    Loop.deployment = deployed
    out = deployed.outputs[STACK]
    assert out["ImagePcr0"] == pcr0
    assert out["KeyArn"] == old_out["KeyArn"]  # the key is updated in place ...
    assert _policy_pcr0s(ep, out["KeyArn"]) == {pcr0}  # ... to bind only the new image
    host = deployed.host()
    assert host.instance_id != old_host.instance_id  # user data changed: a new instance
    assert out["InstanceId"] == host.instance_id
    _gone(ep, old_host)
    _enclave_running(host, pcr0)
    _denied_the_acm_key(deployed, host)
    assert _challenge(host)  # the sealed secret survived: same key, new image bound


def test_no_change_deploy(ep: plugin.LocalEndpoint, app: Path) -> None:
    before = Loop.deployment
    assert before is not None
    deployed = _timed("no-change", plugin.deploy, ep, app)
    assert f"{STACK} (no changes)" in deployed.cdk.output
    assert deployed.hosts == before.hosts  # same instance, enclave and relay port
    assert deployed.outputs == before.outputs


def test_destroy_leaves_no_enclave_process_or_port(ep: plugin.LocalEndpoint) -> None:
    deployed = Loop.deployment
    assert deployed is not None
    run = _timed("destroy", deployed.destroy)
    assert f"{STACK}: destroyed" in run.output
    with pytest.raises(ClientError, match="does not exist"):
        ep.client("cloudformation").describe_stacks(StackName=STACK)
    _gone(ep, deployed.host())
    assert plugin.hosts_of(ep, [STACK]) == ()


def test_redeploy(ep: plugin.LocalEndpoint, app: Path) -> None:
    deployed = _timed("redeploy", plugin.deploy, ep, app, secrets={"app-secret": SECRET})
    host = deployed.host()
    _denied_the_acm_key(deployed, host)
    assert _challenge(host)
    Loop.deployment = deployed


# ------------------------------------------------------------------ negative


def test_unsupported_resource_type_fails_with_its_name(
    ep: plugin.LocalEndpoint, tmp_path: Path
) -> None:
    app = copy_sample_app(tmp_path / "bad", stack_name="EnclaveServiceBad")
    patch_app(
        app,
        """
        cdk.CfnResource(self, "Unsupported", type="AWS::GameLift::Alias", properties={
            "Name": "e2e", "RoutingStrategy": {"Type": "TERMINAL", "Message": "none"}})
        """,
    )
    with pytest.raises(pytest.fail.Exception) as failed:
        _timed("deploy-unsupported", plugin.deploy, ep, app)
    headline = str(failed.value).splitlines()[0]
    assert headline.startswith("enclavekit: cdk deploy of ")
    assert "AWS::GameLift::Alias" in headline
    assert "EnclaveServiceBad: creating CloudFormation changeset..." in str(failed.value)
    assert plugin.hosts_of(ep, ["EnclaveServiceBad"]) == ()  # no enclave booted for it
    stacks = ep.client("cloudformation").describe_stacks()["Stacks"]
    assert "EnclaveServiceBad" not in {
        s["StackName"] for s in stacks if s["StackStatus"] != "ROLLBACK_COMPLETE"
    }


# ------------------------------------------------------------------ teardown


def test_stopping_the_endpoint_leaves_no_process_or_port(ep: plugin.LocalEndpoint) -> None:
    assert Loop.relay_ports, "the loop above recorded the relay ports it used"
    # positive controls: the searches below do find our processes and our endpoint's port
    assert plugin.processes_of(ep.state_dir)
    assert plugin.listening([ep.port, *Loop.relay_ports]) >= {ep.port}
    left = plugin.stop_endpoint(ep)
    assert left == [], f"killed leftovers: {left}"
    assert plugin.processes_of(ep.state_dir) == []
    assert plugin.listening([ep.port, *Loop.relay_ports]) == set()
    assert not (ep.state_dir / "endpoint.json").exists()
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in Loop.timings.items())
    print(f"\ne2e timings: {timings}")
