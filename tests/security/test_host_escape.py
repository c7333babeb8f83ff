"""Root in an instance host (its user data) attacks the machine that runs the host.

On EC2 the instance's root owns the instance and nothing else. Locally the host is a set of
namespaces on the machine's kernel, and the endpoint (root on the machine) reads and writes the
host's disk from outside at each boot: both are ways out that these tests close. Every script
first proves it runs inside a host (GUARD), so a broken sandbox fails without harming the
machine; the kernel settings are written with their own value.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from host_support import booted, console, instance_info

from local_backend.host import control
from local_backend.host.layout import HostLayout, instance_layout

pytestmark = pytest.mark.slow

GUARD = "[ -f /var/lib/enclavekit-host/ami ] || { echo NOT-IN-HOST; exit 99; }\n"
IID = "i-0123456789abcdef0"
FAKE_CA = "-----BEGIN CERTIFICATE-----\nZW5kcG9pbnQgQ0E=\n-----END CERTIFICATE-----\n"


def test_host_root_cannot_write_the_machines_kernel_settings(tmp_path: Path) -> None:
    """uid 0 needs no capability to write a sysctl: `kernel.core_pattern = |/proc/%P/root/x`
    would run a host file as the machine's root at the next crash. /proc/sys is read-only in
    the host (its network's settings stay the host's own: they are per network namespace)."""
    script = (
        "#!/bin/bash\n" + GUARD + "f=/proc/sys/kernel/core_pattern\n"
        'v=$(cat $f); echo "$v" > $f 2>/dev/null && echo CORE-PATTERN-WRITTEN '
        "|| echo CORE-PATTERN-REFUSED\n"
        "cat /proc/sys/kernel/core_pattern >/dev/null && echo SYSCTL-READABLE\n"
        "echo 1 > /proc/sys/net/ipv4/ip_forward && echo OWN-NET-SYSCTL-WRITTEN\n"
    )
    with booted(tmp_path, script) as (layout, host):
        out = console(layout)
        assert control.boot_error(host) is None, out
        assert "SYSCTL-READABLE" in out and "OWN-NET-SYSCTL-WRITTEN" in out, out
        assert "CORE-PATTERN-REFUSED" in out and "CORE-PATTERN-WRITTEN" not in out, out


def test_host_root_cannot_change_the_machines_cgroups(tmp_path: Path) -> None:
    """/sys is read-only in a host, but its submounts kept their own flags: the machine's
    cgroup hierarchies were writable, so root in the user data could create groups, rewrite
    another enclave's limits or freeze it. Every mount under /sys is read-only for it."""
    script = (
        "#!/bin/bash\n" + GUARD + "n=0\n"
        "for d in $(awk '$9 ~ /^cgroup/ {print $5}' /proc/self/mountinfo); do\n"
        "  n=$((n+1))\n"
        '  mkdir "$d/ek-attack" 2>/dev/null && { echo CGROUP-CREATED $d; rmdir "$d/ek-attack"; }\n'
        '  for f in "$d"/*/cgroup.procs; do [ -e "$f" ] || continue\n'
        '    g=$(dirname "$f"); for k in pids.max memory.limit_in_bytes freezer.state; do\n'
        '      [ -e "$g/$k" ] && { v=$(cat "$g/$k"); echo "$v" > "$g/$k" 2>/dev/null && '
        "echo LIMIT-WRITTEN $g/$k; }; done; done\n"
        "done\n"
        "echo CGROUP-MOUNTS=$n\n"
    )
    with booted(tmp_path, script) as (layout, host):
        out = console(layout)
        assert control.boot_error(host) is None, out
        mounts = int(out.split("CGROUP-MOUNTS=")[1].split()[0])
        if mounts == 0:
            pytest.skip("no cgroup hierarchy under /sys/fs/cgroup on this machine")
        assert "CGROUP-CREATED" not in out and "LIMIT-WRITTEN" not in out, out


