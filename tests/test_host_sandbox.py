"""The host sandbox: user data runs as root in its own namespaces and never touches the machine."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from host_support import booted, console

from local_backend.host import control

pytestmark = pytest.mark.slow

# Every destructive script first proves it runs inside a host (the AMI marker exists only
# there), so a broken sandbox fails the test without harming the machine.
GUARD = "[ -f /var/lib/enclavekit-host/ami ] || { echo NOT-IN-HOST; exit 99; }\n"
ROOT = Path(__file__).resolve().parent.parent
WATCHED = ("/etc/hosts", "/etc/passwd", "/etc/group", "/etc/shadow")


def _fingerprint() -> dict[str, str]:
    out = {
        p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in WATCHED if os.path.exists(p)
    }
    out["/etc listing"] = ",".join(sorted(os.listdir("/etc")))
    out["/usr/bin listing"] = ",".join(sorted(os.listdir("/usr/bin")))
    out["/opt listing"] = ",".join(sorted(os.listdir("/opt")))
    return out


def test_destructive_user_data_leaves_the_machine_unchanged(tmp_path: Path) -> None:
    before = _fingerprint()
    script = (
        "#!/bin/bash\n" + GUARD + "useradd bob\n"
        "id bob\n"
        "cp /etc/passwd /root/passwd.copy\n"
        "sed -i 's/localhost/changed/' /etc/hosts\n"
        "echo '203.0.113.7 evil.example' >> /etc/hosts\n"
        "cp /etc/hosts /root/hosts.copy\n"
        "touch /usr/bin/zz-host-canary /opt/zz-host-canary\n"
        "mount -o remount,rw /usr 2>/dev/null || echo REMOUNT-USR-REFUSED\n"
        f"mount -o remount,rw {ROOT} 2>/dev/null || echo REMOUNT-PROJECT-REFUSED\n"
        "mount -t tmpfs none /mnt 2>/dev/null || echo MOUNT-REFUSED\n"
        "unshare -m true 2>/dev/null || echo UNSHARE-REFUSED\n"
        "rm -rf /etc\n"
        "test ! -e /etc/passwd && echo ETC-GONE\n"
    )
    with booted(tmp_path, script) as (layout, host):
        assert control.boot_error(host) is None, console(layout)
        out = console(layout)
        assert "uid=1001(bob)" in out and "ETC-GONE" in out, out
        # root in the host holds no CAP_SYS_ADMIN: only the enclave driver does
        for refused in ("REMOUNT-USR", "REMOUNT-PROJECT", "MOUNT", "UNSHARE"):
            assert f"{refused}-REFUSED" in out, out
        assert "bob:x:1001" in (layout.inside("/root/passwd.copy")).read_text()
        hosts = layout.inside("/root/hosts.copy").read_text()
        assert "evil.example" in hosts and "changed" in hosts
        assert layout.rootfs.joinpath("usr-upper/bin/zz-host-canary").exists()
    assert _fingerprint() == before
    assert not Path("/usr/bin/zz-host-canary").exists()


def test_own_namespaces_hostname_and_no_route_out(tmp_path: Path) -> None:
    script = (
        "#!/bin/bash\n" + GUARD + "echo HOSTNAME=$(hostname)\n"
        "echo PID1=$(tr '\\0' ' ' < /proc/1/cmdline)\n"
        "echo PROCS=$(ls /proc | grep -c '^[0-9]')\n"
        "echo IFACES=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ,)\n"
        "curl -s -m 3 http://192.0.2.1/ || echo NO-ROUTE\n"
        "echo WHOAMI=$(id -u) OS=$(. /etc/os-release; echo $ID-$VERSION_ID)\n"
    )
    with booted(tmp_path, script) as (layout, host):
        out = console(layout)
        assert control.boot_error(host) is None, out
        assert "HOSTNAME=ip-10-0-0-5.ec2.internal" in out
        assert "PID1=" in out and "local_backend.host.init" in out
        procs = int(out.split("PROCS=")[1].split()[0])
        assert procs < 15, out  # the host's own few processes, not the machine's
        assert "IFACES=ek-host,lo," in out  # lo + the link to IMDS/AWS names (services_net)
        assert "NO-ROUTE" in out
        assert "WHOAMI=0 OS=amzn-2023" in out


def test_failing_user_data_reports_the_command_and_status(tmp_path: Path) -> None:
    script = "#!/bin/bash\nset -e\necho step one\ngrep -q nothing-here /etc/hostname\necho never\n"
    with booted(tmp_path, script) as (layout, host):
        out = console(layout)
        assert host["boot"]["state"] == "failed"
        failure = host["boot"]["failures"][0]
        assert failure["status"] == 1
        assert failure["command"] == "grep -q nothing-here /etc/hostname"
        assert "step one" in out and "never" not in out
        assert "Failed running /var/lib/cloud/instance/scripts/part-001 [1]" in out
        error = control.boot_error(host)
        assert error == (
            "user data failed: part-001 exited 1 at `grep -q nothing-here /etc/hostname`"
        )


def test_mime_cloud_config_write_files_packages_runcmd_and_scripts(tmp_path: Path) -> None:
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText

    config = (
        "#cloud-config\n"
        "packages: [jq, aws-nitro-enclaves-cli]\n"
        "write_files:\n"
        "  - path: /etc/app/app.conf\n"
        "    content: aGVsbG8K\n"
        "    encoding: b64\n"
        "    owner: ec2-user:ec2-user\n"
        "    permissions: '0640'\n"
        "runcmd:\n"
        "  - echo RUNCMD $(stat -c '%U %a' /etc/app/app.conf) $(cat /etc/app/app.conf)\n"
        "  - [sh, -c, 'command -v nitro-cli && getent group ne']\n"
        "  - dnf install socat; echo no-y-exit=$?\n"
        "ssh_pwauth: true\n"
    )
    msg = MIMEMultipart()
    msg.attach(MIMEText(config, "cloud-config"))
    msg.attach(
        MIMEText("#!/bin/bash\necho SCRIPT sees $(jq -r .a <<< '{\"a\": 7}')\n", "x-shellscript")
    )
    with booted(tmp_path, msg.as_bytes()) as (layout, host):
        out = console(layout)
        assert control.boot_error(host) is None, out
        assert "RUNCMD ec2-user 640 hello" in out
        assert "/usr/bin/nitro-cli" in out and "ne:x:" in out
        assert "Is this ok [y/N]: Operation aborted." in out and "no-y-exit=1" in out
        assert "SCRIPT sees 7" in out
        # cloud-init's order: the user's script part-001 before runcmd (scripts-user, by name)
        assert out.index("SCRIPT sees") < out.index("RUNCMD")
        assert host["boot"]["notes"] == ["cloud-config key 'ssh_pwauth' is not emulated"]


def test_a_killed_launcher_takes_its_whole_host_along(tmp_path: Path) -> None:
    import signal
    import time

    script = "#!/bin/bash\n" + GUARD + "nohup sleep 600 >/dev/null 2>&1 &\necho started\n"
    with booted(tmp_path, script) as (layout, host):
        init = host["init_pid"]
        os.kill(host["pid"], signal.SIGKILL)  # no clean stop: the endpoint died
        deadline = time.monotonic() + 10
        while Path(f"/proc/{init}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{init}").exists()


def test_the_attestation_keys_are_out_of_the_user_datas_reach(tmp_path: Path) -> None:
    """Root in a host must not sign attestation documents itself (on EC2 the parent's root
    cannot): the local PKI lives only in the enclave driver's private mount."""
    from enclavekit.build import build_enclave
    from local_backend.host.layout import instance_layout

    iid = "i-0123456789abcdef0"
    opt = instance_layout(tmp_path, iid).inside("/opt")
    opt.mkdir(parents=True)
    build_enclave(ROOT / "enclave_app", opt / "app.eif")
    script = (
        "#!/bin/bash\n" + GUARD + "set -e\n"
        "dnf install -y -q aws-nitro-enclaves-cli\n"
        "systemctl start nitro-enclaves-allocator\n"
        "nitro-cli run-enclave --eif-path /opt/app.eif --cpu-count 2 --memory 512 >/dev/null\n"
        "nitro-cli describe-enclaves | grep -q RUNNING && echo ENCLAVE-RUNNING\n"
        "ls -A /run/nitro_enclaves/emulator/pki | wc -l | sed 's/^/PKI-ENTRIES=/'\n"
        "found=0\n"
        "for f in /proc/[0-9]*/root/run/nitro_enclaves/emulator/pki/regional.key; do\n"
        '  cat "$f" >/dev/null 2>&1 && { echo READ $f; found=1; }\n'
        "done\n"
        "[ $found = 0 ] && echo KEYS-UNREACHABLE\n"
    )
    with booted(tmp_path, script, enclave_enabled=True) as (layout, host):
        out = console(layout)
        assert control.boot_error(host) is None, out
        assert "ENCLAVE-RUNNING" in out
        assert "PKI-ENTRIES=0" in out and "KEYS-UNREACHABLE" in out, out


