"""cloud-init as Amazon Linux 2023 runs it: the instance's user data, once, as root.

Formats (cloud-init's "user data formats"): gzip-compressed data, MIME multipart
(`text/x-shellscript`, `text/cloud-config`, `text/cloud-boothook`), a `#!` script, a
`#cloud-config` document, a `#cloud-boothook`. Anything else is logged as unhandled and
ignored, as cloud-init does. From `#cloud-config`: `bootcmd`, `write_files`, `packages`
(+ `package_update`/`package_upgrade`), `runcmd`; other keys are reported as not emulated.

Stages and order as cloud-init's: boothooks and bootcmd (init), write_files (init), packages
(config), then `scripts-user` (final) runs every file of `/var/lib/cloud/instance/scripts` in
name order: the user data parts `part-001`... and `runcmd`. Output of every step goes to the
console and to `/var/log/cloud-init-output.log`. A part that exits non-zero does not stop the
others (as cloud-init); the boot counts as failed and `/var/lib/cloud/data/result.json` lists
the error in cloud-init's form, plus (key `enclavekit`) the failing script, its exit status
and — for bash scripts that do not trace themselves — the last command it ran.

Runs inside the host (PID 1 forks it); `run(instance_id, console)`.
"""

from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import grp
import gzip
import json
import os
import pwd
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from enclavekit.errors import InvalidInput
from local_backend.host.layout import BOOT_RESULT, BOOT_STATUS, CLOUD_DIR

VERSION = "22.2.2"  # the cloud-init of Amazon Linux 2023
OUTPUT_LOG = "/var/log/cloud-init-output.log"
_TRACE_FD = 9
_SELF_TRACING = re.compile(r"^\s*set\s+(-\w*x|-o\s+xtrace)", re.MULTILINE)
SUPPORTED_KEYS = frozenset(
    {
        "bootcmd",
        "write_files",
        "packages",
        "package_update",
        "package_upgrade",
        "runcmd",
        "package_reboot_if_required",
        "repo_update",
        "repo_upgrade",
        "output",
        "final_message",
    }
)


@dataclass(frozen=True)
class Part:
    """One piece of user data: kind is script | cloud-config | boothook | unhandled."""

    kind: str
    content: bytes
    filename: str = ""
    content_type: str = ""


@dataclass
class Failure:
    script: str
    status: int
    command: str | None = None


@dataclass
class Result:
    errors: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _kind_of(content: bytes) -> str:
    head = content.lstrip()[:64]
    if head.startswith(b"#!"):
        return "script"
    if head.startswith(b"#cloud-config"):
        return "cloud-config"
    if head.startswith(b"#cloud-boothook"):
        return "boothook"
    return "unhandled"


_MIME_KINDS = {
    "text/x-shellscript": "script",
    "text/cloud-config": "cloud-config",
    "text/cloud-boothook": "boothook",
    "text/x-not-multipart": None,
    "text/plain": None,
}


