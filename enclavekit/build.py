"""build-enclave: a byte-reproducible EIF from an app directory, laid out as nitro-cli does.

Why: KMS key policies name the image's PCRs, so the same app must always give the same bytes
(nitro-cli's docker/linuxkit path does not). Everything that could vary is fixed here: entries
sorted, mtime/uid/gid/inode fixed by the cpio writer, modes normalised to 0644/0755 (0755 when
the owner may execute), BuildTime from ``SOURCE_DATE_EPOCH`` or the epoch.

Layout, as nitro-cli's ``init`` expects it (checked against the sources):

* aws-nitro-enclaves-cli ``enclave_build/src/yaml_generator.rs`` (commit 34f98c1b):
  the bootstrap ramdisk holds ``dev/`` (0755), ``init`` (0755) and ``nsm.ko`` (0755); the
  customer ramdisk holds ``rootfs/`` (the image prefix) with ``rootfs/{dev,run,sys,var,proc,tmp}``
  directories (0755) and the files ``cmd`` and ``env`` (0644) at the archive root.
* ``enclave_build/src/docker.rs`` ``write_config`` (commit 0c8ff928): ``cmd`` and ``env`` hold
  one entry per line, each followed by ``\\n`` (argv entries; ``KEY=VALUE`` pairs).
* aws-nitro-enclaves-sdk-bootstrap ``init/init.c`` (commit 2ccb146f): init loads ``nsm.ko`` if
  present, reads ``/env`` and ``/cmd`` line by line (trailing ``\\n`` stripped), unlinks them,
  then ``chdir``/``chroot("/rootfs")`` and ``execvpe(cmd[0], cmd, env)``.
* EIF section order kernel, cmdline, metadata, ramdisk[bootstrap], ramdisk[customer]
  (enclave_build/src/lib.rs adds the bootstrap ramdisk first).

enclavekit puts the app at ``/rootfs/app`` and the vendored pure core modules at
``/rootfs/app/enclavekit``. Without ``--kernel``/``--init`` fixed emulator stand-ins are used;
the metadata's ``CustomMetadata.EnclaveKit`` says so (describe-eif shows it under Metadata).
"""

from __future__ import annotations

import ast
import json
import os
import re
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import enclavekit
from enclavekit.cpio import CpioEntry, read_newc, write_newc
from enclavekit.eif import (
    EifImage,
    describe_image,
    read_eif,
    signature_section,
    write_eif,
)
from enclavekit.errors import EifFormatError, InvalidInput, os_reason
from enclavekit.pcr import Measurements, pcr_of_content

MANIFEST_NAME = "enclave.json"
APP_PREFIX = "rootfs/app"
# The core modules an enclave may carry: stdlib + cbor2 + cryptography only (ARCHITECTURE.md).
PURE_MODULES = (
    "attestation",
    "cms",
    "contract",
    "errors",
    "nsm",
    "pcr",
    "provisioning",
    "transport",
)
ROOTFS_DIRS = ("dev", "proc", "run", "sys", "tmp", "var")

# nitro-cli's blobs/<arch>/cmdline after .trim() (reference notes §4.2).
DEFAULT_CMDLINES = {
    "x86_64": "reboot=k panic=30 pci=off nomodules console=ttyS0 i8042.noaux i8042.nomux "
    "i8042.nopnp i8042.dumbkbd random.trust_cpu=on",
    "aarch64": "reboot=k panic=30 pci=off nomodules console=ttyS0 random.trust_cpu=on "
    "root=/dev/ram0",
}

# Fixed stand-ins used when no real boot blobs are given. Recognisable and never bootable.
EMULATOR_KERNEL = (
    b"ENCLAVEKIT-EMULATOR-KERNEL v1\n"
    b"This is not a Linux kernel. enclavekit's enclave emulator runs the customer ramdisk of\n"
    b"this image in an isolated process; rebuild with --kernel/--init (nitro-cli's blobs) for\n"
    b"Nitro hardware.\n"
)
EMULATOR_INIT = b"#!enclavekit-emulator-init v1\n# chroot /rootfs; exec /cmd with /env\n"
EMULATOR_NSM_KO = b"ENCLAVEKIT-EMULATOR-NSM v1\n# the emulator provides /dev/nsm\n"
EMULATOR_KERNEL_VERSION = "enclavekit-emulator-1"
EMULATOR_NOTE = "emulator: fixed enclavekit stand-in, not bootable on Nitro hardware"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PY_VERSION = re.compile(r"^3\.\d+$")
_PACKAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?$")
_MANIFEST_KEYS = ("name", "version", "cmd", "env", "vendor", "runtime")


