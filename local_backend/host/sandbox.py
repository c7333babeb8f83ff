"""The namespaces and the root filesystem of an instance host.

Reuses the enclave emulator's primitives (`emulator.isolation`: unshare, mount, pivot_root,
lo up). The host gets, in this order:

- its own mount namespace and a root built on a tmpfs: `/usr` = the machine's /usr read-only
  with the instance's writable layer over it (overlayfs; without overlayfs, /usr read-only and
  a warning), `/etc /opt /var /home /root /srv /mnt /media` = the instance's persistent
  directories, fresh `/tmp` and `/run` tmpfs, a minimal `/dev`, `/sys` read-only, `/proc` of
  its PID namespace, `/bin /sbin /lib /lib64` links into /usr as on AL2023; the project and its
  interpreter read-only at their machine paths (the host's commands are this code);
- its own network namespace: `lo` up, 169.254.169.254 on it (IMDS), nothing else, no route out;
- its own UTS (hostname), IPC and PID namespaces;
- a reduced capability bounding set (no module loading, raw I/O, mknod, open_by_handle_at,
  clock or reboot), so root in the host cannot reach the machine's devices or files. It keeps
  CAP_SYS_ADMIN: nitro-cli's emulated enclaves build their own namespaces inside the host.

Without a mount namespace the host cannot be isolated, so the boot fails (user data would change
the machine); a refused network/PID/UTS namespace is a one-line warning and the rest applies.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from local_backend.emulator import isolation as iso
from local_backend.host.layout import HOST_MACHINE_STAGE, PERSISTENT_DIRS, confined

IMDS_ADDRESS = "169.254.169.254"
_SIOCSIFADDR = 0x8916
_SIOCSIFNETMASK = 0x891C
# Capabilities the host's root gives up (numbers from linux/capability.h).
DROPPED_CAPABILITIES = {
    "CAP_DAC_READ_SEARCH": 2,  # open_by_handle_at: reach machine files by handle
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_TIME": 25,
    "CAP_MKNOD": 27,  # no device nodes: the machine's disks stay out of reach
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
}
# What PID 1 drops for everything it runs (user data, services) after forking the driver,
# which alone keeps them: mounts, remounts of the read-only binds, namespaces (CAP_SYS_ADMIN),
# and ptrace/BPF/perf, which would reach into the driver's memory and take its capability.
USER_DROPPED_CAPABILITIES = {
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_ADMIN": 21,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
}
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")

Warn = Callable[[str], None]


@dataclass(frozen=True)
class SandboxPlan:
    """What the host's root is made of (machine paths)."""

    rootfs: str  # the instance's persistent directories + usr-upper/usr-work
    mount_point: str  # an empty directory the root is built on
    hostname: str
    tool_mounts: list[str] = field(default_factory=list)  # bound read-only at the same path
    extra_ro: dict[str, str] = field(default_factory=dict)  # inside path -> machine path


@dataclass
class Namespaces:
    """Which namespaces the kernel granted."""

    mount: bool = False
    net: bool = False
    pid: bool = False
    uts: bool = False


def _add_address(ifname: str, address: str) -> None:
    """`ip addr add ADDRESS/32 dev lo` (as the alias `lo:N`) with the legacy ioctls."""
    sin = struct.pack("HH4s8x", socket.AF_INET, 0, socket.inet_aton(address))
    mask = struct.pack("HH4s8x", socket.AF_INET, 0, socket.inet_aton("255.255.255.255"))
    name = ifname.encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), _SIOCSIFADDR, struct.pack("16s16s", name, sin))
        fcntl.ioctl(s.fileno(), _SIOCSIFNETMASK, struct.pack("16s16s", name, mask))


def enter_namespaces(warn: Warn, in_net: Callable[[], None] | None = None) -> Namespaces:
    """unshare() what the kernel grants; the next fork is PID 1 of the host. `in_net` runs in
    the host's new network before the PID namespace exists (it may run programs)."""
    ns = Namespaces()
    try:
        iso.unshare(iso.CLONE_NEWNS)
        iso.mount(None, "/", None, iso.MS_REC | iso.MS_PRIVATE)
        ns.mount = True
    except OSError as exc:
        warn(f"mount namespace not permitted ({exc.strerror})")
        return ns
    try:
        iso.unshare(iso.CLONE_NEWNET)
        ns.net = True
        iso.loopback_up()
        _add_address("lo:1", IMDS_ADDRESS)
    except OSError as exc:
        if ns.net:
            warn(f"setting up lo/{IMDS_ADDRESS} in the host's network failed ({exc.strerror})")
        else:
            warn(
                f"network namespace not permitted ({exc.strerror}): the host shares the "
                "machine's network and has no IMDS address"
            )
    if ns.net and in_net is not None:
        in_net()
    try:
        iso.unshare(iso.CLONE_NEWUTS | iso.CLONE_NEWIPC)
        ns.uts = True
    except OSError as exc:
        warn(f"UTS/IPC namespaces not permitted ({exc.strerror}): hostname not set")
    try:
        iso.unshare(iso.CLONE_NEWPID)
        ns.pid = True
    except OSError as exc:
        warn(f"PID namespace not permitted ({exc.strerror}): the host sees machine processes")
    return ns


