"""The host's first-boot disk: what an Amazon Linux 2023 AMI has before its user data runs.

Written once per instance under `<instance>/rootfs/` (the host's persistent directories) and
`rootfs/usr-upper/` (the writable layer over the machine's read-only /usr). The machine's own
files are only read: the dynamic loader's cache and configuration, the CA bundle and the
shadow-utils defaults are *copied* in, so the host can change them without touching the
machine; its `/etc/alternatives` links are bound read-only at boot (`sandbox`).

Stock content: `/etc/os-release` and the system users/groups follow Amazon Linux 2023's
(`amazonlinux:2023` image); `/etc/hosts` maps the region's AWS service names to the host's own
loopback, where the endpoint relay listens, so nothing in the host can reach the real AWS.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from local_backend.host.layout import PERSISTENT_DIRS, HostLayout

# Commands every AL2023 host has before user data (the AMI's), served by `host.tools`.
BASE_COMMANDS = ("dnf", "yum", "systemctl", "journalctl", "sudo", "amazon-linux-extras", "aws")
OS_RELEASE = """NAME="Amazon Linux"
VERSION="2023"
ID="amzn"
ID_LIKE="fedora"
VERSION_ID="2023"
PLATFORM_ID="platform:al2023"
PRETTY_NAME="Amazon Linux 2023.6.20241212"
ANSI_COLOR="0;33"
CPE_NAME="cpe:2.3:o:amazon:amazon_linux:2023"
HOME_URL="https://aws.amazon.com/linux/amazon-linux-2023/"
DOCUMENTATION_URL="https://docs.aws.amazon.com/linux/"
SUPPORT_URL="https://aws.amazon.com/premiumsupport/"
BUG_REPORT_URL="https://github.com/amazonlinux/amazon-linux-2023"
VENDOR_NAME="AWS"
VENDOR_URL="https://aws.amazon.com/"
SUPPORT_END="2029-06-30"
"""
PASSWD = """root:x:0:0:root:/root:/bin/bash
bin:x:1:1:bin:/bin:/sbin/nologin
daemon:x:2:2:daemon:/sbin:/sbin/nologin
adm:x:3:4:adm:/var/adm:/sbin/nologin
lp:x:4:7:lp:/var/spool/lpd:/sbin/nologin
sync:x:5:0:sync:/sbin:/bin/sync
shutdown:x:6:0:shutdown:/sbin:/sbin/shutdown
halt:x:7:0:halt:/sbin:/sbin/halt
mail:x:8:12:mail:/var/spool/mail:/sbin/nologin
operator:x:11:0:operator:/root:/sbin/nologin
games:x:12:100:games:/usr/games:/sbin/nologin
ftp:x:14:50:FTP User:/var/ftp:/sbin/nologin
nobody:x:65534:65534:Kernel Overflow User:/:/sbin/nologin
ec2-user:x:1000:1000:EC2 Default User:/home/ec2-user:/bin/bash
"""
GROUP = """root:x:0:
bin:x:1:
daemon:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mem:x:8:
kmem:x:9:
wheel:x:10:ec2-user
mail:x:12:
man:x:15:
games:x:20:
ftp:x:50:
users:x:100:
nobody:x:65534:
ec2-user:x:1000:
"""


def _shadow(passwd: str) -> str:
    return "".join(f"{line.split(':')[0]}:!!:19700::::::\n" for line in passwd.splitlines())


def _gshadow(group: str) -> str:
    return "".join(f"{line.split(':')[0]}:!::\n" for line in group.splitlines())


def aws_hostnames(region: str) -> list[str]:
    """The service names user data and SDKs reach; the host resolves them to itself."""
    services = ("kms", "kms-fips", "s3", "sts", "ec2", "ssm", "secretsmanager", "acm", "logs")
    names = [f"{s}.{region}.amazonaws.com" for s in services]
    return [*names, "s3.amazonaws.com", "sts.amazonaws.com", "iam.amazonaws.com"]


def project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def wheelhouse() -> Path:
    """The local package index of pinned wheels `make setup` fetches from PyPI (the parent
    agent's boto3 tree): what `pip install` inside a host resolves from, read-only."""
    return project_root() / ".wheelhouse"


def tool_mounts() -> list[str]:
    """Machine paths bound read-only into every host at the same path: the project and the
    interpreter its tools run on (so `nitro-cli`, `dnf`, `systemctl` are this code)."""
    wanted = sorted(
        {str(project_root()), sys.prefix, sys.base_prefix, os.path.dirname(sys.executable)}
    )
    out: list[str] = []
    for p in wanted:
        if not any(p == q or p.startswith(q + "/") for q in out):
            out.append(p)
    return out


# Tools that need only the standard library start without site-packages (-S): each user data
# runs dozens of them, and the interpreter's site start-up is most of their cost.
STDLIB_TOOLS = frozenset({"dnf", "yum", "amazon-linux-extras", "systemctl", "journalctl", "sudo"})


def shim(name: str) -> str:
    """The script a host command is: this project's tool of that name."""
    if name == "aws":  # the project's AWS CLI itself, without a Python in front of it
        aws = Path(sys.executable).parent / "aws"
        return f'#!/bin/sh\nunset PYTHONPATH\nexec {aws} "$@"\n'
    flags = " -S" if name in STDLIB_TOOLS else ""
    return (
        "#!/bin/sh\n"
        f"PYTHONPATH={project_root()} exec {sys.executable}{flags} -m local_backend.host.tools "
        f'{name} "$@"\n'
    )


def _copy(src: str, dst: Path) -> None:
    if os.path.islink(src):
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(os.readlink(src))
    elif os.path.isdir(src):
        shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
    elif os.path.isfile(src):
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def prepare(layout: HostLayout, *, hostname: str, region: str) -> bool:
    """Write the first-boot disk if absent; returns True on first boot."""
    marker = layout.rootfs / "var" / "lib" / "enclavekit-host" / "ami"
    if marker.exists():
        return False
    # The AMI's modes (/etc 0755, ...), whatever the launcher's umask (the endpoint's is 077;
    # the instance directory around the disk stays owner-only on the machine).
    old = os.umask(0o022)
    try:
        return _prepare(layout, hostname=hostname, region=region, marker=marker)
    finally:
        os.umask(old)


def _prepare(layout: HostLayout, *, hostname: str, region: str, marker: Path) -> bool:
    root = layout.rootfs
    for d in (*PERSISTENT_DIRS, "usr-upper", "usr-work"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "root").chmod(0o550)
    etc = root / "etc"
    (etc / "alternatives").mkdir(exist_ok=True)  # the machine's, bound read-only at boot
    for src in (
        "/etc/ld.so.cache",
        "/etc/ld.so.conf",
        "/etc/ld.so.conf.d",
        "/etc/login.defs",
        "/etc/default/useradd",
        "/etc/skel",
        "/etc/mime.types",
    ):
        _copy(src, etc / src[len("/etc/") :])
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    if os.path.isfile(bundle):
        for dst in ("ssl/certs/ca-certificates.crt", "pki/tls/certs/ca-bundle.crt"):
            _copy(bundle, etc / dst)
        (etc / "ssl" / "cert.pem").symlink_to("certs/ca-certificates.crt")
    (etc / "os-release").write_text(OS_RELEASE)
    (etc / "system-release").write_text("Amazon Linux release 2023.6.20241212 (Amazon Linux)\n")
    (etc / "passwd").write_text(PASSWD)
    (etc / "group").write_text(GROUP)
    (etc / "shadow").write_text(_shadow(PASSWD))
    (etc / "gshadow").write_text(_gshadow(GROUP))
    (etc / "shadow").chmod(0o000)
    (etc / "gshadow").chmod(0o000)
    (etc / "hostname").write_text(hostname + "\n")
    from local_backend.host.services_net import SERVICES_ADDRESS  # (ctypes: not for every tool)

    (etc / "hosts").write_text(
        "127.0.0.1   localhost localhost.localdomain localhost4 localhost4.localdomain4\n"
        "::1         localhost6 localhost6.localdomain6\n"
        "# enclavekit: AWS service names reach the local endpoint, one hop off this host\n"
        + "".join(f"{SERVICES_ADDRESS}   {n}\n" for n in aws_hostnames(region))
    )
    (etc / "resolv.conf").write_text("# no resolver: the host has no route out\n")
    (etc / "nsswitch.conf").write_text("passwd: files\nshadow: files\ngroup: files\nhosts: files\n")
    (etc / "machine-id").write_text(os.urandom(16).hex() + "\n")
    for d in ("systemd/system", "sysconfig", "profile.d", "cloud", "yum.repos.d", "sudoers.d"):
        (etc / d).mkdir(parents=True, exist_ok=True)
    (etc / "cloud" / "cloud.cfg").write_text(
        "# enclavekit: cloud-init as on Amazon Linux 2023 (user data runs once, as root)\n"
        "default_user:\n  name: ec2-user\n"
    )
    for d in ("log", "lib/cloud", "lib/enclavekit-host", "cache", "spool", "tmp", "log/journal"):
        (root / "var" / d).mkdir(parents=True, exist_ok=True)
    (root / "var" / "tmp").chmod(0o1777)
    (root / "home" / "ec2-user").mkdir(exist_ok=True)
    os.chown(root / "home" / "ec2-user", 1000, 1000)
    usr = root / "usr-upper"
    for d in ("bin", "sbin", "lib/systemd/system", "share/nitro_enclaves", "local/bin"):
        (usr / d).mkdir(parents=True, exist_ok=True)
    for name in BASE_COMMANDS:
        path = usr / "bin" / name
        path.write_text(shim(name))
        path.chmod(0o755)
    # Amazon Linux's /bin/sh is bash (scripts written for it use bash features under sh).
    (usr / "bin" / "sh").symlink_to("bash")
    marker.write_text("al2023\n")
    return True
