"""Entry point of every command this project puts into a host (`/usr/bin/<name>` shims).

`python -m local_backend.host.tools NAME ARGS...`; NAME is the command the user data ran.
"""

from __future__ import annotations

import importlib
import os
import pwd
import sys
from pathlib import Path


def _sudo(argv: list[str]) -> int:
    """`sudo [-E] [-H] [-u USER] [-i|-s] [--] CMD...`: the host's user data is root already."""
    user = None
    it = iter(argv)
    rest: list[str] = []
    for a in it:
        if rest:
            rest.append(a)
        elif a == "--":
            rest = list(it)
            break
        elif a in ("-u", "--user"):
            user = next(it, None)
        elif a.startswith("-"):
            continue
        else:
            rest.append(a)
    if not rest:
        print("usage: sudo [-u user] command", file=sys.stderr)
        return 1
    if user and user != "root":
        pw = pwd.getpwnam(user)
        os.setgid(pw.pw_gid)
        os.initgroups(user, pw.pw_gid)
        os.setuid(pw.pw_uid)
        os.environ.update(HOME=pw.pw_dir, USER=user, LOGNAME=user)
    try:
        os.execvp(rest[0], rest)
    except OSError as exc:
        print(
            f"sudo: {rest[0]}: command not found"
            if isinstance(exc, FileNotFoundError)
            else f"sudo: {rest[0]}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    return 0


def _aws(argv: list[str]) -> int:
    """AWS CLI v2 of the AMI: the project's awscli, aimed at the endpoint relay (the host's
    AWS_ENDPOINT_URL), credentials from IMDS like any SDK on EC2."""
    aws = Path(sys.executable).parent / "aws"
    os.environ.pop("PYTHONPATH", None)
    os.execv(str(aws), [str(aws), *argv])
    return 1


# command -> (module of local_backend.host, its entry point taking the arguments); imported on
# use, so a command loads only its own code.
_COMMANDS: dict[str, tuple[str, str]] = {
    "amazon-linux-extras": ("catalog", "extras_main"),
    "systemctl": ("systemd", "systemctl"),
    "journalctl": ("systemd", "journalctl"),
    "nitro-cli": ("nitro", "nitro_cli_main"),
    "nitro-enclaves-allocator": ("nitro", "allocator_main"),
    "vsock-proxy": ("nitro", "vsock_proxy_main"),
    "socat": ("socat", "main"),
    "p11ne-agent": ("acm_agent", "main"),
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    name, rest = args[0], args[1:]
    if name in ("dnf", "yum"):
        from local_backend.host import catalog

        return catalog.main(rest, name)
    if name in _COMMANDS:
        module, entry = _COMMANDS[name]
        return getattr(importlib.import_module(f"local_backend.host.{module}"), entry)(rest)
    if name == "sudo":
        return _sudo(rest)
    if name == "aws":
        return _aws(rest)
    print(f"{name}: command not found", file=sys.stderr)
    return 127


if __name__ == "__main__":
    sys.exit(main())
