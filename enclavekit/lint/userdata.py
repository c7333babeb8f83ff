"""What a host's user data does, read the way cloud-init and bash would run it.

Hosts are judged from the inputs AWS reads: the user data (after intrinsics) is a bash script,
a `#cloud-config` document or a MIME multipart of both. From it come the files it writes
(heredocs, cloud-init `write_files`, `sed -i` edits of the allocator), the `nitro-cli
run-enclave` invocations (also those inside systemd units it writes), the vsock-proxy targets,
the IMDS calls and the ACM association calls. Only patterns are read; nothing is executed.
"""

from __future__ import annotations

import email
import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from enclavekit import yamlsafe
from enclavekit.errors import InvalidInput

ALLOCATOR = "/etc/nitro_enclaves/allocator.yaml"
VSOCK_PROXY_CONFIG = "/etc/nitro_enclaves/vsock-proxy.yaml"
ACM_CONFIG = "/etc/nitro_enclaves/acm.yaml"
# What aws-nitro-enclaves-cli installs as allocator.yaml (bootstrap/allocator.yaml).
DEFAULT_ALLOCATOR = "---\nmemory_mib: 512\ncpu_count: 2\n"
IMDS_HOSTS = ("169.254.169.254", "[fd00:ec2::254]")

_HEREDOC = re.compile(r"<<(-?)\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2")
_REDIRECT = re.compile(r"(?:^|\s)>>?\s*(['\"]?)(/[^\s'\"]+)\1")
_TEE = re.compile(r"\btee\s+(?:-a\s+)?(['\"]?)(/[^\s'\"]+)\1")
_MAX_SED_LINE = 512
_SED = re.compile(r"\bsed\s+-i\S*\s+(['\"])s(.)(.*?)\2(.*?)\2(\w*)\1\s+(\S+)")


@dataclass(frozen=True)
class RunEnclave:
    """One `nitro-cli run-enclave` the host starts."""

    command: str
    debug_mode: bool
    cpu_count: int | None
    memory_mib: int | None
    eif_path: str | None


@dataclass
class UserData:
    """The facts of one host's user data."""

    text: str
    lines: list[str] = field(default_factory=list)  # logical lines, continuations joined
    files: dict[str, str] = field(default_factory=dict)  # path -> content, in write order
    run_enclaves: list[RunEnclave] = field(default_factory=list)
    imds_calls: list[tuple[str, bool]] = field(default_factory=list)  # (line, with token)
    associate_calls: list[str] = field(default_factory=list)
    proxy_targets: list[tuple[str, str]] = field(default_factory=list)  # (host, port)

    def yaml_file(self, path: str, where: str) -> dict[str, Any] | None:
        """A YAML file the user data writes, parsed (None when not written or not a map)."""
        text = self.files.get(path)
        if text is None:
            return None
        body = _yaml(text, f"{where} {path}")
        return body if isinstance(body, dict) else None

    def allocator(self, where: str) -> tuple[int | None, int | None, bool]:
        """(cpu_count, memory_mib, written) of the allocator pool this host reserves."""
        written = ALLOCATOR in self.files
        body = (self.yaml_file(ALLOCATOR, where) if written else _yaml(DEFAULT_ALLOCATOR, "")) or {}
        cpus = as_int(body.get("cpu_count"))
        pool = body.get("cpu_pool")
        if cpus is None and pool is not None:
            cpus = len(cpu_list(str(pool)))
        return cpus, as_int(body.get("memory_mib")), written


def _yaml(text: str, what: str) -> Any:
    """A YAML file as the host's tools read it (bounded), or None when it is not YAML."""
    try:
        return yamlsafe.load(text, what=what)
    except (InvalidInput, ValueError, TypeError, OverflowError):  # e.g. a 5000-digit !!int
        return None