def _bind(source: str, target: Path, *, ro: bool) -> None:
    iso._mountpoint_for(source, target)
    if ro:
        iso.bind_ro(source, str(target))
    else:
        iso.mount(source, str(target), None, iso.MS_BIND | iso.MS_REC)


def build_root(plan: SandboxPlan, warn: Warn) -> None:
    """Lay out the host's root at `plan.mount_point` (in the host's mount namespace)."""
    root = Path(plan.mount_point)
    rootfs = Path(plan.rootfs)
    iso.mount("host-root", str(root), "tmpfs", iso.MS_NOSUID | iso.MS_NODEV, "mode=0755,size=8m")
    usr = root / "usr"
    usr.mkdir()
    try:
        iso.mount(
            "host-usr",
            str(usr),
            "overlay",
            0,
            f"lowerdir=/usr,upperdir={rootfs / 'usr-upper'},workdir={rootfs / 'usr-work'}",
        )
    except OSError as exc:
        warn(
            f"overlayfs not permitted ({exc.strerror}): /usr is read-only, packages cannot "
            "install commands"
        )
        iso.bind_ro("/usr", str(usr))
    for d in PERSISTENT_DIRS:
        _bind(str(rootfs / d), root / d, ro=False)
    # The machine's tools resolve through its alternatives links (absolute /usr paths, the
    # host's own /usr inside): bound read-only rather than copied, so the instance's disk
    # holds no links to machine files.
    # Targets on the host's disk are resolved there (`confined`): a link its root left must
    # not make the machine create or cover a path of its own.
    if os.path.isdir("/etc/alternatives"):
        _bind("/etc/alternatives", confined(root, "/etc/alternatives"), ro=True)
    for link in ("bin", "sbin", "lib", "lib64"):
        if os.path.exists(f"/usr/{link}"):
            (root / link).symlink_to(f"usr/{link}")
    for name, mode in (("tmp", "1777"), ("run", "0755")):
        (root / name).mkdir()
        iso.mount(
            f"host-{name}",
            str(root / name),
            "tmpfs",
            iso.MS_NOSUID | iso.MS_NODEV,
            f"mode={mode},size=256m",
        )
    for d in ("lock", "user", "systemd", "enclavekit-host"):
        (root / "run" / d).mkdir()
    if not (root / "var" / "run").is_symlink() and not (root / "var" / "run").exists():
        (root / "var" / "run").symlink_to("../run")
    dev = root / "dev"
    dev.mkdir()
    iso.mount("host-dev", str(dev), "tmpfs", iso.MS_NOSUID | iso.MS_NOEXEC, "mode=0755,size=64k")
    for name in DEV_NODES:
        if os.path.exists(f"/dev/{name}"):
            (dev / name).touch()
            iso.mount(f"/dev/{name}", str(dev / name), None, iso.MS_BIND)
    (dev / "fd").symlink_to("/proc/self/fd")
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        (dev / name).symlink_to(f"/proc/self/fd/{i}")
    (dev / "shm").mkdir()
    iso.mount("host-shm", str(dev / "shm"), "tmpfs", iso.MS_NOSUID | iso.MS_NODEV, "mode=1777")
    (root / "proc").mkdir()
    (root / "sys").mkdir()
    with contextlib.suppress(OSError):
        iso.bind_ro("/sys", str(root / "sys"))
    for path in plan.tool_mounts:
        _bind(path, confined(root, path), ro=True)
    for inside, source in sorted(plan.extra_ro.items()):
        _bind(source, confined(root, inside), ro=True)
    # The enclave driver runs this code, and starts monitors and enclaves from these paths and
    # from /usr: root in the host must not swap them. Their ancestors on its disk are bound
    # onto themselves read-only (renaming one away would leave its own files at the path),
    # and the machine's /usr and loader cache wait here for the driver's namespace.
    for ancestor in _ancestors([*plan.tool_mounts, *plan.extra_ro]):
        target = str(confined(root, ancestor))
        iso.bind_ro(target, target)
    _bind("/usr", root / HOST_MACHINE_STAGE.lstrip("/") / "usr", ro=True)
    # The dynamic loader's files are the machine's (the cache matches the machine's /usr below
    # the overlay), read-only mount points root in the host can neither rewrite nor remove:
    # every program the driver starts reads them.
    for name, source in (("ld.so.cache", "/etc/ld.so.cache"), ("ld.so.preload", "/dev/null")):
        if not os.path.exists(source):
            continue
        target = root / "etc" / name  # /etc is a real directory: the host's persistent one
        if target.is_symlink() or target.is_dir():  # root's link or directory, set aside
            target.rename(target.with_name(f"{name}.replaced-{time.time_ns()}"))
        target.touch(exist_ok=True)
        iso.bind_ro(source, str(target))