def test_user_data_cannot_choose_pcr3_pcr4_or_exceed_the_instance_type(tmp_path: Path) -> None:
    """PCR3 (the parent's role) and PCR4 (its instance id) come from the instance, as the
    hardware sets them on EC2; the driver bounds enclaves by the instance type even when root
    rewrites what nitro-cli reads."""
    from enclavekit.build import build_enclave
    from local_backend.host.layout import instance_layout

    iid = "i-0123456789abcdef0"
    opt = instance_layout(tmp_path, iid).inside("/opt")
    opt.mkdir(parents=True)
    build_enclave(ROOT / "enclave_app", opt / "app.eif")
    run = "nitro-cli run-enclave --eif-path /opt/app.eif --cpu-count 2 --memory 512"
    script = (
        "#!/bin/bash\n" + GUARD + "dnf install -y -q aws-nitro-enclaves-cli\n"
        f"{run} --parent-role-arn arn:aws:iam::123456789012:role/Other; echo SPOOF-EXIT=$?\n"
        'echo \'{"cpu_count": 64, "memory_mib": 999999}\' > /run/nitro_enclaves/allocation.json\n'
        "nitro-cli run-enclave --eif-path /opt/app.eif --cpu-count 2 --memory 65536 "
        "2>&1; echo BIG-EXIT=$?\n"
    )
    with booted(tmp_path, script, enclave_enabled=True) as (layout, host):
        out = console(layout)
        assert "error: unexpected argument '--parent-role-arn' found" in out
        assert "SPOOF-EXIT=2" in out
        assert (
            "[ E27 ] Insufficient memory available. User provided `memory` is 65536 MB, "
            "which is more than m5.xlarge can give." in out
        )
        assert "BIG-EXIT=2" in out
