"""Start an emulated enclave as an isolated process tree: namespaces, a constructed root, limits.

Run by the per-enclave monitor as `python -m local_backend.emulator.isolation SPEC.json`.
A separate single-threaded helper (not the monitor itself) because it forks and then runs
Python between fork and exec, which is only safe without other threads.

What the enclave gets, each mechanism tried in turn; one that the kernel refuses is reported
as a one-line warning naming it, and the rest still applies:
- own mount namespace and a root constructed on a tmpfs, entered with pivot_root (chroot if
  pivot_root is refused): the image's /rootfs read-only, the read-only Python runtime layer
  (interpreter prefix with only the declared third-party packages in its site-packages, and the
  shared libraries it links), a tmpfs /tmp, a minimal /dev whose `nsm` is the emulated NSM
  socket, /proc of its own PID namespace, and /run/enclavekit/vsock with only its own CID
  directory and the parent's (read-only: it may connect there, never listen);
- own network namespace with only `lo` up (no route anywhere else), own UTS/IPC/PID namespaces;
- memory / CPU / pids limits from cgroups (set up by the monitor; see `cgroups.py`) or, when no
  cgroup is usable, rlimits; CPU affinity to the allocated CPUs; a clean environment;
- no capabilities: the bounding, ambient, inheritable, permitted and effective sets emptied,
  securebits NOROOT locked and no_new_privs set before the exec, so uid 0 inside the enclave
  cannot mount, mknod, setns, open_by_handle_at or ptrace its way out of the layout above (to
  another enclave's vsock directory or NSM socket, or to the host's files).

Status goes to stdout, one line each: `WARN <text>`, `RUNNING <pid>`, `FAILED <text>`,
`EXIT <code>|SIGNAL <n>`.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import platform
import resource
import signal
import socket
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# SECBIT_NOROOT | _LOCKED | SECBIT_NO_SETUID_FIXUP | _LOCKED | SECBIT_KEEP_CAPS_LOCKED
LOCKED_SECUREBITS = 0x01 | 0x02 | 0x04 | 0x08 | 0x20
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
PROVIDED_DIRS = frozenset({"dev", "proc", "sys", "tmp", "run"})
DEV_NODES = ("null", "zero", "full", "random", "urandom")

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class LaunchSpec:
    """Everything the helper needs; written by the monitor as JSON."""

    image_root: str  # the extracted customer ramdisk's rootfs on the host
    cmd: list[str]
    env: dict[str, str]
    new_root: str  # an empty host directory used as the mount point of the new root
    nsm_socket: str  # host path of the emulated NSM socket, mounted at /dev/nsm
    vsock_root: str  # host <state>/vsock
    cid: int
    parent_cid: int
    cpu_ids: list[int]
    memory_mib: int
    runtime_prefix: str  # interpreter prefix (sys.base_prefix)
    interpreter: str  # real interpreter binary inside the prefix
    site_packages: str  # the prefix's site-packages path (replaced by the declared packages)
    packages: list[str] = field(default_factory=list)  # host paths of declared package entries
    system_libs: list[str] = field(default_factory=list)  # e.g. /usr/lib, /usr/lib64
    cgroup_procs: list[str] = field(default_factory=list)  # cgroup.procs files to join
    console_fd: int = -1  # inherited fd for the enclave's stdout/stderr (-1: /dev/null)
    # The platform's CA for AWS endpoints (PEM), written read-only at /run/enclavekit/kms-ca.pem:
    # the emulator's stand-in for the public CAs an image trusts on AWS (enclave_app/trust.py).
    platform_ca_pem: str = ""

    @classmethod
    def load(cls, path: str | Path) -> LaunchSpec:
        return cls(**json.loads(Path(path).read_text()))


class _Refused(OSError):
    """A syscall the kernel refused (an OSError on purpose: it carries the kernel's errno)."""


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise _Refused(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    def enc(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None

    _check(
        _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
        f"mount {target}",
    )


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(target.encode(), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    number = _SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise _Refused(38, f"pivot_root: unknown syscall number on {platform.machine()}")
    _check(_libc.syscall(ctypes.c_long(number), new_root.encode(), put_old.encode()), "pivot_root")


def bind_ro(source: str, target: str) -> None:
    """Bind `source` at `target` and make that mount read-only, nosuid, nodev."""
    mount(source, target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


# /proc entries that act on the machine's kernel whatever namespace reads them, and need only
# uid 0 (no capability) to write: a sysctl such as `kernel.core_pattern` (`|/proc/%P/root/x`
# runs a file of the crashing process as the machine's root) and SysRq. Read-only, as
# container runtimes make them.
PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs")


def protect_proc(proc: str) -> None:
    """Make the machine-wide entries of the procfs mounted at `proc` read-only."""
    for name in PROC_READ_ONLY:
        path = os.path.join(proc, name)
        if os.path.exists(path):
            bind_ro(path, path)


def _mountpoint_for(source: str, target: Path) -> None:
    if os.path.isdir(source):
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch(exist_ok=True)


def drop_capabilities() -> list[str]:
    """Leave this process (and what it execs) with no capability at all; returns what failed."""
    failed = []

    def prctl(what: str, option: int, arg: int) -> None:
        zero = ctypes.c_ulong(0)
        if _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), zero, zero, zero) != 0:
            failed.append(f"{what} ({os.strerror(ctypes.get_errno())})")

    prctl("securebits NOROOT", PR_SET_SECUREBITS, LOCKED_SECUREBITS)
    try:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        last = 40
    before = len(failed)
    for cap in range(last + 1):
        prctl(f"dropping capability {cap} from the bounding set", PR_CAPBSET_DROP, cap)
        if len(failed) > before:
            break
    prctl("clearing ambient capabilities", PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = struct.pack("Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    data = bytes(24)  # two {effective, permitted, inheritable} u32 triples, all zero
    if _libc.capset(header, data) != 0:
        failed.append(f"capset to nothing ({os.strerror(ctypes.get_errno())})")
    prctl("no_new_privs", PR_SET_NO_NEW_PRIVS, 1)
    return failed


def loopback_up() -> None:
    """`ip link set lo up` with the SIOCSIFFLAGS ioctl (no iproute2 needed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = bytearray(struct.pack("16sH14x", b"lo", 0))
        fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, ifreq)
        flags = struct.unpack_from("H", ifreq, 16)[0] | _IFF_UP
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags))


def build_root(spec: LaunchSpec) -> None:
    """Lay out the enclave's root on a fresh tmpfs at `spec.new_root` (in our mount namespace)."""
    root = Path(spec.new_root)
    mount("enclave-root", str(root), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=4m")
    # The image: every top-level entry of its rootfs, read-only (the emulator provides the
    # kernel-made directories itself, as the real init does).
    for entry in sorted(os.listdir(spec.image_root)):
        src = os.path.join(spec.image_root, entry)
        if entry in PROVIDED_DIRS:
            (root / entry).mkdir(exist_ok=True)
            continue
        _mountpoint_for(src, root / entry)
        bind_ro(src, str(root / entry))
    # The runtime layer: interpreter prefix, with only the declared packages in site-packages.
    prefix = root / spec.runtime_prefix.lstrip("/")
    prefix.mkdir(parents=True, exist_ok=True)
    bind_ro(spec.runtime_prefix, str(prefix))
    site = root / spec.site_packages.lstrip("/")
    if site.is_dir():
        mount("runtime-site", str(site), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
        for src in spec.packages:
            target = site / os.path.basename(src)
            _mountpoint_for(src, target)
        mount(None, str(site), None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        for src in spec.packages:
            bind_ro(src, str(site / os.path.basename(src)))
    for lib in spec.system_libs:
        _mountpoint_for(lib, root / lib.lstrip("/"))
        bind_ro(lib, str(root / lib.lstrip("/")))
    for link in ("lib", "lib64", "bin"):
        real = os.path.realpath("/" + link)
        if real != "/" + link and not (root / link).exists():
            (root / link).symlink_to(real.lstrip("/"))
    for bindir in ("usr/bin", "usr/local/bin"):
        (root / bindir).mkdir(parents=True, exist_ok=True)
        for name in ("python3", "python", f"python{sys.version_info[0]}.{sys.version_info[1]}"):
            if not (root / bindir / name).exists():
                (root / bindir / name).symlink_to(spec.interpreter)
    # /etc: just enough for name resolution of localhost and a root user.
    etc = root / "etc"
    if not etc.exists():
        etc.mkdir()
        (etc / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")
        (etc / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
        (etc / "group").write_text("root:x:0:\n")
        (etc / "hostname").write_text("enclave\n")
    # /dev: the usual character devices and the emulated NSM socket as /dev/nsm.
    dev = root / "dev"
    dev.mkdir(exist_ok=True)
    mount("enclave-dev", str(dev), "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")
    for name in DEV_NODES:
        (dev / name).touch()
        mount(f"/dev/{name}", str(dev / name), None, MS_BIND)
    (dev / "nsm").touch()
    mount(spec.nsm_socket, str(dev / "nsm"), None, MS_BIND)
    (dev / "fd").symlink_to("/proc/self/fd")
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        (dev / name).symlink_to(f"/proc/self/fd/{i}")
    (dev / "shm").mkdir()
    mount(None, str(dev), None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC)
    # /tmp: a tmpfs bounded by the enclave's memory (its pages are charged to its cgroup).
    (root / "tmp").mkdir(exist_ok=True)
    mount(
        "enclave-tmp",
        str(root / "tmp"),
        "tmpfs",
        MS_NOSUID | MS_NODEV,
        f"mode=1777,size={spec.memory_mib}m",
    )
    # /run/enclavekit/vsock: own CID (read-write) and the parent's (read-only), nothing else.
    vs = root / "run" / "enclavekit" / "vsock"
    vs.mkdir(parents=True)
    mount("enclave-vsock", str(vs), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=64k")
    own, parent = vs / str(spec.cid), vs / str(spec.parent_cid)
    own.mkdir()
    parent.mkdir()
    (vs / "self").write_text(f"{spec.cid}\n")
    if spec.platform_ca_pem:
        # on the root tmpfs, which becomes read-only before the enclave runs
        (root / "run" / "enclavekit" / "kms-ca.pem").write_text(spec.platform_ca_pem)
    mount(None, str(vs), None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount(os.path.join(spec.vsock_root, str(spec.cid)), str(own), None, MS_BIND)
    bind_ro(os.path.join(spec.vsock_root, str(spec.parent_cid)), str(parent))
    (root / "proc").mkdir(exist_ok=True)


def _child(spec: LaunchSpec, go_r: int, err_w: int, have_pidns: bool, have_root: bool) -> None:
    """Runs in the forked child (PID 1 of the new PID namespace): enter the root, exec."""

    def report(kind: str, text: str) -> None:
        os.write(err_w, f"{kind}:{text}\n".encode())

    try:
        verdict = os.read(go_r, 1)
        os.close(go_r)
        if verdict == b"R":  # no cgroup usable: rlimits as a last resort
            limit = spec.memory_mib * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            resource.setrlimit(resource.RLIMIT_NPROC, (1024, 1024))
        try:
            os.sched_setaffinity(0, spec.cpu_ids)
        except OSError as exc:
            report("W", f"CPU affinity to {spec.cpu_ids} not permitted ({exc.strerror})")
        if have_root:
            root = spec.new_root
            if have_pidns:
                mount("proc", os.path.join(root, "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
                protect_proc(os.path.join(root, "proc"))
            mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
            os.chdir(root)
            try:
                pivot_root(".", ".")
                umount2(".", MNT_DETACH)
            except OSError as exc:
                report("W", f"pivot_root not permitted ({exc.strerror}); using chroot instead")
                os.chroot(".")
            os.chdir("/")
        with contextlib.suppress(OSError):
            _libc.sethostname(b"enclave", 7)
        for what in drop_capabilities():
            report("W", f"{what} not permitted: the enclave keeps some privileges")
        env = dict(spec.env)
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        out = spec.console_fd if spec.console_fd >= 0 else null
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.execvpe(spec.cmd[0], spec.cmd, env)
    except BaseException as exc:  # noqa: BLE001 - everything must reach the parent, then _exit
        with contextlib.suppress(OSError):
            report("E", f"{type(exc).__name__}: {exc}".replace("\n", " "))
    finally:
        os._exit(127)


def launch(spec: LaunchSpec, out=sys.stdout) -> int:
    """Isolate, fork the enclave, report its state on `out`, wait for it and report the exit."""

    def say(line: str) -> None:
        out.write(line.replace("\n", " ") + "\n")
        out.flush()

    def warn(text: str) -> None:
        say(f"WARN {text}")

    child: list[int] = []

    def stop(_signum: int, _frame: object) -> None:
        for pid in child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not child:
            os._exit(1)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)  # the monitor died: stop the enclave
    have_ns = True
    granted: set[int] = set()
    try:
        unshare(CLONE_NEWNS)
        mount(None, "/", None, MS_REC | MS_PRIVATE)
    except OSError as exc:
        have_ns = False
        warn(f"mount namespace not permitted ({exc.strerror}): the enclave sees the host files")
    for flag, name, lost in (
        (CLONE_NEWNET, "network namespace", "the enclave shares the host network"),
        (CLONE_NEWPID, "PID namespace", "the enclave sees host processes"),
        (CLONE_NEWUTS | CLONE_NEWIPC, "UTS/IPC namespaces", "the enclave shares host IPC"),
    ):
        try:
            unshare(flag)
        except OSError as exc:
            warn(f"{name} not permitted ({exc.strerror}): {lost}")
            continue
        granted.add(flag)
        if flag == CLONE_NEWNET:
            try:
                loopback_up()
            except OSError as exc:
                warn(f"bringing up lo in the enclave's network namespace failed ({exc.strerror})")
    have_pidns = CLONE_NEWPID in granted
    have_root = have_ns
    if have_ns:
        try:
            build_root(spec)
        except OSError as exc:
            say(f"FAILED constructing the enclave root failed: {exc}")
            return 1
    go_r, go_w = os.pipe()
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        os.close(go_w)
        os.close(err_r)
        _child(spec, go_r, err_w, have_pidns, have_root)
    child.append(pid)
    os.close(go_r)
    os.close(err_w)
    joined = True
    for procs in spec.cgroup_procs:
        try:
            Path(procs).write_text(f"{pid}\n")
        except OSError as exc:
            joined = False
            warn(f"joining cgroup {procs} failed ({exc.strerror})")
    if not spec.cgroup_procs or not joined:
        warn(f"no usable cgroup: memory limited by RLIMIT_AS={spec.memory_mib} MiB instead")
    os.write(go_w, b"C" if spec.cgroup_procs and joined else b"R")
    os.close(go_w)
    failure = None
    with os.fdopen(err_r, "rb") as status:
        for raw in status:
            kind, _, text = raw.decode(errors="replace").rstrip("\n").partition(":")
            if kind == "W":
                warn(text)
            else:
                failure = text
    if failure is not None:
        os.waitpid(pid, 0)
        say(f"FAILED starting {spec.cmd!r} in the enclave failed: {failure}")
        return 1
    say(f"RUNNING {pid}")
    _, status_code = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status_code):
        say(f"EXIT SIGNAL {os.WTERMSIG(status_code)}")
    else:
        say(f"EXIT {os.WEXITSTATUS(status_code)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m local_backend.emulator.isolation SPEC.json", file=sys.stderr)
        return 2
    return launch(LaunchSpec.load(args[0]))


if __name__ == "__main__":
    sys.exit(main())