def test_the_machine_does_not_follow_the_hosts_links_at_boot(tmp_path: Path) -> None:
    """At each boot the launcher (root on the machine) writes the user data and the endpoint's
    CA into the host's disk. Root in the host can leave links there pointing at machine paths:
    a `.pth` file in the project's site-packages holding the user data would run it in every
    Python the machine starts. The links resolve inside the host's disk, as cloud-init follows
    them inside the instance on EC2."""
    machine = tmp_path / "machine"  # stands for any machine path (site-packages, /etc, ...)
    machine.mkdir()
    (tmp_path / "pki" / "aws-tls").mkdir(parents=True)
    (tmp_path / "pki" / "aws-tls" / "root.pem").write_text(FAKE_CA)
    script = (
        "#!/bin/bash\n" + GUARD + f"d=/var/lib/cloud/instances/{IID}\n"
        f"rm -f $d/user-data.txt && ln -s {machine}/evil.pth $d/user-data.txt\n"
        f"rm -f /etc/pki/tls/certs/ca-bundle.crt && ln -s {machine}/bundle "
        "/etc/pki/tls/certs/ca-bundle.crt\n"
        f"rm -rf /etc/ssl/certs && ln -s {machine} /etc/ssl/certs\n"
        "echo LINKS-PLANTED\n"
    )
    info = instance_info(tmp_path, script)
    layout = HostLayout(tmp_path / "instances" / IID)
    with booted(tmp_path, script) as (first, host):
        assert control.boot_error(host) is None, console(first)
        assert "LINKS-PLANTED" in console(first)
    control.start_host(layout, info)  # the instance reboots (or the endpoint restarts)
    try:
        host = control.wait_booted(layout, timeout=120)
        assert control.boot_error(host) is None, console(layout)
    finally:
        control.stop_host(layout)
    assert sorted(p.name for p in machine.iterdir()) == []
    # the writes landed where the links lead inside the host, as on EC2
    inside = layout.rootfs / str(machine).lstrip("/")
    assert (inside / "evil.pth").read_text() == script
    assert FAKE_CA.strip() in (inside / "bundle").read_text()
    assert FAKE_CA.strip() in (inside / "ca-certificates.crt").read_text()


def test_an_instance_cannot_use_the_endpoints_own_keys(enclavekit_endpoint: Any) -> None:
    """The local account root's key (`testing`) and the key the IMDS stand-in signs with as
    ec2.amazonaws.com are constants in this source. On EC2 an instance has its own role and
    nothing else; here root in a host could use them through the endpoint relay: the root to
    rewrite a key policy and Decrypt every sealed secret, the EC2 key to assume another
    instance's role. Requests an instance sends are refused for those keys as AWS refuses an
    unknown key (over the relay to the endpoint and over the AWS names' HTTPS alike)."""
    from local_backend.moto_ext.identity import (
        EC2_SERVICE_ACCESS_KEY_ID,
        EC2_SERVICE_SECRET_ACCESS_KEY,
    )

    iam, ec2 = enclavekit_endpoint.client("iam"), enclavekit_endpoint.client("ec2")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    victim = iam.create_role(
        RoleName=f"victim-{time.time_ns()}", AssumeRolePolicyDocument=json.dumps(trust)
    )["Role"]["Arn"]
    tls = "--endpoint-url https://sts.us-east-1.amazonaws.com"
    script = (
        "#!/bin/bash\n" + GUARD + "export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing\n"
        "echo ROOT-RELAY: $(aws sts get-caller-identity --query Arn --output text 2>&1)\n"
        f"echo ROOT-TLS: $(aws {tls} sts get-caller-identity --query Arn --output text 2>&1)\n"
        f"export AWS_ACCESS_KEY_ID={EC2_SERVICE_ACCESS_KEY_ID} "
        f"AWS_SECRET_ACCESS_KEY={EC2_SERVICE_SECRET_ACCESS_KEY}\n"
        f"echo EC2-KEY: $(aws {tls} sts assume-role --role-arn {victim} --role-session-name "
        "stolen --query AssumedRoleUser.Arn --output text 2>&1)\n"
    )
    iid = ec2.run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="m5.xlarge", UserData=script
    )["Instances"][0]["InstanceId"]
    state = Path(enclavekit_endpoint.state_dir)
    try:
        layout = instance_layout(state, iid)
        host = control.wait_booted(layout, timeout=120)
        out = console(layout)
        assert control.boot_error(host) is None, out
        lines = {ln.split(":")[0]: ln for ln in out.splitlines() if ln.startswith(("ROOT", "EC2"))}
        assert set(lines) == {"ROOT-RELAY", "ROOT-TLS", "EC2-KEY"}, out
        for line in lines.values():
            assert "InvalidClientTokenId" in line, out  # the endpoint answered, and refused
            assert ":root" not in line and "stolen" not in line, out
    finally:
        ec2.terminate_instances(InstanceIds=[iid])
    # the machine's own clients keep both keys (the CLI, the IMDS stand-in)
    sts = enclavekit_endpoint.client(
        "sts",
        aws_access_key_id=EC2_SERVICE_ACCESS_KEY_ID,
        aws_secret_access_key=EC2_SERVICE_SECRET_ACCESS_KEY,
    )
    assert sts.assume_role(RoleArn=victim, RoleSessionName="imds")["AssumedRoleUser"]
    assert enclavekit_endpoint.client("sts").get_caller_identity()["Account"] == "123456789012"


