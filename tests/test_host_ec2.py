"""Instances of the local EC2 run their user data: console output, status, forwarded ports."""

from __future__ import annotations

import base64
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from local_backend.host import control, hooks
from local_backend.host.layout import instance_layout
from local_backend.verify import verify

pytestmark = pytest.mark.slow

SERVER = (
    "#!/bin/bash\n"
    "echo serving from $(hostname)\n"
    "mkdir -p /srv/www && echo hello-from-the-host > /srv/www/index.html\n"
    "cd /srv/www && nohup python3 -m http.server 8080 --bind 127.0.0.1 >/var/log/www.log 2>&1 &\n"
    "for i in $(seq 50); do curl -s localhost:8080/ >/dev/null && break; sleep 0.1; done\n"
    "echo IMDSv1=$(curl -s -o /dev/null -w '%{http_code}' "
    "http://169.254.169.254/latest/meta-data/instance-id)\n"
    "T=$(curl -s -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "
    "http://169.254.169.254/latest/api/token)\n"
    'echo IMDSv2=$(curl -s -H "X-aws-ec2-metadata-token: $T" '
    "http://169.254.169.254/latest/meta-data/instance-id)\n"
    "echo AWS-HTTPS=$(curl -s -o /dev/null -w '%{http_code}' "
    "https://sts.us-east-1.amazonaws.com/)\n"
    # the instance's own 443 is free for its services, as on EC2 (the AWS names' front is not
    # in the way)
    "python3 -c \"import socket; socket.create_server(('0.0.0.0', 443)); print('BIND443=ok')\"\n"
)


def _vpc(ec2: Any, ports: list[int]) -> tuple[str, str]:
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName=f"g{time.time_ns()}", Description="d", VpcId=vpc)
    for port in ports:
        ec2.authorize_security_group_ingress(
            GroupId=sg["GroupId"],
            IpProtocol="tcp",
            FromPort=port,
            ToPort=port,
            CidrIp="0.0.0.0/0",
        )
    return subnet, sg["GroupId"]


def _run(ec2: Any, user_data: str, ports: list[int], **kw: Any) -> str:
    subnet, sg = _vpc(ec2, ports)
    return ec2.run_instances(
        ImageId="ami-12c6146b",
        MinCount=1,
        MaxCount=1,
        InstanceType="m5.xlarge",
        SubnetId=subnet,
        SecurityGroupIds=[sg],
        UserData=user_data,
        **kw,
    )["Instances"][0]["InstanceId"]


def _console(ec2: Any, iid: str, until: str) -> str:
    """GetConsoleOutput once it shows `until`. The wire carries base64 as AWS's does;
    botocore decodes it (its after-call handler decode_console_output), as the AWS CLI does."""
    deadline = time.monotonic() + 10
    while True:
        text = ec2.get_console_output(InstanceId=iid).get("Output", "")
        if until in text or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def _booted(state_dir: Path, iid: str) -> dict[str, Any]:
    return control.wait_booted(instance_layout(state_dir, iid), timeout=120)