@dataclass(frozen=True)
class AppManifest:
    """The app's ``enclave.json``: what runs, with which env, which core modules it vendors."""

    name: str
    version: str
    cmd: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    vendor: tuple[str, ...] = ()
    runtime_python: str = "3.11"
    runtime_packages: tuple[str, ...] = ()

    @property
    def runtime(self) -> dict[str, Any]:
        return {"python": self.runtime_python, "packages": list(self.runtime_packages)}


@dataclass(frozen=True)
class BuildResult:
    """Where the EIF went, its PCRs, and its describe-eif JSON."""

    path: Path
    measurements: Measurements
    describe: dict[str, Any] = field(compare=False)


@dataclass(frozen=True)
class AppLaunch:
    """What the emulator needs to start an image: root directory, argv, environment."""

    root: Path
    cmd: list[str]
    env: dict[str, str]
    runtime: dict[str, Any] | None = None


# ------------------------------------------------------------------------------------ manifest


def _bad(where: str, expected: str, found: object) -> InvalidInput:
    shown = repr(found) if not isinstance(found, dict | list) else type(found).__name__
    return InvalidInput(f"app manifest {where}: expected {expected}, found {shown}")


def _text(where: str, value: object, *, newline_ok: bool = False) -> str:
    if not isinstance(value, str):
        return_type = type(value).__name__
        raise InvalidInput(f"app manifest {where}: expected a string, found {return_type}")
    if not newline_ok and ("\n" in value or "\0" in value):
        raise _bad(where, "a string without newline or NUL", value)
    return value


def parse_manifest(obj: object, where: str = MANIFEST_NAME) -> AppManifest:
    """Validate a manifest object; every error names the field, the expected and the found."""
    if not isinstance(obj, dict):
        raise _bad(where, "a JSON object", obj)
    unknown = sorted(set(obj) - set(_MANIFEST_KEYS))
    if unknown:
        raise InvalidInput(
            f"app manifest {where}: unknown field(s) {', '.join(unknown)} "
            f"(allowed: {', '.join(_MANIFEST_KEYS)})"
        )
    for key in ("name", "version", "cmd"):
        if key not in obj:
            raise InvalidInput(f"app manifest {where}: missing required field {key!r}")
    name = _text(f"{where} field 'name'", obj["name"])
    version = _text(f"{where} field 'version'", obj["version"])
    for label, value in (("name", name), ("version", version)):
        if not _NAME.match(value):
            raise _bad(f"{where} field {label!r}", "1-128 of [A-Za-z0-9._+-]", value)
    cmd = obj["cmd"]
    if not isinstance(cmd, list) or not cmd:
        raise _bad(f"{where} field 'cmd'", "a non-empty array of strings (argv)", cmd)
    argv = tuple(_text(f"{where} field 'cmd[{i}]'", a) for i, a in enumerate(cmd))
    if not argv[0]:
        raise _bad(f"{where} field 'cmd[0]'", "a program name", argv[0])
    env_obj = obj.get("env", {})
    if not isinstance(env_obj, dict):
        raise _bad(f"{where} field 'env'", "an object of strings", env_obj)
    env = []
    for key, value in env_obj.items():
        if not _ENV_KEY.match(key):
            raise _bad(f"{where} field 'env'", "keys like NAME_1", key)
        env.append((key, _text(f"{where} field 'env.{key}'", value)))
    vendor_obj = obj.get("vendor", [])
    if not isinstance(vendor_obj, list):
        raise _bad(f"{where} field 'vendor'", "an array of module names", vendor_obj)
    allowed = ", ".join(f"enclavekit.{m}" for m in PURE_MODULES)
    vendor = []
    for i, mod in enumerate(vendor_obj):
        _text(f"{where} field 'vendor[{i}]'", mod)
        if not mod.startswith("enclavekit.") or mod.split(".", 1)[1] not in PURE_MODULES:
            raise _bad(f"{where} field 'vendor[{i}]'", f"one of {allowed}", mod)
        vendor.append(mod)
    runtime = obj.get("runtime", {})
    if not isinstance(runtime, dict):
        raise _bad(f"{where} field 'runtime'", "an object", runtime)
    extra = sorted(set(runtime) - {"python", "packages"})
    if extra:
        raise _bad(f"{where} field 'runtime'", "only keys python, packages", ", ".join(extra))
    python = runtime.get("python", "3.11")
    if not isinstance(python, str) or not _PY_VERSION.match(python):
        raise _bad(f"{where} field 'runtime.python'", "a version like '3.11'", python)
    packages = runtime.get("packages", [])
    if not isinstance(packages, list):
        raise _bad(f"{where} field 'runtime.packages'", "an array of package names", packages)
    for i, pkg in enumerate(packages):
        if not isinstance(pkg, str) or not _PACKAGE.match(pkg):
            raise _bad(f"{where} field 'runtime.packages[{i}]'", "a package name", pkg)
    return AppManifest(
        name=name,
        version=version,
        cmd=argv,
        env=tuple(env),
        vendor=tuple(dict.fromkeys(vendor)),
        runtime_python=python,
        runtime_packages=tuple(packages),
    )