def _signed_sts_call(sock: socket.socket, creds: dict[str, str]) -> str:
    """GetCallerIdentity signed with `creds`, sent on `sock` (TLS to sts's name); the reply."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    host = "sts.us-east-1.amazonaws.com"
    body = "Action=GetCallerIdentity&Version=2011-06-15"
    req = AWSRequest(
        "POST",
        f"https://{host}/",
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    SigV4Auth(
        Credentials(creds["key"], creds["secret"], creds.get("token")), "sts", "us-east-1"
    ).add_auth(req)
    head = "".join(f"{k}: {v}\r\n" for k, v in req.headers.items())
    sock.sendall(
        f"POST / HTTP/1.1\r\nHost: {host}\r\n{head}Content-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n{body}".encode()
    )
    return b"".join(iter(lambda: sock.recv(65536), b"")).decode(errors="replace")


def test_an_enclaves_vsock_proxy_cannot_carry_the_endpoints_own_keys(
    enclavekit_endpoint: Any, tmp_path: Path
) -> None:
    """An enclave's only way to AWS is the parent's vsock-proxy; the emulator's connects from
    the instances' address, so the enclave gets the same refusal for the constant keys, while
    a role session it was handed still works through the same proxy."""
    import ssl

    from enclavekit.transport import EmulatedVsock
    from local_backend import server
    from local_backend.emulator.vsock_proxy import VsockProxy
    from local_backend.moto_ext.identity import (
        EC2_SERVICE_ACCESS_KEY_ID,
        EC2_SERVICE_SECRET_ACCESS_KEY,
    )

    state = Path(enclavekit_endpoint.state_dir)
    info = server.read_endpoint(state)
    assert info is not None and info.tls_endpoint
    host = "sts.us-east-1.amazonaws.com"
    (tmp_path / "vsock" / "3").mkdir(parents=True)
    allowlist = tmp_path / "vsock-proxy.yaml"
    allowlist.write_text(f"allowlist:\n- {{address: {host}, port: 443}}\n")
    proxy = VsockProxy.for_state_dir(
        tmp_path, 8000, host, 443, config=allowlist, endpoint=enclavekit_endpoint.url,
        tls_endpoint=info.tls_endpoint,
    ).start()  # fmt: skip
    ctx = ssl.create_default_context(cafile=str(state / "pki" / "aws-tls" / "root.pem"))
    iam = enclavekit_endpoint.client("iam")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    role = iam.create_role(
        RoleName=f"enclave-parent-{time.time_ns()}", AssumeRolePolicyDocument=json.dumps(trust)
    )["Role"]["Arn"]
    c = enclavekit_endpoint.client(
        "sts",
        aws_access_key_id=EC2_SERVICE_ACCESS_KEY_ID,
        aws_secret_access_key=EC2_SERVICE_SECRET_ACCESS_KEY,
    ).assume_role(RoleArn=role, RoleSessionName="i-0123456789abcdef0")["Credentials"]
    session = {"key": c["AccessKeyId"], "secret": c["SecretAccessKey"], "token": c["SessionToken"]}
    try:
        replies = {}
        for name, creds in (
            ("root", {"key": "testing", "secret": "testing"}),
            ("ec2", {"key": EC2_SERVICE_ACCESS_KEY_ID, "secret": EC2_SERVICE_SECRET_ACCESS_KEY}),
            ("session", session),
        ):
            raw = EmulatedVsock(tmp_path / "vsock", 16).connect(3, 8000)
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                replies[name] = _signed_sts_call(tls, creds)
    finally:
        proxy.stop()
    for name in ("root", "ec2"):
        assert "InvalidClientTokenId" in replies[name], replies[name]
    assert "<GetCallerIdentityResult>" in replies["session"], replies["session"]
    assert "enclave-parent-" in replies["session"]


PROBE_APP = Path(__file__).resolve().parents[1] / "fixtures" / "probe_app"
ASK_PROBE = """python3 - "$1" "$2" <<'PY'
import sys, time
from enclavekit.transport import open_vsock
v = open_vsock()
for _ in range(100):
    try:
        s = v.connect(int(sys.argv[1]), 5006)
        break
    except OSError:
        time.sleep(0.1)
