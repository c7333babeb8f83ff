"""`enclavekit local start|stop|status|ca` and `enclavekit cdk ARGS...`.

Handlers reach local_backend through `enclavekit.cli.backend` (imported on first use): the CLI
is the one place that calls every part.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from enclavekit.cli import backend
from enclavekit.cli.common import add_state_dir, command
from enclavekit.contract import ENDPOINT_PORT as DEFAULT_PORT


def _state_arg(p: argparse.ArgumentParser) -> None:
    add_state_dir(
        p, help="where the endpoint keeps endpoint.json, logs and its CA (default .enclavekit)"
    )


def _start(args: argparse.Namespace) -> int:
    """start the endpoint (detached, 127.0.0.1 only)"""
    server = backend.server()
    already = server.status(args.state_dir).running
    info = server.start(args.port, args.state_dir, iam=args.iam)
    verb = "already running" if already else "started"
    print(
        f"local endpoint {verb}: {info.endpoint} (pid {info.pid}, state {info.state_dir}, "
        f"IAM enforcement {info.iam})"
    )
    if already and info.iam != args.iam:
        print(f"note: IAM enforcement is {info.iam}; stop it first to change it", file=sys.stderr)
    if already and info.port != args.port:
        print(
            f"note: it listens on port {info.port}, not {args.port}; stop it first to move it",
            file=sys.stderr,
        )
    return 0


def _user_data_host_line(h: dict) -> str:
    """A host booted from its user data: boot result, enclaves, forwarded ports."""
    boot = h["user_data"] if not h.get("boot_error") else f"FAILED: {h['boot_error']}"
    enclaves = ", ".join(
        f"{e['EnclaveID']} (CID {e['EnclaveCID']}, {e['State']})" for e in h.get("enclaves", [])
    )
    ports = ", ".join(f"{p['port']} -> 127.0.0.1:{p['host_port']}" for p in h.get("ports", []))
    agent = ""
    if h.get("domain"):  # our parent agent runs here: its service and the enclave's word
        agent = f"  https://{h['domain']}  provisioned: {'yes' if h['provisioned'] else 'no'}"
    if h.get("exit_reason"):
        agent += f"  enclave {h['enclave_id']} {h.get('enclave_state')}: {h['exit_reason']}"
    return (
        f"  {h['stack'] or '-'}/{h['host'] or '-'}  {h['instance_id']}  user data: {boot}"
        f"  enclaves: {enclaves or 'none'}  ports: {ports or 'none'}{agent}"
    )


def _running_enclave(h: dict) -> bool:
    return any(e.get("State") == "RUNNING" for e in h.get("enclaves", []))


def _stop(args: argparse.Namespace) -> int:
    """stop the endpoint and everything it started"""
    stopped = backend.server().stop(args.state_dir)
    print("local endpoint stopped" if stopped else "local endpoint was not running")
    return 0


def _status(args: argparse.Namespace) -> int:
    """endpoint, state dir, pid, enclaves"""
    st = backend.server().status(args.state_dir)
    if args.json:
        print(json.dumps(st.to_json(), indent=2, sort_keys=True))
        return 0 if st.running else 1
    if not st.running:
        print(f"local endpoint: not running (state {st.state_dir})")
        return 1
    print(f"local endpoint: running at {st.endpoint} (pid {st.pid}, since {st.started})")
    print(f"state dir:      {st.state_dir}")
    print(f"IAM enforcement: {st.extra.get('iam', 'on')}")
    hosts = st.extra.get("enclave_hosts", [])
    print(f"enclave hosts:  {len(hosts)}")
    for h in hosts:
        print(_user_data_host_line(h))
    stopped = [h for h in hosts if h.get("domain") and not _running_enclave(h)]
    if stopped:
        print("an enclave is not running: `enclavekit up` starts it again")
    return 0


def _ca(args: argparse.Namespace) -> int:
    """print the local CA root (PEM) that issues ACM certificates"""
    sys.stdout.write(backend.server().ca_pem(args.state_dir).decode())
    return 0


def _cdk(args: argparse.Namespace) -> int:
    """the project's cdk CLI aimed at the local endpoint

    Run cdk ARGS... against the running local endpoint; real AWS credentials, profiles and
    endpoints are removed from its environment.
    """
    # cdk's stdout passes through untouched (`cdk synth > template.yaml` works); its stderr
    # too, except that a Python traceback of the app becomes one line (`--verbose`: kept), and
    # a construct error exits 2. Every process runs behind the egress guard (local_backend.cdk).
    from enclavekit.cdk_errors import TracebackFilter

    cdk_args: list[str] = list(args.cdk_args)
    if cdk_args and cdk_args[0] == "--":
        cdk_args = cdk_args[1:]
    shown = TracebackFilter(verbose=args.verbose)

    def show(line: str) -> None:
        sys.stderr.writelines(shown.feed(line))
        sys.stderr.flush()

    code = backend.stream_cdk(cdk_args, state_dir=args.state_dir, on_stderr=show)
    sys.stderr.writelines(shown.finish())
    if code != 0 and shown.error is not None:
        if not args.verbose:
            print("(the full traceback: enclavekit cdk --verbose ...)", file=sys.stderr)
        return 2
    return code


def register(sub: Any) -> None:
    """Add this group's commands to the top-level parser."""
    local = sub.add_parser("local", help="the local AWS endpoint (moto + enclavekit extensions)")
    lsub = local.add_subparsers(
        dest="local_command", metavar="SUBCOMMAND", parser_class=type(local)
    )
    lsub.required = True

    p = command(lsub, "start", _start)
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument(
        "--iam",
        choices=("on", "off"),
        default="on",
        help="IAM enforcement of every non-KMS call as AWS does it (default on); off: "
        "moto's unchecked behaviour (KMS always authorizes)",
    )
    _state_arg(p)

    p = command(lsub, "stop", _stop)
    _state_arg(p)

    p = command(lsub, "status", _status)
    p.add_argument("--json", action="store_true")
    _state_arg(p)

    p = command(lsub, "ca", _ca)
    _state_arg(p)

    p = command(sub, "cdk", _cdk)
    _state_arg(p)
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show the app's full Python traceback (default: one line, exit 2)",
    )
    p.add_argument("cdk_args", nargs=argparse.REMAINDER, metavar="ARGS")
