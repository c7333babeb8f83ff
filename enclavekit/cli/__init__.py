"""The `enclavekit` command: thin argument parsing that calls the parts.

Each command group lives in its own module with a `register(subparsers)` function; a handler
returns the exit status (0 ok, 1 a check or finding failed, 2 bad usage or bad input).
Errors from the parts arrive as `EnclaveKitError` and leave as one line on stderr.
Imports: any part; `local_backend` only through `cli/backend.py` (the one crossing, each part
imported on first use), so `enclavekit lint` and the image commands run without the backend
installed. Shared plumbing (a command and its handler, `--state-dir`, JSON out): `cli/common.py`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from enclavekit.errors import EnclaveKitError

# One module per command group; each exposes register(subparsers).
_GROUPS = (
    "enclavekit.cli.image",  # build-enclave, describe-eif
    "enclavekit.cli.attest",  # attest verify|show
    "enclavekit.cli.enclave",  # run/describe/terminate-enclave(s), console, vsock-proxy
    "enclavekit.cli.local",  # local start|stop|status|ca, cdk
    "enclavekit.cli.deploy",  # up, verify
    "enclavekit.cli.lint",  # lint
    "enclavekit.cli.demo",  # demo (what `make demo` runs)
    "enclavekit.cli.agent",  # parent-agent (the real parent provisions its enclave)
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line with exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(groups: Sequence[str] = _GROUPS) -> argparse.ArgumentParser:
    """The parser of the given command groups (all by default; the agent bundle: only
    `enclavekit.cli.agent`, so it carries no other part)."""
    parser = _Parser(prog="enclavekit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version="enclavekit 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in groups:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None, *, groups: Sequence[str] = _GROUPS) -> int:
    parser = build_parser(groups)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except EnclaveKitError as exc:
        print(f"enclavekit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("enclavekit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `enclavekit verify --json | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def run() -> None:
    sys.exit(main())