def as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def cpu_list(text: str) -> list[int]:
    """ "2,3,6-9" -> [2, 3, 6, 7, 8, 9] (bounded: at most 4096 CPUs)."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        a, b = as_int(lo), as_int(hi or lo)
        if a is None or b is None or b < a or b - a > 4096:
            continue
        out.extend(range(a, b + 1))
        if len(out) > 4096:
            break
    return out


def parse_user_data(text: str, where: str) -> UserData:
    """The facts of `text` (bash, #cloud-config or MIME multipart)."""
    ud = UserData(text)
    _read(text, where, ud, 0)
    _derive(ud)
    return ud


def _read(text: str, where: str, ud: UserData, depth: int) -> None:
    head = text.lstrip()[:200].lower()
    if depth < 4 and head.startswith(("content-type: multipart", "mime-version")):
        msg = email.message_from_string(text)
        for part in msg.walk():
            if part.is_multipart():
                continue
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                _read(payload.decode("utf-8", "replace"), where, ud, depth + 1)
        return
    if head.startswith("#cloud-config"):
        doc = _yaml(text, f"{where} (cloud-config)")
        if isinstance(doc, dict):
            _cloud_config(doc, where, ud, depth)
        return
    _script(text, ud)


def _cloud_config(doc: dict[str, Any], where: str, ud: UserData, depth: int) -> None:
    for item in doc.get("write_files") or []:
        if isinstance(item, dict) and isinstance(item.get("path"), str):
            content = item.get("content")
            if isinstance(content, str) and item.get("encoding") in (None, "text/plain"):
                ud.files[item["path"]] = content
    for key in ("bootcmd", "runcmd"):
        for cmd in doc.get(key) or []:
            if isinstance(cmd, list):
                cmd = " ".join(shlex.quote(str(c)) for c in cmd)
            if isinstance(cmd, str):
                _script(cmd, ud)


def _logical_lines(text: str) -> list[str]:
    out: list[str] = []
    buf = ""
    for raw in text.splitlines():
        if raw.endswith("\\"):
            buf += raw[:-1] + " "
            continue
        out.append(buf + raw)
        buf = ""
    if buf:
        out.append(buf)
    return out


def _script(text: str, ud: UserData) -> None:
    """Bash: logical lines, heredoc bodies written to files, sed edits applied to them."""
    raw_lines = text.splitlines()
    i = 0
    while i < len(raw_lines):
        line = raw_lines[i]
        here = _HEREDOC.search(line)
        if here and not line.lstrip().startswith("#"):
            strip, delim = here.group(1) == "-", here.group(3)
            body: list[str] = []
            i += 1
            while (
                i < len(raw_lines)
                and (raw_lines[i].lstrip("\t") if strip else raw_lines[i]) != delim
            ):
                body.append(raw_lines[i].lstrip("\t") if strip else raw_lines[i])
                i += 1
            content = "\n".join(body) + "\n"
            target = _TEE.search(line) or _REDIRECT.search(line)
            if target:
                path = target.group(2)
                append = ">>" in line or "tee -a" in line
                ud.files[path] = (ud.files.get(path, "") if append else "") + content
            i += 1
            continue
        i += 1
    for line in _logical_lines(text):  # heredoc bodies too: a unit's ExecStart runs as well
        ud.lines.append(line)
        sed = _SED.search(line) if "sed " in line and len(line) <= _MAX_SED_LINE else None
        if sed:
            _apply_sed(ud, sed)


def _apply_sed(ud: UserData, m: re.Match[str]) -> None:
    """`sed -i 's/a/b/[g]' FILE` on a file the user data wrote (or the default allocator).

    Only simple expressions are applied (no groups, alternation or counted repeats, at most
    three `*`, lines of at most _MAX_SED_LINE): a pattern from the template must not be able
    to make the linter backtrack for ever."""
    pattern, repl, flags, path = m.group(3), m.group(4), m.group(5), m.group(6).strip("'\"")
    if re.search(r"[(){}|+?]", pattern) or pattern.count("*") > 3:
        return
    if path == ALLOCATOR and path not in ud.files:
        ud.files[path] = DEFAULT_ALLOCATOR
    if path not in ud.files or len(ud.files[path]) > 64 * 1024:
        return
    try:
        rx = re.compile(pattern)
        py_repl = repl.replace("\\", "\\\\").replace("&", r"\g<0>")
        count = 0 if "g" in flags else 1
        ud.files[path] = "\n".join(
            rx.sub(py_repl, ln, count=count) if len(ln) <= _MAX_SED_LINE else ln
            for ln in ud.files[path].split("\n")
        )
    except (re.error, IndexError):
        return


def _derive(ud: UserData) -> None:
    for line in ud.lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            continue
        if "run-enclave" in stripped and "nitro-cli" in stripped:
            ud.run_enclaves.append(_run_enclave(stripped, ud))
        if any(h in stripped for h in IMDS_HOSTS) and re.search(r"\b(curl|wget)\b", stripped):
            with_token = "x-aws-ec2-metadata-token" in stripped.lower()
            ud.imds_calls.append((stripped, with_token))
        if "associate-enclave-certificate-iam-role" in stripped:
            ud.associate_calls.append(stripped)
        words = _words(stripped)
        for j, w in enumerate(words):
            if w.endswith("vsock-proxy") and j + 3 < len(words) + 1:
                args = [a for a in words[j + 1 :] if not a.startswith("-")]
                if len(args) >= 3:
                    ud.proxy_targets.append((args[1], args[2]))


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError:
        return line.split()


def _run_enclave(line: str, ud: UserData) -> RunEnclave:
    words = _words(line[line.index("run-enclave") :])
    opts: dict[str, str | bool] = {}
    k = 1
    while k < len(words):
        w = words[k]
        if w.startswith("--"):
            name, eq, value = w[2:].partition("=")
            if eq:
                opts[name] = value
            elif k + 1 < len(words) and not words[k + 1].startswith("--"):
                opts[name] = words[k + 1]
                k += 1
            else:
                opts[name] = True
        elif w in ("&&", ";", "||", "|"):
            break
        k += 1
    config = opts.get("config")
    if isinstance(config, str) and config in ud.files:
        try:
            cfg = json.loads(ud.files[config])
        except ValueError:
            cfg = None
        if isinstance(cfg, dict):
            for src, dst in (
                ("debug_mode", "debug-mode"),
                ("cpu_count", "cpu-count"),
                ("memory_mib", "memory"),
                ("eif_path", "eif-path"),
            ):
                if src in cfg and cfg[src] is not False:
                    opts.setdefault(dst, True if cfg[src] is True else str(cfg[src]))
    eif = opts.get("eif-path")
    return RunEnclave(
        command=line.strip(),
        debug_mode=opts.get("debug-mode") is True or opts.get("attach-console") is True,
        cpu_count=as_int(opts.get("cpu-count")) if "cpu-count" in opts else None,
        memory_mib=as_int(opts.get("memory")) if "memory" in opts else None,
        eif_path=eif if isinstance(eif, str) else None,
    )
