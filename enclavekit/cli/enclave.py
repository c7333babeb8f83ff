"""`enclavekit` enclave verbs: run-enclave, describe-enclaves, terminate-enclave, console,
vsock-proxy — nitro-cli's arguments and JSON, served by the local enclave emulator."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from enclavekit.cli import backend
from enclavekit.cli.common import add_state_dir, command, print_json
from enclavekit.errors import InvalidInput


def _print_json(obj: Any) -> None:
    print_json(obj, indent=4)  # nitro-cli's indentation


def _stream_console(manager: Any, enclave_id: str, timeout: float | None) -> None:
    out = sys.stdout.buffer
    for chunk in manager.console(enclave_id, disconnect_timeout=timeout):
        out.write(chunk)
        out.flush()


def _run(args: argparse.Namespace) -> int:
    """boot an enclave from an EIF (emulated nitro-cli)

    Start an enclave from an EIF in the local emulator; returns once it runs. Output: nitro-cli's
    run-enclave JSON.
    """
    manager = backend.enclave_manager(args.state_dir)
    result = manager.run_enclave(
        args.eif_path,
        args.cpu_count,
        args.memory,
        cid=args.enclave_cid,
        debug_mode=args.debug_mode,
        name=args.enclave_name,
        parent_role_arn=args.parent_role_arn,
        parent_instance_id=args.parent_instance_id,
    )
    print(
        f"Started enclave with enclave-cid: {result['EnclaveCID']}, "
        f"memory: {result['MemoryMiB']} MiB, cpu-ids: {result['CPUIDs']}",
        file=sys.stderr,
    )
    _print_json(result)
    if args.attach_console:
        if not args.debug_mode:
            raise InvalidInput("--attach-console: expected --debug-mode as well, found it absent")
        _stream_console(manager, result["EnclaveID"], None)
    return 0


def _describe(args: argparse.Namespace) -> int:
    """list enclaves as JSON (nitro-cli shape)"""
    _print_json(backend.enclave_manager(args.state_dir).describe())
    return 0


def _terminate(args: argparse.Namespace) -> int:
    """terminate an enclave, or all of them"""
    manager = backend.enclave_manager(args.state_dir)
    if args.all:
        for item in manager.terminate_all():
            _print_json(item)
        return 0
    _print_json(manager.terminate(args.enclave_id))
    return 0


def _console(args: argparse.Namespace) -> int:
    """stream a debug-mode enclave's console"""
    print(f"Connecting to the console for enclave {args.enclave_id}...", file=sys.stderr)
    _stream_console(
        backend.enclave_manager(args.state_dir), args.enclave_id, args.disconnect_timeout
    )
    return 0


def _vsock_proxy(args: argparse.Namespace) -> int:
    """relay a parent vsock port to an allowed remote

    AWS vsock-proxy on the emulated parent (CID 3): LOCAL_PORT REMOTE_ADDR REMOTE_PORT, checked
    against the allowlist.
    """
    proxy = backend.vsock_proxy(
        args.state_dir,
        args.local_port,
        args.remote_addr,
        args.remote_port,
        config=args.config,
        endpoint=args.local_endpoint,
        workers=args.num_workers,
    )
    host, port = proxy.target
    print(
        f"vsock-proxy: vsock port {args.local_port} (CID 3) -> {args.remote_addr}:"
        f"{args.remote_port} (emulator: {host}:{port})",
        file=sys.stderr,
        flush=True,
    )
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    proxy.start()
    try:
        done.wait()
    finally:
        proxy.stop()
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, found {text!r}") from None
    return value


def _state(p: argparse.ArgumentParser) -> None:
    add_state_dir(
        p,
        default=None,
        help="emulator state directory (default $ENCLAVEKIT_STATE_DIR or .enclavekit)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's commands to the top-level parser."""
    run = command(sub, "run-enclave", _run)
    run.add_argument("--eif-path", required=True, help="the enclave image file")
    run.add_argument("--cpu-count", required=True, type=_positive, help="number of vCPUs")
    run.add_argument("--memory", required=True, type=_positive, help="memory in MiB (>= 64)")
    run.add_argument(
        "--enclave-cid",
        type=_positive,
        default=None,
        help="vsock CID (>= 4; default: auto from 16)",
    )
    run.add_argument("--enclave-name", default=None, help="name (default: the image name)")
    run.add_argument(
        "--debug-mode",
        action="store_true",
        help="debug mode: console enabled, PCR0/1/2/8 zero in attestations",
    )
    run.add_argument(
        "--attach-console",
        action="store_true",
        help="stream the console after start (debug mode only)",
    )
    run.add_argument(
        "--parent-role-arn",
        default=None,
        help="emulator: the parent's IAM role ARN (PCR3; default none)",
    )
    run.add_argument(
        "--parent-instance-id",
        default=None,
        help="emulator: the parent's instance id (PCR4; default per state dir)",
    )
    _state(run)

    desc = command(sub, "describe-enclaves", _describe)
    _state(desc)

    term = command(sub, "terminate-enclave", _terminate)
    which = term.add_mutually_exclusive_group(required=True)
    which.add_argument("--enclave-id", help="the EnclaveID to terminate")
    which.add_argument("--all", action="store_true", help="terminate every enclave")
    _state(term)

    con = command(sub, "console", _console)
    con.add_argument("--enclave-id", required=True, help="the EnclaveID")
    con.add_argument(
        "--disconnect-timeout", type=float, default=None, help="stop after this many seconds"
    )
    _state(con)

    proxy = command(sub, "vsock-proxy", _vsock_proxy)
    proxy.add_argument("local_port", type=_positive, metavar="LOCAL_PORT")
    proxy.add_argument("remote_addr", metavar="REMOTE_ADDR")
    proxy.add_argument("remote_port", type=_positive, metavar="REMOTE_PORT")
    proxy.add_argument(
        "--config",
        default=None,
        help="allowlist YAML (default /etc/nitro_enclaves/vsock-proxy.yaml)",
    )
    proxy.add_argument(
        "-w",
        "--num_workers",
        type=_positive,
        default=4,
        help="connections served at once (default 4)",
    )
    family = proxy.add_mutually_exclusive_group()
    family.add_argument("-4", "--ipv4", action="store_true", help="accepted for compatibility")
    family.add_argument("-6", "--ipv6", action="store_true", help="accepted for compatibility")
    proxy.add_argument(
        "--local-endpoint",
        default=None,
        help="emulator: the local endpoint AWS service hosts map to",
    )
    _state(proxy)
