"""A fleet of enclave hosts (launch template + Auto Scaling group) end to end on the local endpoint.

A small CDK app written here — `EnclaveHost(..., fleet=FleetOptions(2, 2))` with the image built
from a copy of enclave_app/, an ACM certificate, an AttestedKey and an EnclaveSecret — goes
through `local_backend.up.up` (real cdk CLI: synth, bootstrap, deploy; seal, boot, verify).
Every instance boots from the user data its launch template carries (nitro-cli, the EIF and
the parent agent's zipapp from S3, systemd units), in its own host. Then, in file order on the
one deployment: each instance has its own host, enclave and relay port, all share the role's
certificate association (whose key ACM denies the fleet's own image, as on AWS: set-up C),
verify covers every instance; scale-in stops one host and its enclave; a terminated instance
is replaced and the replacement is verified; `cdk destroy` leaves no host, enclave or relay
port. Timings are in the report of issue 9 (the user-data boot is slower than the retired
Metadata path).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from e2e_support import SETUP_C_DENIED, assert_setup_c_denied

from enclavekit import provisioning as prov
from enclavekit.localenv import local_aws_env
from local_backend import server
from local_backend.cdk import run_cdk
from local_backend.host.layout import instance_layout
from local_backend.parent import instance_dir, instances_status
from local_backend.parent.view import AgentHost, agent_config
from local_backend.pytest_plugin import free_port
from local_backend.up import UpResult, up
from local_backend.verify import CHECKS, verify

# Real endpoint, real cdk CLI, instance hosts and enclaves.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
STACK = "FleetStack"
DOMAIN = "fleet.example.test"
AZ_CONTEXT = "availability-zones:account=123456789012:region=us-east-1"

APP = textwrap.dedent(f'''
    """Two enclave hosts from one launch template, their certificate and sealed secret."""
    import enclave_constructs as ek  # first: the project's Node.js 22 under jsii

    import aws_cdk as cdk
    from aws_cdk import aws_certificatemanager as acm
    from aws_cdk import aws_ec2 as ec2

    app = cdk.App()
    stack = cdk.Stack(app, "{STACK}",
                      env=cdk.Environment(account="123456789012", region="us-east-1"))
    vpc = ec2.Vpc(stack, "Vpc", max_azs=1, nat_gateways=0, subnet_configuration=[
        ec2.SubnetConfiguration(name="enclave", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED,
                                cidr_mask=24)])
    certificate = acm.Certificate(stack, "Certificate", domain_name="{DOMAIN}")
    # 2 enclaves on a 2-core machine: the emulator lets them share the CPUs
    host = ek.EnclaveHost(stack, "Host", vpc=vpc,
                          image=ek.EnclaveImage.from_directory("enclave_app"),
                          enclave_cpu_count=2, enclave_memory_mib=256,
                          certificate=certificate, domain="{DOMAIN}",
                          fleet=ek.FleetOptions(min_capacity=2, max_capacity=2))
    # the service port open to the VPC, as the sample app does: forwarded to a machine port
    host.connections.allow_default_port_from(ec2.Peer.ipv4(vpc.vpc_cidr_block))
    key = ek.AttestedKey(stack, "SecretKey", removal_policy=cdk.RemovalPolicy.DESTROY)
    host.grant_attested_decrypt(key)
    ek.EnclaveSecret(stack, "AppSecret", host=host, key=key, name="app-secret")
    cdk.CfnOutput(stack, "GroupName", value=host.auto_scaling_group.auto_scaling_group_name)
    cdk.CfnOutput(stack, "LaunchTemplateId", value=host.launch_template.launch_template_id)
    cdk.CfnOutput(stack, "RoleArn", value=host.role.role_arn)
    cdk.CfnOutput(stack, "CertificateArn", value=certificate.certificate_arn)
    app.synth()
''')


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(what: str, cond: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


@dataclass
class Fleet:
    app_dir: Path
    state_dir: Path
    endpoint: str
    result: UpResult
    outputs: dict[str, str]
    aws: dict[str, Any]

    def group(self) -> dict[str, Any]:
        groups = self.aws["autoscaling"].describe_auto_scaling_groups(
            AutoScalingGroupNames=[self.outputs["GroupName"]]
        )["AutoScalingGroups"]
        assert len(groups) == 1, groups
        return groups[0]

    def instance_ids(self) -> list[str]:
        return sorted(
            i["InstanceId"] for i in self.group()["Instances"] if i["LifecycleState"] == "InService"
        )

    def view(self, instance_id: str) -> AgentHost:
        return AgentHost(instance_layout(self.state_dir, instance_id))

    def parent(self, instance_id: str) -> dict[str, Any]:
        """The parent side's state: the host's state and launcher pid, its enclave, and what
        the enclave's Status says of its provisioning."""
        return self.view(instance_id).state()

    def processes(self, instance_id: str) -> tuple[int, int, int]:
        """(host launcher pid, enclave pid on the machine, relay port) of a running instance."""
        view = self.view(instance_id)
        st = view.state()
        enclave_pid = view.enclave_pid(st["enclave"]["EnclaveID"])
        assert enclave_pid is not None, st["enclave"]
        return int(st["pid"]), enclave_pid, int(st["relay_port"])

    def status(self, instance_id: str) -> prov.StatusReport:
        """The enclave's own Status, over that instance's vsock namespace."""
        reply = self.view(instance_id).control(prov.Status(), timeout=30)
        assert isinstance(reply, prov.StatusReport), reply
        return reply


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    app_dir = tmp_path_factory.mktemp("fleet-app")
    shutil.copytree(
        ROOT / "enclave_app",
        app_dir / "enclave_app",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    (app_dir / "app.py").write_text(APP)
    (app_dir / "cdk.json").write_text(
        json.dumps(
            {
                "app": f"{sys.executable} app.py",
                "context": {AZ_CONTEXT: ["us-east-1a", "us-east-1b", "us-east-1c"]},
            }
        )
    )
    state_dir = tmp_path_factory.mktemp("fleet-state")
    port = free_port()
    try:
        result = up(app_dir, state_dir=state_dir, port=port)
        endpoint = server.running_endpoint(state_dir).endpoint
        env = local_aws_env(endpoint)
        session = boto3.Session(
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )
        aws = {
            name: session.client(name, endpoint_url=endpoint)
            for name in ("cloudformation", "ec2", "autoscaling", "iam")
        }
        stack = aws["cloudformation"].describe_stacks(StackName=STACK)["Stacks"][0]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        yield Fleet(app_dir, state_dir, endpoint, result, outputs, aws)
    finally:
        server.stop(state_dir)
        leftovers = [
            d.name
            for d in (state_dir / "instances").glob("*")
            if any(_alive(int(p)) for k in ("pid", "init_pid") if (p := _host(d).get(k)))
        ]
        assert not leftovers, f"parents still alive after the endpoint stopped: {leftovers}"
        assert not _listening(port), f"the endpoint port {port} still listens"


def _host(d: Path) -> dict[str, Any]:
    try:
        return json.loads((d / "host.json").read_text())
    except (OSError, ValueError):
        return {}


def test_up_boots_one_parent_per_fleet_instance(fleet: Fleet) -> None:
    ids = fleet.instance_ids()
    assert len(ids) == 2, fleet.group()
    lt_id = fleet.outputs["LaunchTemplateId"]
    latest = fleet.aws["ec2"].describe_launch_templates(LaunchTemplateIds=[lt_id])[
        "LaunchTemplates"
    ][0]["LatestVersionNumber"]
    role_arn = fleet.outputs["RoleArn"]
    relay_ports, pids = set(), set()
    for iid in ids:
        st = fleet.parent(iid)
        assert st["state"] == "running" and st["provisioned"], (iid, st)
        info = json.loads((instance_dir(fleet.state_dir, iid) / "instance.json").read_text())
        # the launch template's user data wrote the agent's host.json, resolved by the stack
        host = agent_config(instance_layout(fleet.state_dir, iid))
        assert host is not None
        assert info["logical_id"].startswith("HostLaunchTemplate")
        assert info["role_arns"] == [role_arn]
        assert host["enclave"] == {
            "cpu_count": 2,
            "memory_mib": 256,
            "cid": 16,
            "debug_mode": False,
        }
        assert host["image"]["asset"]["bucket"].startswith("cdk-"), host["image"]["asset"]
        assert st["enclave"]["EnclaveCID"] == 16  # per instance, as on AWS: own vsock space
        assert st["enclave"]["MemoryMiB"] == 256
        parent_pid, enclave_pid, relay_port = fleet.processes(iid)
        assert _alive(parent_pid) and _alive(enclave_pid) and _listening(relay_port)
        relay_ports.add(relay_port)
        pids.update({parent_pid, enclave_pid})
        # what EC2 itself says about the instance: from the group's template version
        ec2 = fleet.aws["ec2"]
        inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
        tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
        assert tags["aws:ec2launchtemplate:id"] == lt_id
        assert tags["aws:ec2launchtemplate:version"] == str(latest)
        assert tags["aws:autoscaling:groupName"] == fleet.outputs["GroupName"]
        assert inst["MetadataOptions"]["HttpTokens"] == "required"
        attr = ec2.describe_instance_attribute(InstanceId=iid, Attribute="enclaveOptions")
        assert attr["EnclaveOptions"] == {"Enabled": True}
        assoc = ec2.describe_iam_instance_profile_associations(
            Filters=[{"Name": "instance-id", "Values": [iid]}]
        )["IamInstanceProfileAssociations"]
        assert len(assoc) == 1 and assoc[0]["State"] == "associated", assoc
        profile = assoc[0]["IamInstanceProfile"]["Arn"].rsplit("/", 1)[-1]
        roles = fleet.aws["iam"].get_instance_profile(InstanceProfileName=profile)[
            "InstanceProfile"
        ]["Roles"]
        assert [r["Arn"] for r in roles] == [role_arn]
    assert len(relay_ports) == 2 and len(pids) == 4
    assert sorted(r["instance_id"] for r in instances_status(fleet.state_dir)) == ids


def test_instances_share_the_role_association_but_not_their_enclaves(fleet: Fleet) -> None:
    ids = fleet.instance_ids()
    statuses = {iid: fleet.status(iid) for iid in ids}
    # set-up C as on AWS: ACM denies the fleet's own image the certificate's key (degraded)
    assert all(s.state == "degraded" for s in statuses.values()), statuses
    assert all(s.secrets == ("app-secret",) for s in statuses.values()), statuses
    assert all("AccessDeniedException" in (s.last_error or "") for s in statuses.values())
    # two enclaves (own NSM module ids, own recipient keys) ...
    assert len({s.module_id for s in statuses.values()}) == 2
    assert len({s.public_key_sha256 for s in statuses.values()}) == 2
    # ... one ACM association per role, whose key neither enclave obtains
    assert {s.certificate_sha256 for s in statuses.values()} == {None}
    associations = fleet.aws["ec2"].get_associated_enclave_certificate_iam_roles(
        CertificateArn=fleet.outputs["CertificateArn"]
    )["AssociatedRoles"]
    assert [a["AssociatedRoleArn"] for a in associations] == [fleet.outputs["RoleArn"]]


def test_verify_report_has_one_passing_host_per_instance(fleet: Fleet) -> None:
    report = fleet.result.report
    assert report is not None
    assert_setup_c_denied(report)
    assert sorted(h.instance_id for h in report.hosts) == fleet.instance_ids()
    for h in report.hosts:
        assert h.stack == STACK and h.logical_id.startswith("HostLaunchTemplate")
        assert [c.name for c in h.checks] == [name for name, _ in CHECKS], report.table()
    table = report.table()
    assert all(f"{STACK}/{h.logical_id}/{h.instance_id}" in table for h in report.hosts), table
    denied = len(SETUP_C_DENIED)
    assert f"{2 * (len(CHECKS) - denied)} passed, {2 * denied} failed" in table


def test_scale_in_stops_one_parent_and_its_enclave(fleet: Fleet) -> None:
    before = fleet.instance_ids()
    procs = {iid: fleet.processes(iid) for iid in before}
    fleet.aws["autoscaling"].update_auto_scaling_group(
        AutoScalingGroupName=fleet.outputs["GroupName"], MinSize=1, DesiredCapacity=1
    )
    after = fleet.instance_ids()
    assert len(after) == 1 and after[0] in before
    (gone,) = set(before) - set(after)
    parent_pid, enclave_pid, relay_port = procs[gone]
    _wait(
        "the scaled-in parent and enclave to exit",
        lambda: not _alive(parent_pid) and not _alive(enclave_pid),
        timeout=15,
    )
    assert not _listening(relay_port)
    assert fleet.parent(gone)["state"] == "stopped"
    state = fleet.aws["ec2"].describe_instances(InstanceIds=[gone])["Reservations"][0]["Instances"][
        0
    ]["State"]["Name"]
    assert state == "terminated"
    kept = procs[after[0]]
    assert _alive(kept[0]) and _alive(kept[1]) and _listening(kept[2])
    assert fleet.status(after[0]).state == "degraded"  # set-up C: no certificate key
    assert [r["instance_id"] for r in instances_status(fleet.state_dir)] == after


def test_terminated_instance_is_replaced_and_the_replacement_verified(fleet: Fleet) -> None:
    (old,) = fleet.instance_ids()
    old_parent, old_enclave, old_port = fleet.processes(old)
    fleet.aws["ec2"].terminate_instances(InstanceIds=[old])
    (new,) = fleet.instance_ids()
    assert new != old
    assert not _alive(old_parent) and not _listening(old_port)
    _wait("the old enclave to exit", lambda: not _alive(old_enclave), timeout=15)
    # its host starts within the TerminateInstances call; its user data runs on after that
    _wait("the replacement's host to start", lambda: fleet.parent(new)["pid"], timeout=30)
    _wait(
        "the replacement to be provisioned",
        lambda: fleet.parent(new).get("provisioned"),
        timeout=300,
    )
    report = verify(fleet.state_dir, stack=STACK)
    assert [h.instance_id for h in report.hosts] == [new]
    assert_setup_c_denied(report)


def test_destroy_leaves_no_parent_enclave_or_port(fleet: Fleet) -> None:
    dirs = sorted((fleet.state_dir / "instances").iterdir())
    assert len(dirs) == 3  # two launched, one replacement
    running = [fleet.processes(d.name) for d in dirs if fleet.parent(d.name)["state"] == "running"]
    assert len(running) == 1
    res = run_cdk(
        ["destroy", "--all", "--force"],
        state_dir=fleet.state_dir,
        cwd=fleet.app_dir,
        capture=True,
        timeout=180,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-2000:]
    stacks = [s["StackName"] for s in fleet.aws["cloudformation"].describe_stacks()["Stacks"]]
    assert STACK not in stacks
    assert fleet.aws["autoscaling"].describe_auto_scaling_groups()["AutoScalingGroups"] == []
    for parent_pid, enclave_pid, relay_port in running:
        _wait(
            "every parent and enclave to exit",
            lambda p=parent_pid, e=enclave_pid: not _alive(p) and not _alive(e),
            timeout=15,
        )
        assert not _listening(relay_port)
    for d in dirs:
        st = fleet.parent(d.name)
        assert st["state"] == "stopped", (d.name, st)
        assert not _alive(int(st["pid"]))
        # the host's PID 1 is gone: its PID namespace, with the enclaves nested in it, too
        assert not _alive(int(st["init_pid"]))
    assert instances_status(fleet.state_dir) == []
    assert os.path.isdir(fleet.state_dir)
