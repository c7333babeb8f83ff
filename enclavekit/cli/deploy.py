"""`enclavekit up` and `enclavekit verify`: the local deploy loop and its end-to-end proof."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from enclavekit.cli import backend
from enclavekit.cli.common import add_state_dir, command
from enclavekit.contract import ENDPOINT_PORT as DEFAULT_PORT


def _up(args: argparse.Namespace) -> int:
    """start the local endpoint if needed, bootstrap, deploy --all, seal secrets, boot enclaves,
    verify
    """
    loop = backend.up_loop()
    timeouts = {"synth": args.synth_timeout} if args.synth_timeout else None
    result = loop.up(
        args.app,
        state_dir=args.state_dir,
        port=args.port,
        run_verify=not args.no_verify,
        timeouts=timeouts,
        verbose=args.verbose,
    )
    print()
    print(loop.phases_table(result))
    if result.report is not None:
        print()
        print(result.report.table())
    print()
    for line in loop.try_it_lines(Path(args.state_dir).resolve(), result.stacks):
        print(line)
    print(
        f"endpoint {result.endpoint} — stop it with: enclavekit local stop "
        f"--state-dir {args.state_dir}"
    )
    return 0 if result.ok else 1


def _verify(args: argparse.Namespace) -> int:
    """prove every deployed enclave host end to end"""
    report = backend.verify(args.state_dir, stack=args.stack, checks=args.check)
    if args.junit:
        Path(args.junit).write_text(report.to_junit())
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        print()
    else:
        print(report.table())
    return 0 if report.ok else 1


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"expected seconds in (0, 86400], found {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add `up` and `verify`."""
    p = command(sub, "up", _up)
    p.add_argument(
        "--app",
        type=Path,
        default=Path("."),
        help="the CDK app directory (with cdk.json); default: here",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    add_state_dir(p)
    p.add_argument("--no-verify", action="store_true", help="stop after the enclaves are up")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="with a construct error, also the app's full Python traceback",
    )
    p.add_argument(
        "--synth-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="fail the synth phase if the app has not synthesized by then (default 300)",
    )

    v = command(sub, "verify", _verify)
    v.add_argument("--stack", help="only this stack")
    v.add_argument(
        "--check",
        action="append",
        metavar="NAME",
        help="only this check (repeatable): image-pcrs, secret, parent-denied, "
        "nsm-parent-refused, debug-denied, other-image-denied, https, key-not-on-parent; "
        "renewal runs only when named (ACM agent hosts, docs/cli.md)",
    )
    v.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    v.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report")
    add_state_dir(v)
