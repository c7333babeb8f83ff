"""The machine's view of a host's processes, the endpoint's admin paths and the search for a
certificate's key in a host, for the checks that search for it (key-not-on-parent, on agent
and ACM hosts) and the renewal probe."""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from local_backend import server
from local_backend.verify.userdata import UserDataHost


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (the enclave's process tree, seen from the host)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def host_processes(h: UserDataHost) -> tuple[list[int], list[int]]:
    """(parent side, enclave side) machine pids of the host: processes in the host's own PID
    namespace (nginx, the agent, systemd's stand-in...) and those in the enclaves' nested ones."""

    init = int(h.host["init_pid"])
    own = os.readlink(f"/proc/{init}/ns/pid")  # "pid:[inode]"
    parent, enclave = [], []
    for pid in process_tree(init):
        try:
            ns = os.readlink(f"/proc/{pid}/ns/pid")
        except OSError:
            continue
        (parent if ns == own else enclave).append(pid)
    return parent, enclave


def comm(pid: int) -> str:
    """The process's command name ("?" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def endpoint_admin(
    endpoint: str, path: str, req: dict[str, Any], state_dir: Path
) -> tuple[bool, dict[str, Any]]:
    """POST `req` to an admin path of the local endpoint (its admin token from the state dir):
    (accepted, its JSON answer, the error's when refused)."""
    r = urllib.request.Request(
        endpoint + path,
        data=json.dumps(req).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            server.ADMIN_TOKEN_HEADER: server.admin_token(state_dir),
        },
    )
    try:
        with urllib.request.urlopen(r, timeout=120) as resp:
            return True, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return False, json.loads(exc.read() or b'{"error": "HTTP error"}')


def endpoint_keyscan(endpoint: str, req: dict[str, Any], state_dir: Path) -> dict[str, Any]:
    """The endpoint's search for a certificate's key (`local_backend.keyscan`): where it was
    found, or {"error": ...}."""
    return endpoint_admin(endpoint, server.KEYSCAN_PATH, req, state_dir)[1]


def search_key(
    h: UserDataHost, certificate_arn: str, account_id: str
) -> tuple[list[int], list[int], dict[str, Any]]:
    """The endpoint's search for the certificate's key in every process of the host and every
    state and log file: (parent-side pids, enclave-side pids, its answer)."""
    parent, enclave = host_processes(h)
    req = {
        "certificate_arn": certificate_arn,
        "account_id": account_id,
        "region": h.region,
        "paths": [str(h.state_dir)],
        "pids": [*parent, *enclave],
    }
    return parent, enclave, endpoint_keyscan(h.endpoint, req, h.state_dir)


def key_leaks(
    result: dict[str, Any], parent: list[int], label: Callable[[int], str] = str
) -> list[str]:
    """Where the search found the key on the parent side: files, then processes (`label`)."""
    leaks = [f"{x['where']} ({x['form']})" for x in result["file_hits"]]
    for pid in parent:
        hits = result["processes"].get(str(pid), {}).get("hits") or []
        if hits:
            name = label(pid)
            leaks += [f"pid {name}: {x['where']} ({x['form']})" for x in hits]
    return leaks


def searched_mib(result: dict[str, Any]) -> int:
    return sum(p.get("bytes_read", 0) for p in result["processes"].values()) >> 20
