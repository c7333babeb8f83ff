"""`enclavekit parent-agent`: provision the enclave of a real EC2 parent (the systemd unit runs it).

Reads the host.json the user data writes (the host Metadata with intrinsics resolved, plus the
region), takes the instance role's credentials from IMDSv2, fetches the certificate bundle and
the sealed secrets, and sends them to the enclave over AF_VSOCK port 5005; then re-syncs every
`--interval` seconds and on SIGHUP (`systemctl reload`). `--once` provisions once and exits.
Exit status: 0 provisioned, 1 not provisioned (IMDS, role, AWS or the enclave said no), 2 bad
config or arguments. Logs go to stderr (the journal) and never contain credentials or
ciphertext; botocore is held at WARNING because its DEBUG output contains the session token.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from enclavekit.errors import InvalidInput

log = logging.getLogger("enclavekit.agent")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (> 0), got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds (> 0), got {text!r}")
    return value


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _build(args: argparse.Namespace) -> tuple[Any, int]:
    from enclavekit import agent
    from enclavekit.transport import PARENT_CID, EmulatedVsock, open_vsock

    spec = agent.load_host_json(args.config)
    creds = agent.ImdsCredentials(args.imds_endpoint)
    region = args.region or spec.get("region") or creds.region()
    # A Nitro parent's /dev/vsock, or the emulated one a local host names in
    # /run/enclavekit/vsock (so the same unit line runs in both).
    vsock = EmulatedVsock(args.vsock_root, PARENT_CID) if args.vsock_root else open_vsock()
    parent = agent.ParentAgent(
        spec,
        region=region,
        credentials=creds,
        vsock=vsock,
        kms_proxy_port=args.kms_proxy_port,
        where=f"host config {args.config}",
    )
    cid = args.enclave_cid if args.enclave_cid is not None else parent.config.cid
    if cid < 4:
        raise InvalidInput(f"--enclave-cid: expected an enclave CID >= 4, got {cid}")
    return parent, cid


def _once(parent: Any, cid: int, timeout: float) -> int:
    """One provisioning; an enclave still booting (nothing on port 5005 yet) is waited for."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = parent.provision_once(cid)
            break
        except (OSError, EOFError) as exc:
            if time.monotonic() >= deadline:
                log.error("enclave CID %d port 5005: %s (waited %.0f s)", cid, exc, timeout)
                return 1
            time.sleep(1.0)
    (log.info if result.outcome == "provisioned" else log.error)("%s", result.describe())
    return 0 if result.outcome == "provisioned" else 1


def _run(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level)
    parent, cid = _build(args)
    parent.credentials.credentials()  # no IMDS, no role: one line and exit 1 before looping
    log.info(
        "parent agent: enclave CID %d, region %s, certificate %s, %d secret(s)",
        cid,
        parent.region,
        parent.config.certificate_arn or "none",
        len(parent.config.secrets),
    )
    if args.once:
        return _once(parent, cid, args.wait)
    stop, resync = threading.Event(), threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            log.info("SIGHUP: re-provisioning now")
        else:
            stop.set()
        resync.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    last: list[str] = []

    def _on_state(result: Any) -> None:
        line = result.describe()
        if result.outcome == "provisioned" or [line] != last:
            (log.warning if result.outcome in ("error", "refused") else log.info)("%s", line)
        last[:] = [line]

    parent.sync_loop(stop, resync, _on_state, cid=cid, slow=args.interval)
    log.info("parent agent stopped")
    return 0


def register(sub: Any) -> None:
    """Add `parent-agent` to the top-level parser."""
    from enclavekit.agent import IMDS_ENDPOINT, SYNC_SLOW_S
    from enclavekit.contract import HOST_CONFIG_PATH

    p = sub.add_parser(
        "parent-agent",
        help="provision this EC2 parent's enclave (credentials, certificate, secrets)",
        description="Run on a Nitro Enclaves parent: hand the enclave the instance role's "
        "credentials (IMDSv2), the ACM certificate bundle and the sealed secrets over vsock, "
        "and keep them fresh. Exit: 0 ok, 1 not provisioned, 2 bad config.",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=Path(HOST_CONFIG_PATH),
        help=f"the host JSON the user data writes (default {HOST_CONFIG_PATH})",
    )
    p.add_argument(
        "--enclave-cid",
        type=_positive,
        default=None,
        help="the enclave's vsock CID (default: enclave.cid of the config)",
    )
    p.add_argument(
        "--once", action="store_true", help="provision once and exit (0 provisioned, 1 not)"
    )
    p.add_argument(
        "--wait",
        type=_seconds,
        default=120.0,
        help="with --once: how long to wait for the enclave's port 5005 (default 120)",
    )
    p.add_argument(
        "--interval",
        type=_seconds,
        default=SYNC_SLOW_S,
        help=f"re-sync interval in seconds (default {SYNC_SLOW_S:.0f})",
    )
    p.add_argument(
        "--region",
        default=None,
        help="AWS region (default: region of the config, else IMDS placement/region)",
    )
    p.add_argument(
        "--kms-proxy-port",
        type=_positive,
        default=None,
        help="the parent's vsock-proxy port to KMS (default: the config's, else 8000)",
    )
    p.add_argument(
        "--imds-endpoint",
        default=IMDS_ENDPOINT,
        help=f"instance metadata service (default {IMDS_ENDPOINT}; IPv6: http://[fd00:ec2::254])",
    )
    p.add_argument(
        "--vsock-root",
        type=Path,
        default=None,
        help="emulator/testing: emulated vsock directory (parent CID 3) instead of AF_VSOCK",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log level (default INFO)",
    )
    p.set_defaults(handler=_run)