def test_run_instances_runs_user_data_console_and_ports(enclavekit_endpoint: Any) -> None:
    ec2 = enclavekit_endpoint.client("ec2")
    state = Path(enclavekit_endpoint.state_dir)
    open_iid = _run(ec2, SERVER, [8080], MetadataOptions={"HttpTokens": "required"})
    closed_iid = _run(ec2, SERVER, [22])
    try:
        for iid in (open_iid, closed_iid):
            assert control.boot_error(_booted(state, iid)) is None
        text = _console(ec2, open_iid, "Cloud-init v. 22.2.2 finished")
        assert "Cloud-init v. 22.2.2 finished" in text and "serving from ip-" in text
        assert "IMDSv1=401" in text and f"IMDSv2={open_iid}" in text  # HttpTokens=required
        # AWS names over HTTPS reach the endpoint's TLS front, verified against the host's CAs
        code = text.split("AWS-HTTPS=")[1].split()[0]
        assert code != "000" and code.isdigit(), text
        assert "BIND443=ok" in text, text
        other = _console(ec2, closed_iid, "IMDSv1=")
        assert "IMDSv1=200" in other  # optional tokens (the default): IMDSv1 answers
        rows = {r["instance_id"]: r for r in hooks.hosts_status(state)}
        assert rows[open_iid]["user_data"] == "done"
        assert [p["port"] for p in rows[open_iid]["ports"]] == [8080]
        assert [p["port"] for p in rows[closed_iid]["ports"]] == [22]  # 8080 not let in
        host_port = rows[open_iid]["ports"][0]["host_port"]
        with socket.create_connection(("127.0.0.1", host_port), timeout=5) as s:
            s.sendall(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
            reply = b"".join(iter(lambda: s.recv(4096), b""))
        assert b"hello-from-the-host" in reply
    finally:
        ec2.terminate_instances(InstanceIds=[open_iid, closed_iid])
    assert instance_layout(state, open_iid).read_host()["state"] == "stopped"


def test_failing_user_data_is_a_failed_boot_not_a_failed_launch(enclavekit_endpoint: Any) -> None:
    ec2 = enclavekit_endpoint.client("ec2")
    state = Path(enclavekit_endpoint.state_dir)
    iid = _run(ec2, "#!/bin/bash\nset -e\necho before\ndnf install -y no-such-package\n", [])
    try:
        host = _booted(state, iid)
        assert control.boot_error(host) == (
            "user data failed: part-001 exited 1 at `dnf install -y no-such-package`"
        )
        text = _console(ec2, iid, "Unable to find a match")
        assert "No match for argument: no-such-package" in text
        assert "Error: Unable to find a match: no-such-package" in text
        row = next(r for r in hooks.hosts_status(state) if r["instance_id"] == iid)
        assert row["user_data"] == "failed" and "exited 1" in row["boot_error"]
    finally:
        ec2.terminate_instances(InstanceIds=[iid])


UNIT_USER_DATA = (
    "#!/bin/bash\nset -e\n"
    "echo first-boot-ran >> /var/log/first-boot.log\n"
    "cat > /etc/systemd/system/tick.service <<'UNIT'\n"
    "[Unit]\nDescription=tick\n[Service]\n"
    "ExecStart=/bin/bash -c 'echo tick $(cat /proc/sys/kernel/random/boot_id 2>/dev/null); "
    "sleep 600'\n[Install]\nWantedBy=multi-user.target\nUNIT\n"
    "systemctl enable --now tick.service\n"
)


def test_restart_runs_enabled_units_not_the_user_data(enclavekit_endpoint: Any) -> None:
    ec2 = enclavekit_endpoint.client("ec2")
    state = Path(enclavekit_endpoint.state_dir)
    iid = _run(ec2, UNIT_USER_DATA, [])
    layout = instance_layout(state, iid)
    try:
        assert control.boot_error(_booted(state, iid)) is None
        ec2.stop_instances(InstanceIds=[iid])
        assert layout.read_host()["state"] == "stopped"
        ec2.start_instances(InstanceIds=[iid])
        _booted(state, iid)
        deadline = time.monotonic() + 30
        while True:
            out = control.host_exec(layout, ["systemctl", "is-active", "tick"])
            if out.stdout.strip() == "active" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert out.stdout.strip() == "active"  # enabled before the stop: started at boot
        runs = layout.inside("/var/log/first-boot.log").read_text()
        assert runs == "first-boot-ran\n"  # user data once per instance, as cloud-init
    finally:
        ec2.terminate_instances(InstanceIds=[iid])


def test_auto_scaling_instances_run_the_launch_template_user_data(
    enclavekit_endpoint: Any,
) -> None:
    ec2 = enclavekit_endpoint.client("ec2")
    asg = enclavekit_endpoint.client("autoscaling")
    state = Path(enclavekit_endpoint.state_dir)
    subnet, sg = _vpc(ec2, [])
    ec2.create_launch_template(
        LaunchTemplateName="fleet-lt",
        LaunchTemplateData={
            "ImageId": "ami-12c6146b",
            "InstanceType": "m5.xlarge",
            "SecurityGroupIds": [sg],
            "UserData": base64.b64encode(b"#!/bin/bash\necho fleet member up\n").decode(),
            "EnclaveOptions": {"Enabled": True},
        },
    )
    asg.create_auto_scaling_group(
        AutoScalingGroupName="fleet",
        MinSize=2,
        MaxSize=2,
        DesiredCapacity=2,
        LaunchTemplate={"LaunchTemplateName": "fleet-lt", "Version": "$Latest"},
        VPCZoneIdentifier=subnet,
    )
    try:
        ids = [
            i["InstanceId"]
            for i in asg.describe_auto_scaling_groups(AutoScalingGroupNames=["fleet"])[
                "AutoScalingGroups"
            ][0]["Instances"]
        ]
        assert len(ids) == 2
        for iid in ids:
            assert control.boot_error(_booted(state, iid)) is None
            assert "fleet member up" in _console(ec2, iid, "fleet member up")
        # verify sees both (enclave-enabled by their launch template), though of no stack and
        # with no enclave: booted, then the enclave check fails saying the user data ran none.
        report = verify(state)
        mine = {h.instance_id: h for h in report.hosts if h.instance_id in ids}
        assert sorted(mine) == sorted(ids) and not report.ok
        for hr in mine.values():
            assert [(c.name, c.ok) for c in hr.checks] == [("boot", True), ("enclaves", False)]
            assert "the user data started none" in hr.checks[1].detail
    finally:
        asg.delete_auto_scaling_group(AutoScalingGroupName="fleet", ForceDelete=True)