def _require_dir(app_dir: str | Path) -> Path:
    path = Path(app_dir)
    if not path.exists():
        raise InvalidInput(f"app dir {path}: expected a directory, found nothing there")
    if not path.is_dir():
        raise InvalidInput(f"app dir {path}: expected a directory, found a file")
    return path


def load_manifest(app_dir: str | Path) -> AppManifest:
    """Read and validate ``<app_dir>/enclave.json``."""
    path = _require_dir(app_dir) / MANIFEST_NAME
    if not path.is_file():
        raise InvalidInput(f"app manifest {path}: not found (every app dir needs {MANIFEST_NAME})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"app manifest {path}: cannot be read ({exc})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"app manifest {path}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from None
    return parse_manifest(obj, str(path))


# ------------------------------------------------------------------------------------- vendoring


def core_dir() -> Path:
    """The directory of the installed enclavekit package (what vendoring copies from)."""
    return Path(enclavekit.__file__).resolve().parent


def imported_core_modules(source: str, module: str) -> set[str]:
    """The enclavekit modules `source` imports, by short name (what vendoring must follow)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise InvalidInput(f"vendored module {module}: not valid Python ({exc.msg})") from None
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "enclavekit":
                names = [f"enclavekit.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "enclavekit" and len(parts) > 1:
                found.add(parts[1])
    return found


def resolve_vendor(modules: tuple[str, ...] | list[str]) -> dict[str, bytes]:
    """Source bytes of the requested core modules and every core module they import.

    Refuses a vendored module that imports a non-pure core module: whatever runs in the
    enclave must be measured and must not drag in aws_cdk or moto.
    """
    core = core_dir()
    todo = [m.split(".", 1)[1] for m in modules]
    out: dict[str, bytes] = {}
    while todo:
        short = todo.pop()
        if short in out:
            continue
        path = core / f"{short}.py"
        try:
            data = path.read_bytes()
        except OSError:
            raise InvalidInput(
                f"vendored module enclavekit.{short}: expected {path} in the installed "
                "enclavekit package, found nothing"
            ) from None
        out[short] = data
        for dep in sorted(imported_core_modules(data.decode("utf-8"), f"enclavekit.{short}")):
            if dep not in PURE_MODULES:
                raise InvalidInput(
                    f"vendored module enclavekit.{short} imports enclavekit.{dep}, which is not a "
                    f"pure core module (allowed: {', '.join(PURE_MODULES)})"
                )
            todo.append(dep)
    return dict(sorted(out.items()))


VENDOR_INIT = b'"""enclavekit core modules vendored into this enclave image by build-enclave."""\n'


# ----------------------------------------------------------------------------------------- build


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{what} {path}: cannot be read ({os_reason(exc)})") from None


def app_entries(app_dir: Path, *, vendored: bool) -> list[CpioEntry]:
    """The app dir as cpio entries under rootfs/app (sorted, normalised, no caches)."""
    entries = [CpioEntry(APP_PREFIX, is_dir=True)]
    for current, dirs, files in os.walk(app_dir, followlinks=False):
        base = Path(current)
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in [*dirs, *sorted(files)]:
            path = base / name
            rel = path.relative_to(app_dir).as_posix()
            if name.endswith((".pyc", ".pyo")):
                continue
            if vendored and (rel == "enclavekit" or rel.startswith("enclavekit/")):
                raise InvalidInput(
                    f"app file {path}: conflicts with the vendored core modules at app/enclavekit"
                )
            try:
                st = path.lstat()
            except OSError as exc:
                raise InvalidInput(f"app file {path}: cannot be read ({exc.strerror})") from None
            if stat.S_ISLNK(st.st_mode):
                raise InvalidInput(
                    f"app file {path}: expected a regular file or directory, found a symlink"
                )
            target = f"{APP_PREFIX}/{rel}"
            if stat.S_ISDIR(st.st_mode):
                entries.append(CpioEntry(target, is_dir=True))
            elif stat.S_ISREG(st.st_mode):
                mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
                entries.append(CpioEntry(target, _read(path, "app file"), mode))
            else:
                raise InvalidInput(
                    f"app file {path}: expected a regular file or directory, found a special file"
                )
    return entries


def customer_ramdisk(app_dir: Path, manifest: AppManifest) -> tuple[bytes, list[str]]:
    """(cpio bytes, vendored module names) of the customer ramdisk."""
    entries = [CpioEntry(f"rootfs/{d}", is_dir=True) for d in ROOTFS_DIRS]
    entries += app_entries(app_dir, vendored=bool(manifest.vendor))
    vendored = resolve_vendor(manifest.vendor) if manifest.vendor else {}
    if vendored:
        entries.append(CpioEntry(f"{APP_PREFIX}/enclavekit/__init__.py", VENDOR_INIT))
        for short, data in vendored.items():
            entries.append(CpioEntry(f"{APP_PREFIX}/enclavekit/{short}.py", data))
    entries.append(CpioEntry("cmd", "".join(f"{a}\n" for a in manifest.cmd).encode()))
    entries.append(CpioEntry("env", "".join(f"{k}={v}\n" for k, v in manifest.env).encode()))
    return write_newc(entries), [f"enclavekit.{m}" for m in vendored]


def bootstrap_ramdisk(init: bytes, nsm_ko: bytes | None) -> bytes:
    """nitro-cli's first ramdisk: dev/, init, nsm.ko."""
    entries = [CpioEntry("dev", is_dir=True), CpioEntry("init", init, 0o755)]
    if nsm_ko is not None:
        entries.append(CpioEntry("nsm.ko", nsm_ko, 0o755))
    return write_newc(entries)


def build_time() -> str:
    """RFC 3339 build time from SOURCE_DATE_EPOCH, else the epoch: never the wall clock."""
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    seconds = 0
    if raw is not None:
        if not raw.isdigit():
            raise InvalidInput(
                f"SOURCE_DATE_EPOCH: expected a non-negative integer of seconds, found {raw!r}"
            )
        seconds = int(raw)
    try:
        moment = datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise InvalidInput(f"SOURCE_DATE_EPOCH: {raw!r} is out of range") from None
    return moment.strftime("%Y-%m-%dT%H:%M:%S+00:00")


def kernel_version_from_config(config: bytes) -> str:
    """Kernel version from a kernel .config header (``# Linux/x86 6.1.x Kernel Configuration``)."""
    for line in config.decode("utf-8", "replace").splitlines()[:10]:
        found = re.match(r"^#\s*Linux/\S+\s+(\S+)\s+Kernel Configuration", line)
        if found:
            return found.group(1)
    return "unknown"


def _load_private_key(path: Path) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    data = _read(path, "private key")
    try:
        return load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidInput(
            f"private key {path}: expected an unencrypted PEM private key ({first})"
        ) from None


def _provided(
    path: str | Path | None,
    part: str,
    notes: dict[str, Any],
    *,
    companion: tuple[str, object],
) -> Path | None:
    """The given file for `part` (Kernel/Init), or None: the emulator's stands in, and then its
    companion option (`--kernel-config`, `--nsm-ko`) means nothing and is refused. Notes which."""
    if path is None:
        notes[part] = EMULATOR_NOTE
        flag, value = companion
        if value is not None:
            raise InvalidInput(f"{flag}: only meaningful together with --{part.lower()}")
        return None
    notes[part] = f"provided: {Path(path).name}"
    return Path(path)


def build_enclave(
    app_dir: str | Path,
    output_file: str | Path,
    *,
    kernel: str | Path | None = None,
    cmdline: str | None = None,
    init: str | Path | None = None,
    name: str | None = None,
    version: str | None = None,
    kernel_config: str | Path | None = None,
    nsm_ko: str | Path | None = None,
    arch: str = "x86_64",
    signing_certificate: str | Path | None = None,
    private_key: str | Path | None = None,
) -> BuildResult:
    """Build ``output_file`` from ``app_dir``; the same inputs always give the same bytes.

    ``kernel``/``init``/``nsm_ko``/``kernel_config`` take nitro-cli's blobs (bzImage, init,
    nsm.ko, bzImage.config); ``nsm_ko`` defaults to an ``nsm.ko`` next to ``init`` and
    ``kernel_config`` to ``<kernel>.config``. ``cmdline`` defaults to nitro-cli's.
    """
    app = _require_dir(app_dir)
    manifest = load_manifest(app)
    overrides = {"name": name, "version": version}
    for label, value in overrides.items():
        if value is not None and not _NAME.match(value):
            raise InvalidInput(f"image {label}: expected 1-128 of [A-Za-z0-9._+-], found {value!r}")
    if arch not in DEFAULT_CMDLINES:
        raise InvalidInput(f"arch: expected one of {', '.join(DEFAULT_CMDLINES)}, found {arch!r}")
    if (signing_certificate is None) != (private_key is None):
        raise InvalidInput(
            "signing: expected both --signing-certificate and --private-key, found only one"
        )
    if cmdline is not None and ("\0" in cmdline or not cmdline.strip()):
        raise InvalidInput(f"cmdline: expected a non-empty kernel command line, found {cmdline!r}")

    notes: dict[str, Any] = {}
    kpath = _provided(kernel, "Kernel", notes, companion=("--kernel-config", kernel_config))
    if kpath is None:
        kernel_bytes, kernel_version = EMULATOR_KERNEL, EMULATOR_KERNEL_VERSION
    else:
        kernel_bytes = _read(kpath, "kernel")
        if not kernel_bytes:
            raise InvalidInput(f"kernel {kpath}: expected a kernel image, found an empty file")
        config_path = Path(kernel_config) if kernel_config else Path(f"{kpath}.config")
        if kernel_config is not None or config_path.is_file():
            kernel_version = kernel_version_from_config(_read(config_path, "kernel config"))
        else:
            kernel_version = "unknown"
    ipath = _provided(init, "Init", notes, companion=("--nsm-ko", nsm_ko))
    if ipath is None:
        init_bytes, nsm_bytes = EMULATOR_INIT, EMULATOR_NSM_KO
    else:
        init_bytes = _read(ipath, "init")
        sibling = ipath.parent / "nsm.ko"
        nsm_path = Path(nsm_ko) if nsm_ko else sibling if sibling.is_file() else None
        nsm_bytes = _read(nsm_path, "nsm.ko") if nsm_path else None
        notes["NsmDriver"] = f"provided: {nsm_path.name}" if nsm_path else "none"

    ramdisk1, vendored = customer_ramdisk(app, manifest)
    ramdisk0 = bootstrap_ramdisk(init_bytes, nsm_bytes)
    cmdline_bytes = (cmdline if cmdline is not None else DEFAULT_CMDLINES[arch]).strip().encode()
    notes["Runtime"] = {
        **manifest.runtime,
        "Provider": "enclave emulator (read-only mount, not measured)",
    }
    notes["Cmd"] = list(manifest.cmd)
    notes["Vendor"] = vendored
    metadata = {
        "ImageName": name or manifest.name,
        "ImageVersion": version or manifest.version,
        "BuildMetadata": {
            "BuildTime": build_time(),
            "BuildTool": "enclavekit",
            "BuildToolVersion": enclavekit.__version__,
            "OperatingSystem": "Linux",
            "KernelVersion": kernel_version,
        },
        "DockerInfo": None,
        "CustomMetadata": {"EnclaveKit": notes},
    }
    signature = None
    if signing_certificate is not None and private_key is not None:
        cert_pem = _read(Path(signing_certificate), "signing certificate")
        key = _load_private_key(Path(private_key))
        pcr0 = pcr_of_content(kernel_bytes, cmdline_bytes, ramdisk0, ramdisk1)
        signature = signature_section(pcr0, cert_pem, key)
    data = write_eif(
        kernel=kernel_bytes,
        cmdline=cmdline_bytes,
        ramdisks=[ramdisk0, ramdisk1],
        metadata=metadata,
        arch=arch,
        signature=signature,
    )
    image = read_eif(data, verify_crc=True)  # what we wrote must read back cleanly
    out = Path(output_file)
    _write_atomically(out, data)
    return BuildResult(out, image.measurements, describe_image(image))


def _write_atomically(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            umask = os.umask(0o022)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise InvalidInput(f"output file {path}: cannot be written ({os_reason(exc)})") from None


# --------------------------------------------------------------------------------------- extract


def _lines(data: bytes, what: str) -> list[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise EifFormatError(f"customer ramdisk /{what}: not UTF-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def extract_customer_ramdisk(image: EifImage, dest: str | Path) -> AppLaunch:
    """Unpack ``rootfs/`` of the customer ramdisk(s) into ``dest`` and read ``/cmd``, ``/env``.

    Like the kernel, later ramdisks override earlier ones. ``dest`` must be absent or empty.
    Nothing is ever written outside ``dest`` (no ``..``, no writing through symlinks).
    """
    merged: dict[str, CpioEntry] = {}
    for i, ramdisk in enumerate(image.ramdisks[1:], start=1):
        try:
            for entry in read_newc(ramdisk):
                merged[entry.path] = entry
        except InvalidInput as exc:
            raise EifFormatError(f"EIF ramdisk {i}: {exc}") from None
    for what in ("cmd", "env"):
        if what not in merged or merged[what].is_dir or merged[what].symlink:
            raise EifFormatError(f"customer ramdisk: expected a /{what} file, found none")
    cmd = _lines(merged["cmd"].data, "cmd")
    if not cmd:
        raise EifFormatError("customer ramdisk /cmd: expected at least one argv entry, found none")
    env: dict[str, str] = {}
    for line in _lines(merged["env"].data, "env"):
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise EifFormatError(f"customer ramdisk /env: expected KEY=VALUE lines, found {line!r}")
        env[key] = value

    root = Path(dest)
    try:
        root.mkdir(parents=True, exist_ok=True)
        if any(root.iterdir()):
            raise InvalidInput(f"extract destination {root}: expected an empty directory")
        real_root = root.resolve()
        for path in sorted(merged, key=lambda p: tuple(p.split("/"))):
            entry = merged[path]
            if not path.startswith("rootfs/"):
                continue
            target = root / path[len("rootfs/") :]
            if not target.parent.resolve().is_relative_to(real_root):
                raise EifFormatError(f"customer ramdisk: {path} would land outside the root")
            if entry.is_dir:
                target.mkdir(exist_ok=True)
                os.chmod(target, entry.mode or 0o755)
            elif entry.symlink:
                os.symlink(entry.data.decode("utf-8", "surrogateescape"), target)
            else:
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
                fd = os.open(target, flags, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(entry.data)
                os.chmod(target, entry.mode or 0o644)
    except OSError as exc:
        raise InvalidInput(f"extract destination {root}: cannot write ({os_reason(exc)})") from None
    runtime = None
    custom = (image.metadata or {}).get("CustomMetadata")
    if isinstance(custom, Mapping) and isinstance(custom.get("EnclaveKit"), Mapping):
        found = custom["EnclaveKit"].get("Runtime")
        runtime = dict(found) if isinstance(found, Mapping) else None
    return AppLaunch(root=root, cmd=cmd, env=env, runtime=runtime)


def is_emulator_image(image: EifImage) -> bool:
    """True when the image carries the emulator stand-in kernel (not bootable on hardware)."""
    return image.kernel == EMULATOR_KERNEL
