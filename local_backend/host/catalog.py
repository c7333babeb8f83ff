"""`dnf` / `yum` / `amazon-linux-extras` over the package catalog of the host.

Each package provides what its Amazon Linux RPM provides, as far as enclave stacks use it: its
commands in /usr/bin (this project's tools, or the machine's own binary where the machine has
the real program: jq, git, curl...), its stock configuration files with their stock content
(marked %config(noreplace): an edited file is kept on reinstall), its systemd units in
/usr/lib/systemd/system, and its system groups. Where each stock file comes from:
`data/*/SOURCE.md`. An unknown name fails as dnf does (`No match for argument: X`, exit 1),
and so does an install without `-y` (cloud-init gives dnf no terminal: "Operation aborted.").

The installed set lives in /var/lib/enclavekit-host/rpmdb.json inside the host.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from local_backend.host.rootfs import shim

RPMDB = Path("/var/lib/enclavekit-host/rpmdb.json")
UNIT_DIR = "/usr/lib/systemd/system"
ARCH = "x86_64"
NE = "aws-nitro-enclaves-cli"  # data directory of the package's stock files
ALLOCATOR_UNIT = "nitro-enclaves-allocator.service"
PROXY_UNIT = "nitro-enclaves-vsock-proxy.service"


@dataclass(frozen=True)
class Package:
    """One package of the catalog."""

    name: str
    version: str
    summary: str
    commands: tuple[str, ...] = ()  # /usr/bin/<name>: this project's tool of that name
    machine_commands: tuple[str, ...] = ()  # the machine's real program (read-only /usr)
    files: dict[str, str] = field(default_factory=dict)  # installed path -> data file
    contents: dict[str, bytes] = field(default_factory=dict)  # installed path -> bytes
    config: tuple[str, ...] = ()  # %config(noreplace) paths
    dirs: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    links: dict[str, str] = field(default_factory=dict)  # installed path -> symlink target
    # installed path -> machine file read at install time (built on the machine beforehand)
    copies: dict[str, str] = field(default_factory=dict)
    users: tuple[str, ...] = ()  # system users (same-named group, home /var/lib/<name>)


def _nitro_cli() -> Package:
    return Package(
        name="aws-nitro-enclaves-cli",
        version="1.4.2-0.amzn2023",
        summary="AWS Nitro Enclaves command line interface (enclavekit emulator)",
        commands=("nitro-cli", "nitro-enclaves-allocator", "vsock-proxy"),
        files={
            "/etc/nitro_enclaves/allocator.yaml": f"{NE}/allocator.yaml",
            "/etc/nitro_enclaves/vsock-proxy.yaml": f"{NE}/vsock-proxy.yaml",
            f"{UNIT_DIR}/nitro-enclaves-allocator.service": f"{NE}/{ALLOCATOR_UNIT}",
            f"{UNIT_DIR}/nitro-enclaves-vsock-proxy.service": f"{NE}/{PROXY_UNIT}",
        },
        config=("/etc/nitro_enclaves/allocator.yaml", "/etc/nitro_enclaves/vsock-proxy.yaml"),
        dirs=("/var/log/nitro_enclaves", "/usr/share/nitro_enclaves"),
        groups=("ne",),
        provides=("nitro-cli",),
    )


def _nitro_devel() -> Package:
    from enclavekit import build

    blobs = "/usr/share/nitro_enclaves/blobs"
    return Package(
        name="aws-nitro-enclaves-cli-devel",
        version="1.4.2-0.amzn2023",
        summary="Nitro Enclaves build blobs (the emulator's fixed kernel/init stand-ins)",
        contents={
            f"{blobs}/bzImage": build.EMULATOR_KERNEL,
            f"{blobs}/init": build.EMULATOR_INIT,
            f"{blobs}/nsm.ko": build.EMULATOR_NSM_KO,
            f"{blobs}/cmdline": b"reboot=k panic=30 pci=off nomodules console=ttyS0\n",
        },
        requires=("aws-nitro-enclaves-cli",),
    )


def _simple(name: str, version: str, summary: str, *machine: str, **kw: object) -> Package:
    return Package(name, version, summary, machine_commands=machine, **kw)  # type: ignore[arg-type]


def catalog() -> dict[str, Package]:
    """Every package the host can install, by name."""
    from local_backend.host.catalog_acm import acm_packages

    pkgs = [
        _nitro_cli(),
        _nitro_devel(),
        _simple("jq", "1.7.1-49.amzn2023", "Command-line JSON processor", "jq"),
        _simple("git", "2.47.1-1.amzn2023", "Fast version control system", "git"),
        _simple("socat", "1.7.4.2-1.amzn2023", "Bidirectional data relay", commands=("socat",)),
        _simple("python3.11", "3.11.11-1.amzn2023", "Python 3.11", "python3.11"),
        _simple(
            "python3.11-pip",
            "22.3.1-2.amzn2023",
            "pip for Python 3.11",
            "pip3.11",
            requires=("python3.11",),
        ),
        _simple("awscli-2", "2.22.13-1.amzn2023", "AWS CLI v2", provides=("awscli",)),
        _simple("curl", "8.5.0-1.amzn2023", "curl", "curl"),
        _simple("tar", "1.34-1.amzn2023", "tar", "tar"),
        _simple("wget", "1.21.3-1.amzn2023", "wget"),
        _simple("shadow-utils", "4.9-12.amzn2023", "useradd, groupadd", "useradd", "groupadd"),
        _simple("openssl", "3.0.8-1.amzn2023", "OpenSSL tools", "openssl"),
        _simple("unzip", "6.0-57.amzn2023", "unzip"),
        *acm_packages(),
    ]
    out = {p.name: p for p in pkgs}
    for p in pkgs:
        for alias in p.provides:
            out.setdefault(alias, p)
    return out


# What an AL2023 AMI has installed before user data runs.
PREINSTALLED = ("awscli-2", "curl", "tar", "shadow-utils", "openssl", "python3.11")


def _db() -> dict[str, str]:
    try:
        return json.loads(RPMDB.read_text())
    except (OSError, ValueError):
        db = {name: catalog()[name].version for name in PREINSTALLED}
        _save(db)
        return db


def _save(db: dict[str, str]) -> None:
    RPMDB.parent.mkdir(parents=True, exist_ok=True)
    RPMDB.write_text(json.dumps(db, indent=2, sort_keys=True) + "\n")


def _add_group(name: str) -> None:
    """groupadd -r: the next free system gid below 1000, counting down as shadow-utils does."""
    group = Path("/etc/group")
    lines = group.read_text().splitlines() if group.exists() else []
    if any(line.split(":")[0] == name for line in lines):
        return
    used = {int(line.split(":")[2]) for line in lines if line.count(":") >= 3}
    gid = next(g for g in range(999, 100, -1) if g not in used)
    group.write_text("\n".join([*lines, f"{name}:x:{gid}:"]) + "\n")
    gshadow = Path("/etc/gshadow")
    if gshadow.exists():
        gshadow.write_text(gshadow.read_text() + f"{name}:!::\n")


def install_package(pkg: Package) -> None:
    """Lay the package's files down in the host."""
    for cmd in pkg.commands:
        path = Path("/usr/bin") / cmd
        path.write_text(shim(cmd))
        path.chmod(0o755)
    for d in pkg.dirs:
        Path(d).mkdir(parents=True, exist_ok=True)
    data = Path(__file__).resolve().parent / "data"
    items = [(p, (data / src).read_bytes()) for p, src in pkg.files.items()]
    items += list(pkg.contents.items())
    items += [(dest, Path(src).read_bytes()) for dest, src in pkg.copies.items()]
    for dest, content in items:
        path = Path(dest)
        if dest in pkg.config and path.exists():
            path.with_name(path.name + ".rpmnew").write_bytes(content)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        if dest.startswith(("/usr/bin/", "/usr/sbin/")):
            path.chmod(0o755)
    for g in pkg.groups:
        _add_group(g)
    for link, target in pkg.links.items():
        path = Path(link)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        path.symlink_to(target)
    if pkg.users:
        from local_backend.host import catalog_acm

        for u in pkg.users:
            catalog_acm.add_system_user(u)