s.sendall(sys.argv[2].encode() + b"\\n")
print("PROBE", s.makefile("rb").readline().decode().strip())
PY
"""


def test_host_root_cannot_change_the_code_the_enclave_driver_runs(tmp_path: Path) -> None:
    """The enclave driver (which alone keeps CAP_SYS_ADMIN), the monitors it starts (which hold
    the attestation keys) and their enclaves' runtime layer (/usr/lib, not measured) run code
    from the host's view of the machine. Root in the host could write that code: a library in
    /usr/lib (its overlay) is loaded by the enclave with its true PCRs, `/lib64` or
    /etc/ld.so.preload pick the loader of the driver's next program, and renaming a directory
    that leads to the project or the interpreter leaves root's files at the machine path the
    driver executes. The driver sees the machine's /usr; the rest is read-only to root."""
    from enclavekit.build import build_enclave
    from local_backend.host.layout import PERSISTENT_DIRS
    from local_backend.host.rootfs import tool_mounts

    opt = instance_layout(tmp_path, IID).inside("/opt")
    opt.mkdir(parents=True)
    build_enclave(PROBE_APP, opt / "probe.eif")
    movable = set()
    for path in tool_mounts():
        parts = [p for p in path.split("/") if p]
        top = 2 if parts[0] in PERSISTENT_DIRS else 1
        if len(parts) > top:
            movable.add("/" + "/".join(parts[:top]))
    script = (
        "#!/bin/bash\n" + GUARD + f"ask() {{\n{ASK_PROBE}}}\n"
        "dnf install -y -q aws-nitro-enclaves-cli\n"
        "systemctl start nitro-enclaves-allocator\n"
        "echo parent-wrote-this > /usr/lib/ek-parent-marker && echo MARKER-PLANTED\n"
        "echo /tmp/evil.so > /etc/ld.so.preload 2>/dev/null && echo PRELOAD-WRITTEN\n"
        "rm -f /etc/ld.so.preload 2>/dev/null && echo PRELOAD-REMOVED\n"
        "cid=$(nitro-cli run-enclave --eif-path /opt/probe.eif --cpu-count 2 --memory 512 | "
        "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"EnclaveCID\"])')\n"
        "ask $cid 'READ /usr/lib/ek-parent-marker'\n"
        "ask $cid 'READ /usr/lib/os-release'\n"
        "ln -sfn /tmp /lib64 2>/dev/null && echo LOADER-LINK-SWAPPED\n"
        "mkdir /ek-top 2>/dev/null && echo TOP-DIR-MADE\n"
        + "".join(f"mv {m} {m}.moved 2>/dev/null && echo MOVED {m}\n" for m in sorted(movable))
    )
    with booted(tmp_path, script, enclave_enabled=True) as (layout, host):
        out = console(layout)
    assert "MARKER-PLANTED" in out, out
    probes = [ln for ln in out.splitlines() if ln.startswith("PROBE ")]
    assert len(probes) == 2, out
    # the enclave's /usr/lib is the machine's: not the file root wrote, yet a real one
    assert probes[0].startswith("PROBE MISSING 2 "), out
    assert probes[1].startswith("PROBE CONTENT "), out
    # a top-level directory: the monitor runs `python -m local_backend...` from "/", which
    # puts "/" first on its sys.path, so /local_backend/ of root's would have been it
    for done in ("PRELOAD-", "LOADER-LINK-SWAPPED", "TOP-DIR-MADE", "MOVED "):
        assert done not in out, out


def test_the_machine_looking_into_a_host_runs_its_commands_without_its_own_capabilities(
    tmp_path: Path,
) -> None:
    """`local status` and verify run `nitro-cli describe-enclaves` (and probes) inside a host
    from the machine. That command is the host's (its PATH, its /usr overlay): root there can
    replace it, and it ran with the machine's full capabilities (CAP_SYS_MODULE loads a kernel
    module, CAP_DAC_READ_SEARCH opens machine files by handle). It runs with no more than the
    host's own root has."""
    script = (
        "#!/bin/bash\n" + GUARD + "dnf install -y -q aws-nitro-enclaves-cli\n"
        "grep CapBnd /proc/self/status > /root/user-data.caps\n"
        "printf '#!/bin/bash\\ngrep CapBnd /proc/self/status > /root/entered.caps\\necho []\\n'"
        " > /usr/local/bin/nitro-cli && chmod +x /usr/local/bin/nitro-cli\n"
    )
    with booted(tmp_path, script) as (layout, host):
        assert control.boot_error(host) is None, console(layout)
        run = control.host_exec(layout, ["nitro-cli", "describe-enclaves"])
        assert run.returncode == 0, run.stderr
        entered = layout.inside("/root/entered.caps").read_text()
        assert entered == layout.inside("/root/user-data.caps").read_text(), entered
