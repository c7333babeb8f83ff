"""Root in an instance host (its user data) attacks the machine that runs the host.

On EC2 the instance's root owns the instance and nothing else. Locally the host is a set of
namespaces on the machine's kernel, and the endpoint (root on the machine) reads and writes the
host's disk from outside at each boot: both are ways out that these tests close. Every script
first proves it runs inside a host (GUARD), so a broken sandbox fails without harming the
machine; the kernel settings are written with their own value.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from host_support import booted, console, instance_info

from local_backend.host import control
from local_backend.host.layout import HostLayout

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