def _header() -> None:
    stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime())
    print(f"Last metadata expiration check: 0:00:03 ago on {stamp}.")


def _resolve(names: list[str], cat: dict[str, Package], db: dict[str, str]) -> list[Package]:
    """The packages to install, requirements first (already installed ones left out)."""
    order: list[Package] = []

    def add(p: Package) -> None:
        for r in p.requires:
            add(cat[r])
        if p.name not in db and p not in order:
            order.append(p)

    for n in names:
        add(cat[n])
    return order


def install(names: list[str], *, assume_yes: bool, quiet: bool) -> int:
    cat = catalog()
    db = _db()
    if not quiet:
        _header()
    missing = [n for n in names if n not in cat]
    for n in missing:
        print(f"No match for argument: {n}")
    if missing:
        sys.stdout.flush()
        print(f"Error: Unable to find a match: {' '.join(missing)}", file=sys.stderr)
        return 1
    for n in names:
        if cat[n].name in db:
            print(f"Package {cat[n].name}-{cat[n].version}.{ARCH} is already installed.")
    todo = _resolve(names, cat, db)
    if not todo:
        print("Dependencies resolved.\nNothing to do.\nComplete!")
        return 0
    if not quiet:
        print("Dependencies resolved.")
        print("=" * 80)
        print(f" {'Package':<34}{'Arch':<9}{'Version':<24}{'Repository':<13}")
        print("=" * 80)
        print("Installing:")
        for p in todo:
            print(f" {p.name:<34}{ARCH:<9}{p.version:<24}{'amazonlinux':<13}")
        print(
            f"\nTransaction Summary\n{'=' * 80}\nInstall  {len(todo)} Package"
            f"{'s' if len(todo) > 1 else ''}\n"
        )
    if not assume_yes:
        print("Is this ok [y/N]: Operation aborted.")
        return 1
    for p in todo:
        for c in p.machine_commands:
            if not os.path.exists(f"/usr/bin/{c}"):
                print(
                    f"enclavekit: package {p.name} uses this machine's /usr/bin/{c}, which "
                    "is not installed on the machine",
                    file=sys.stderr,
                )
                return 1
    for p in todo:
        needed = [*p.copies.values(), *p.links.values()]
        absent = next((f for f in needed if f.startswith("/") and not os.path.exists(f)), None)
        if absent:
            print(
                f"enclavekit: package {p.name} installs {absent} from this machine, which is "
                "absent (built or fetched on the machine before the host installs it)",
                file=sys.stderr,
            )
            return 1
    for p in todo:
        install_package(p)
        db[p.name] = p.version
    _save(db)
    if not quiet:
        print("Installed:")
        for p in todo:
            print(f"  {p.name}-{p.version}.{ARCH}")
        print("\nComplete!")
    return 0