def _ancestors(paths: list[str]) -> list[str]:
    """The directories between a persistent directory of the host's disk and each of `paths`
    (the root's own tmpfs is read-only as a whole: `become_root`), shallowest first."""
    out: set[str] = set()
    for path in paths:
        parts = [p for p in path.split("/") if p]
        if len(parts) < 3 or parts[0] not in PERSISTENT_DIRS:
            continue
        out.update("/" + "/".join(parts[:i]) for i in range(2, len(parts)))
    return sorted(out, key=lambda a: (a.count("/"), a))


def drop_capabilities(warn: Warn, caps: dict[str, int] | None = None) -> None:
    """Drop `caps` (default DROPPED_CAPABILITIES) from the bounding set (lost at the next
    exec: root's permitted set after an exec is its bounding set)."""
    last = 40
    with contextlib.suppress(OSError, ValueError):
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for name, cap in (DROPPED_CAPABILITIES if caps is None else caps).items():
        if cap > last:
            continue
        zero = ctypes.c_ulong(0)
        if (
            iso._libc.prctl(
                ctypes.c_int(iso.PR_CAPBSET_DROP), ctypes.c_ulong(cap), zero, zero, zero
            )
            != 0
        ):
            warn(f"dropping {name} not permitted: the host keeps it")


def seal_submounts(top: str, warn: Warn) -> None:
    """Remount every mount below `top` read-only, in this mount namespace. A recursive bind
    keeps its submounts' own flags: under the read-only /sys, the machine's cgroup hierarchies
    stayed writable, and uid 0 needs no capability to create groups there, change another
    group's limits (an enclave's, another instance's) or freeze it. PID 1 calls this once the
    enclave driver has its own mount namespace, where its monitors still create cgroups."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError as exc:
        warn(f"cannot read the mount table ({exc.strerror}): {top}'s submounts stay writable")
        return
    for line in lines:
        fields = line.split()
        point = fields[4].replace("\\040", " ")
        if not point.startswith(top.rstrip("/") + "/") or "ro" in fields[5].split(","):
            continue
        flags = iso.MS_REMOUNT | iso.MS_BIND | iso.MS_RDONLY | iso.MS_NOSUID | iso.MS_NODEV
        try:
            iso.mount(None, point, None, flags | iso.MS_NOEXEC)
        except OSError as exc:
            warn(f"making {point} read-only failed ({exc.strerror})")


def become_root(plan: SandboxPlan, ns: Namespaces, warn: Warn) -> None:
    """In PID 1 of the host: /proc, pivot_root into the built root, hostname, capabilities."""
    root = plan.mount_point
    if ns.pid:
        iso.mount(
            "proc", os.path.join(root, "proc"), "proc", iso.MS_NOSUID | iso.MS_NODEV | iso.MS_NOEXEC
        )
    else:
        iso.mount("/proc", os.path.join(root, "proc"), None, iso.MS_BIND | iso.MS_REC)
    # root needs no capability to write a machine-wide sysctl (kernel.core_pattern would run a
    # host file as the machine's root): /proc/sys read-only, but for the host's own network's
    # settings (per network namespace, as EC2 user data may set them).
    iso.protect_proc(os.path.join(root, "proc"))
    net = os.path.join(root, "proc", "sys", "net")
    if ns.net and os.path.isdir(net):
        iso.mount(net, net, None, iso.MS_BIND)
        iso.mount(None, net, None, iso.MS_REMOUNT | iso.MS_BIND | iso.MS_NOSUID | iso.MS_NODEV)
    os.chdir(root)
    try:
        iso.pivot_root(".", ".")
        iso.umount2(".", iso.MNT_DETACH)
    except OSError as exc:
        warn(f"pivot_root not permitted ({exc.strerror}); using chroot instead")
        os.chroot(".")
    os.chdir("/")
    # The root's own tmpfs (its top-level links and the directories leading to the tool
    # mounts) is read-only: `/lib64 -> elsewhere` would give the driver's next program a
    # loader of root's choosing. Top-level directories of the host's own are refused (EROFS).
    iso.mount(None, "/", None, iso.MS_REMOUNT | iso.MS_BIND | iso.MS_RDONLY | iso.MS_NOSUID)
    if ns.uts:
        name = plan.hostname.encode()
        with contextlib.suppress(OSError):
            iso._libc.sethostname(name, len(name))
    drop_capabilities(warn)