def parse(data: bytes) -> list[Part]:
    """Split user data into parts, as cloud-init's user-data processor does."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    head = data.lstrip()[:200].lower()
    if head.startswith(b"content-type:") or head.startswith(b"mime-version:"):
        msg = email.message_from_bytes(data, policy=email.policy.compat32)
        parts = []
        n = 0
        for sub in msg.walk():
            if sub.is_multipart():
                continue
            ctype = sub.get_content_type()
            payload = sub.get_payload(decode=True) or b""
            n += 1
            kind = _MIME_KINDS.get(ctype, "unhandled")
            if kind is None:
                kind = _kind_of(payload)
            name = sub.get_filename() or f"part-{n:03d}"
            parts.append(Part(kind, payload, name, ctype))
        return parts
    return [Part(_kind_of(data), data, "part-001", "text/x-not-multipart")]


class Console:
    """cloud-init's `output: {all: '| tee -a /var/log/cloud-init-output.log'}`: one pipe whose
    reader (a forked tee) copies to the console and the log. Scripts write to it directly, so
    cloud-init waits for a script's exit, never for a daemon it left holding the pipe."""

    def __init__(self, out: BinaryIO) -> None:
        Path(OUTPUT_LOG).parent.mkdir(parents=True, exist_ok=True)
        read_end, self.fd = os.pipe()
        out.flush()
        console_fd = out.fileno()
        if os.fork() == 0:  # the tee
            os.close(self.fd)
            log = os.open(OUTPUT_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            while chunk := os.read(read_end, 65536):
                for fd in (console_fd, log):
                    with contextlib.suppress(OSError):
                        os.write(fd, chunk)
            os._exit(0)
        os.close(read_end)

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def line(self, text: str) -> None:
        self.write(text.encode() + b"\n")

    def warn(self, module: str, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S,000", time.gmtime())
        self.line(f"{stamp} - {module}[WARNING]: {text}")

    def close(self) -> None:
        os.close(self.fd)


def _uptime() -> str:
    try:
        return Path("/proc/uptime").read_text().split()[0]
    except (OSError, IndexError):
        return "0.00"


def _run(console: Console, argv: list[str], *, trace: Path | None = None) -> int:
    """Run argv with its output on the console; returns the exit status (negative: signal)."""
    env = dict(os.environ)
    pass_fds: tuple[int, ...] = ()
    tf = None
    if trace is not None:
        tf = open(trace, "wb")  # noqa: SIM115
        os.dup2(tf.fileno(), _TRACE_FD, inheritable=True)
        env["BASH_XTRACEFD"] = str(_TRACE_FD)
        pass_fds = (_TRACE_FD,)
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=console.fd,
            stderr=console.fd,
            env=env,
            cwd="/",
            pass_fds=pass_fds,
        )
    except OSError as exc:
        console.line(f"{argv[0]}: {exc.strerror}")
        return 126 if not isinstance(exc, FileNotFoundError) else 127
    finally:
        if tf is not None:
            os.close(_TRACE_FD)
            tf.close()
    return proc.wait()


def _last_command(trace: Path) -> str | None:
    """The last top-level command bash traced (`+ cmd`; nested levels are `++`)."""
    try:
        lines = trace.read_bytes().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("+ "):
            return line[2:]
    return None


def _script_argv(path: Path) -> tuple[list[str], bool]:
    """How to run a script: by its `#!` line; bash scripts traced to find a failing command."""
    first = path.read_bytes().split(b"\n", 1)[0].decode(errors="replace")
    interp = shlex.split(first[2:]) if first.startswith("#!") else ["/bin/sh"]
    prog = os.path.basename(interp[0]) if interp else ""
    if prog == "env" and len(interp) > 1:
        prog = os.path.basename(interp[1])
    text = path.read_text(errors="replace")
    if prog in ("bash", "sh") and not _SELF_TRACING.search(text) and "-x" not in interp:
        args = interp[1:] if os.path.basename(interp[0]) in ("bash", "sh") else interp[2:]
        return ["/bin/bash", *args, "-x", str(path)], True
    return [str(path)], False


def run_script(console: Console, path: Path, result: Result) -> int:
    argv, traced = _script_argv(path)
    trace = path.with_name(f".{path.name}.trace") if traced else None
    status = _run(console, argv, trace=trace)
    if status != 0:
        command = _last_command(trace) if trace else None
        result.failures.append(Failure(str(path), status, command))
        console.warn("util.py", f"Failed running {path} [{status}]")
        if command:
            console.warn("util.py", f"{path}: last command: {command} (exit status {status})")
    if trace is not None:
        trace.unlink(missing_ok=True)
    return status


def _write_file(spec: dict[str, Any], console: Console) -> None:
    path = Path(spec["path"])
    content = spec.get("content", "")
    raw = content.encode() if isinstance(content, str) else bytes(content)
    enc = str(spec.get("encoding", "")).lower()
    if enc in ("b64", "base64", "gz+b64", "gzip+base64", "gz+base64", "gzip+b64"):
        raw = base64.b64decode(raw)
    if enc.startswith(("gz", "gzip")):
        raw = gzip.decompress(raw)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab" if spec.get("append") else "wb") as fh:
        fh.write(raw)
    perms = spec.get("permissions", "0644")
    path.chmod(int(str(perms), 8) if isinstance(perms, str) else int(perms))
    owner = str(spec.get("owner", "root:root"))
    user, _, group = owner.partition(":")
    try:
        os.chown(path, pwd.getpwnam(user).pw_uid, grp.getgrnam(group or user).gr_gid)
    except KeyError as exc:
        console.warn("cc_write_files.py", f"owner {owner} of {path}: {exc}")


def _runcmd_script(commands: list[Any]) -> str:
    lines = ["#!/bin/sh"]
    for cmd in commands:
        lines.append(shlex.join(str(c) for c in cmd) if isinstance(cmd, list) else str(cmd))
    return "\n".join(lines) + "\n"


def run(instance_id: str, out: BinaryIO) -> Result:
    """Run the user data stored for `instance_id` once; a second boot runs nothing."""
    idir = Path(CLOUD_DIR) / "instances" / instance_id
    sem = idir / "sem"
    sem.mkdir(parents=True, exist_ok=True)
    link = Path(CLOUD_DIR) / "instance"
    if not link.is_symlink():
        link.symlink_to(f"instances/{instance_id}")
    console = Console(out)
    started = time.time()
    stamp = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    console.line(f"Cloud-init v. {VERSION} running 'init' at {stamp}. Up {_uptime()} seconds.")
    result = Result()
    if (sem / "user-scripts").exists():
        console.line(f"Cloud-init v. {VERSION}: user data already ran for {instance_id}")
        return result
    data_file = idir / "user-data.txt"
    data = data_file.read_bytes() if data_file.exists() else b""
    scripts = link / "scripts"  # cloud-init names them through the `instance` link
    scripts.mkdir(exist_ok=True)
    try:
        parts = parse(data) if data else []
    except Exception as exc:  # noqa: BLE001 - cloud-init logs and goes on
        console.warn("user_data.py", f"Failed at processing user data: {exc}")
        result.errors.append(f"('user-data', {exc!r})")
        parts = []
    configs: list[dict[str, Any]] = []
    for part in parts:
        if part.kind == "script":
            path = scripts / part.filename.replace("/", "_")
            path.write_bytes(part.content)
            path.chmod(0o700)
        elif part.kind == "cloud-config":
            try:
                doc = yaml.safe_load(part.content) or {}
                if not isinstance(doc, dict):
                    raise InvalidInput(f"expected a mapping, found {type(doc).__name__}")
                configs.append(doc)
            except (yaml.YAMLError, ValueError) as exc:
                console.warn("util.py", f"Failed loading yaml blob. {exc}")
                result.errors.append(f"('cloud-config', {exc!r})")
        elif part.kind == "boothook":
            path = idir / "boothooks" / part.filename.replace("/", "_")
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(part.content)
            path.chmod(0o700)
            run_script(console, path, result)
        else:
            console.warn(
                "__init__.py",
                f"Unhandled non-multipart ({part.content_type}) userdata: "
                f"'{part.content[:40]!r}...'",
            )
    config: dict[str, Any] = {}
    for doc in configs:  # later parts override earlier keys, as cloud-init's merge by default
        config.update(doc)
    for key in sorted(set(config) - SUPPORTED_KEYS):
        result.notes.append(f"cloud-config key {key!r} is not emulated")
        console.warn("enclavekit", f"cloud-config key {key!r} is not emulated: ignored")
    for cmd in config.get("bootcmd") or []:
        argv = [str(c) for c in cmd] if isinstance(cmd, list) else ["/bin/sh", "-c", str(cmd)]
        if (status := _run(console, argv)) != 0:
            result.errors.append(f"('bootcmd', RuntimeError('exit status {status}'))")
    for spec in config.get("write_files") or []:
        try:
            if not spec.get("defer"):
                _write_file(spec, console)
        except Exception as exc:  # noqa: BLE001
            console.warn("cc_write_files.py", f"Failed writing {spec.get('path')}: {exc}")
            result.errors.append(f"('write_files', {exc!r})")
    packages = config.get("packages") or []
    if config.get("package_update") or config.get("package_upgrade") or packages:
        names = ["-".join(map(str, p)) if isinstance(p, list) else str(p) for p in packages]
        if packages:
            status = _run(console, ["dnf", "-y", "install", *names])
            if status != 0:
                console.warn(
                    "cc_package_update_upgrade_install.py",
                    "Failed to install packages: " + " ".join(names),
                )
                result.errors.append(
                    f"('package-update-upgrade-install', "
                    f"RuntimeError('dnf install exit status {status}'))"
                )
    if config.get("runcmd"):
        (scripts / "runcmd").write_text(_runcmd_script(config["runcmd"]))
        (scripts / "runcmd").chmod(0o700)
    for spec in config.get("write_files") or []:
        if spec.get("defer"):
            _write_file(spec, console)
    failures_before = len(result.failures)
    ran = 0
    for path in sorted(p for p in scripts.iterdir() if not p.name.startswith(".")):
        ran += 1
        run_script(console, path, result)
    failed = result.failures[failures_before:]
    if failed:
        console.warn(
            "cc_scripts_user.py", f"Failed to run module scripts-user (scripts in {scripts})"
        )
        names = ", ".join(Path(f.script).name for f in failed)
        result.errors.append(
            f"('scripts-user', RuntimeError('Runparts: {len(failed)} failures ({names}) in "
            f"{ran} attempted commands'))"
        )
    (sem / "user-scripts").write_text(f"{time.time()}\n")
    up = time.time() - started
    stamp = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    console.line(
        f"Cloud-init v. {VERSION} finished at {stamp}. Datasource DataSourceEc2.  "
        f"Up {_uptime()} seconds"
    )
    _write_result(result, up)
    (idir / "boot-finished").write_text(f"{_uptime()} - {stamp} - v. {VERSION}\n")
    console.close()
    return result


def _write_result(result: Result, seconds: float) -> None:
    out = {
        "v1": {"datasource": "DataSourceEc2", "errors": result.errors},
        "enclavekit": {
            "failures": [f.__dict__ for f in result.failures],
            "notes": result.notes,
            "seconds": round(seconds, 3),
        },
    }
    path = Path(BOOT_RESULT)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    os.replace(tmp, path)
    Path(BOOT_STATUS).write_text(json.dumps({"v1": {"stage": None, "errors": result.errors}}))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    result = run(args[0], sys.stdout.buffer)
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