def remove(names: list[str]) -> int:
    db = _db()
    absent = [n for n in names if n not in db]
    for n in absent:
        print(f"No match for argument: {n}")
    for n in names:
        db.pop(n, None)
    _save(db)
    if absent and len(absent) == len(names):
        print("No packages marked for removal.\nDependencies resolved.\nNothing to do.\nComplete!")
        return 0
    print("Removed.\nComplete!")
    return 0


def main(argv: list[str], prog: str = "dnf") -> int:
    """`dnf [-y] [-q] install|remove|list|info|makecache|update|upgrade|clean|check-update`."""
    assume_yes = quiet = False
    rest = []
    for a in argv:
        if a in ("-y", "--assumeyes"):
            assume_yes = True
        elif a in ("-q", "--quiet"):
            quiet = True
        elif a.startswith("-"):
            continue  # --setopt=..., --enablerepo=..., -e 0: accepted, no effect here
        else:
            rest.append(a)
    if not rest:
        print(f"{prog}: no command given (try: {prog} install -y PACKAGE)", file=sys.stderr)
        return 1
    cmd, args = rest[0], rest[1:]
    if cmd in ("install", "reinstall"):
        if not args:
            print("Error: Need to pass a list of pkgs to install", file=sys.stderr)
            return 1
        return install(args, assume_yes=assume_yes, quiet=quiet)
    if cmd in ("remove", "erase"):
        return remove(args)
    if cmd in ("update", "upgrade", "makecache", "clean", "check-update", "distro-sync"):
        if not quiet:
            _header()
        print(
            "Dependencies resolved.\nNothing to do.\nComplete!"
            if cmd != "clean"
            else "0 files removed"
        )
        return 0
    if cmd == "list":
        db = _db()
        print("Installed Packages")
        for name, version in sorted(db.items()):
            print(f"{name}.{ARCH:<30} {version:<24} @amazonlinux")
        return 0
    if cmd == "info":
        cat = catalog()
        for n in args:
            if n not in cat:
                print("Error: No matching Packages to list", file=sys.stderr)
                return 1
            p = cat[n]
            print(
                f"Name         : {p.name}\nVersion      : {p.version}\nSummary      : {p.summary}"
            )
        return 0
    print(f"No such command: {cmd}. Please use /usr/bin/{prog} --help", file=sys.stderr)
    return 1


def extras_main(argv: list[str]) -> int:
    """AL2's `amazon-linux-extras install [-y] TOPIC...` (a topic = the package here)."""
    args = [a for a in argv if not a.startswith("-")]
    if len(args) >= 2 and args[0] == "install":
        return install(args[1:], assume_yes=True, quiet=False)
    if args and args[0] in ("list", "info"):
        for i, name in enumerate(sorted(catalog()), 1):
            print(f" {i:>3}  {name:<30} available")
        return 0
    print("Usage: amazon-linux-extras install TOPIC...", file=sys.stderr)
    return 1
