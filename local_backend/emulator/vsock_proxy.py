"""vsock-proxy for the emulated parent: AWS's arguments, its allowlist, and a local resolver.

Like AWS's `vsock-proxy LOCAL_PORT REMOTE_ADDR REMOTE_PORT [--config FILE] [-w N]`, it listens on
the parent's vsock port (here: emulated vsock, CID 3) and relays each connection over TCP to
REMOTE_ADDR:REMOTE_PORT, refusing to start unless the allowlist file (`allowlist: [{address,
port}]`, default /etc/nitro_enclaves/vsock-proxy.yaml) names exactly that address and port.

The emulator's resolver (why the bytes never reach AWS): an AWS service host
`<service>.<region>.amazonaws.com[.cn]` (e.g. `kms.us-east-1.amazonaws.com:443`) is mapped to
the local endpoint, byte for byte: port 443 to its TLS front (`tls_endpoint` of
`<state>/endpoint.json`, or $ENCLAVEKIT_LOCAL_TLS_ENDPOINT), which presents a certificate for
that host name from the endpoint's own CA, so TLS runs end to end between the enclave and the
endpoint exactly as it runs between an enclave and KMS on AWS, and this proxy sees only
ciphertext; any other port to the plain-HTTP endpoint (`--local-endpoint URL`, else
$ENCLAVEKIT_LOCAL_ENDPOINT, else `endpoint` of endpoint.json). Any other remote must
be a loopback address (127.0.0.0/8, ::1, localhost); anything else is refused, so nothing relayed
by the emulator can leave this machine. The allowlist check happens first, on the name given.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from enclavekit import yamlsafe
from enclavekit.errors import EmulatorError, InvalidInput
from enclavekit.localenv import INSTANCE_SOURCE_ADDRESS
from enclavekit.transport import ConnectionServer, EmulatedVsock, VsockTransport, pump
from local_backend.endpoint_file import EndpointInfo, read_endpoint

DEFAULT_CONFIG = Path("/etc/nitro_enclaves/vsock-proxy.yaml")
ENDPOINT_ENV = "ENCLAVEKIT_LOCAL_ENDPOINT"
TLS_ENDPOINT_ENV = "ENCLAVEKIT_LOCAL_TLS_ENDPOINT"
DEFAULT_WORKERS = 4
MAX_CONFIG_BYTES = 64 * 1024  # AWS's file is a few lines; anything huge is not a config
_AWS_HOST = re.compile(
    r"^(?P<service>[a-z0-9-]+)\.(?P<region>[a-z]{2}(?:-gov|-iso[a-z]*)?-[a-z]+-\d+)"
    r"\.amazonaws\.com(?:\.cn)?$"
)
# AWS's shipped default allowlist names kms.<region> and kms-fips.<region> on port 443 for every
# region; without a config file we allow exactly that family.
_DEFAULT_KMS = re.compile(r"^kms(?:-fips)?\.[a-z]{2}(?:-gov)?-[a-z]+-\d+\.amazonaws\.com(?:\.cn)?$")


@dataclass(frozen=True)
class AllowEntry:
    address: str
    port: int


@dataclass(frozen=True)
class Allowlist:
    """The `allowlist:` of a vsock-proxy config (None entries = AWS's default KMS family)."""

    entries: tuple[AllowEntry, ...] | None
    source: str

    @classmethod
    def load(cls, path: str | Path | None) -> Allowlist:
        """Read `path`, else the default config file if present, else AWS's default list."""
        if path is None:
            if not DEFAULT_CONFIG.is_file():
                return cls(None, "built-in default (kms and kms-fips endpoints, port 443)")
            path = DEFAULT_CONFIG
        p = Path(path)
        try:
            raw = p.read_bytes()
        except OSError as exc:
            raise InvalidInput(
                f"vsock-proxy --config {p}: cannot be read ({exc.strerror})"
            ) from None
        if len(raw) > MAX_CONFIG_BYTES:
            raise InvalidInput(
                f"vsock-proxy --config {p}: expected at most {MAX_CONFIG_BYTES} bytes of YAML, "
                f"found {len(raw)}"
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"vsock-proxy --config {p}: expected UTF-8 YAML text") from None
        doc = yamlsafe.load(text, what=f"vsock-proxy --config {p}")
        items = doc.get("allowlist") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise InvalidInput(
                f"vsock-proxy --config {p}: expected a mapping with an 'allowlist' list, "
                f"found {type(doc).__name__}"
            )
        entries = []
        for i, item in enumerate(items):
            if (
                not isinstance(item, dict)
                or not isinstance(item.get("address"), str)
                or isinstance(item.get("port"), bool)
                or not isinstance(item.get("port"), int)
            ):
                raise InvalidInput(
                    f"vsock-proxy --config {p}: allowlist[{i}] expected "
                    f"{{address: <host>, port: <int>}}, found {item!r}"
                )
            entries.append(AllowEntry(item["address"].lower(), item["port"]))
        return cls(tuple(entries), str(p))

    def allows(self, address: str, port: int) -> bool:
        addr = address.lower()
        if self.entries is None:
            return port == 443 and bool(_DEFAULT_KMS.match(addr))
        return any(e.address == addr and e.port == port for e in self.entries)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_endpoint(explicit: str | None, state_dir: Path | None) -> str | None:
    """The local endpoint URL: explicit, else $ENCLAVEKIT_LOCAL_ENDPOINT, else endpoint.json."""
    return _endpoint_url(explicit, ENDPOINT_ENV, state_dir, lambda info: info.endpoint)


def local_tls_endpoint(explicit: str | None, state_dir: Path | None) -> str | None:
    """The endpoint's TLS front URL: explicit, else $ENCLAVEKIT_LOCAL_TLS_ENDPOINT, else
    `tls_endpoint` of endpoint.json."""
    return _endpoint_url(explicit, TLS_ENDPOINT_ENV, state_dir, lambda info: info.tls_endpoint)


def _endpoint_url(
    explicit: str | None,
    env: str,
    state_dir: Path | None,
    pick: Callable[[EndpointInfo], str | None],
) -> str | None:
    if explicit:
        return explicit
    if os.environ.get(env):
        return os.environ[env]
    if state_dir is not None:
        with contextlib.suppress(InvalidInput):
            info = read_endpoint(state_dir)
            return pick(info) if info is not None else None
    return None


def resolve(
    address: str, port: int, endpoint: str | None, tls_endpoint: str | None = None
) -> tuple[str, int]:
    """Where the emulator really connects for (address, port); see the module docstring."""
    if _AWS_HOST.match(address.lower()):
        target, what = (tls_endpoint, "TLS front") if port == 443 else (endpoint, "endpoint")
        if not target:
            raise EmulatorError(
                f"vsock-proxy: {address}:{port} maps to the local endpoint's {what}, but none "
                f"is known (run `enclavekit local start`, or set {TLS_ENDPOINT_ENV} / "
                f"{ENDPOINT_ENV})"
            )
        parts = urlsplit(target)
        host = parts.hostname or ""
        if not _is_loopback(host):
            raise InvalidInput(
                f"vsock-proxy local endpoint: expected a loopback URL, found {target!r}"
            )
        return host, parts.port or (443 if parts.scheme == "https" else 80)
    if _is_loopback(address):
        return address, port
    raise EmulatorError(
        f"vsock-proxy: remote {address}:{port} is neither an AWS service host (mapped to the "
        "local endpoint) nor a loopback address; the emulator never relays off this machine"
    )


class VsockProxy(ConnectionServer):
    """Relays parent vsock port `local_port` to the resolved TCP target, `workers` at a time."""

    thread_name = "vsock-proxy"

    def __init__(
        self,
        local_port: int,
        remote_addr: str,
        remote_port: int,
        *,
        allowlist: Allowlist,
        vsock: VsockTransport,
        endpoint: str | None = None,
        tls_endpoint: str | None = None,
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        if not 1 <= remote_port <= 65535:
            raise InvalidInput(f"vsock-proxy remote port: expected 1..65535, found {remote_port}")
        if workers < 1:
            raise InvalidInput(f"vsock-proxy -w: expected a positive integer, found {workers}")
        if not allowlist.allows(remote_addr, remote_port):
            raise InvalidInput(
                f"vsock-proxy: {remote_addr}:{remote_port} is not in the allowlist "
                f"({allowlist.source}): the given address and port are not allowed"
            )
        self.target = resolve(remote_addr, remote_port, endpoint, tls_endpoint)
        self.remote = (remote_addr, remote_port)
        self.local_port = local_port
        super().__init__(vsock.listen(local_port, backlog=64))
        self._path = (
            vsock.path(vsock.own_cid, local_port) if isinstance(vsock, EmulatedVsock) else None
        )
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vsock-proxy")

    @classmethod
    def for_state_dir(
        cls,
        state_dir: Path,
        local_port: int,
        remote_addr: str,
        remote_port: int,
        *,
        config: str | Path | None = None,
        endpoint: str | None = None,
        tls_endpoint: str | None = None,
        workers: int = DEFAULT_WORKERS,
    ) -> VsockProxy:
        """A proxy on the emulated parent (CID 3) of `state_dir`."""
        (state_dir / "vsock" / "3").mkdir(parents=True, exist_ok=True)
        return cls(
            local_port,
            remote_addr,
            remote_port,
            allowlist=Allowlist.load(config),
            vsock=EmulatedVsock(state_dir / "vsock", 3),
            endpoint=local_endpoint(endpoint, state_dir),
            tls_endpoint=local_tls_endpoint(tls_endpoint, state_dir),
            workers=workers,
        )

    def dispatch(self, conn: socket.socket, addr: object) -> None:
        self._pool.submit(self.serve, conn, addr)

    def serve(self, conn: socket.socket, addr: object) -> None:
        with conn:
            try:
                # from the instances' address: the endpoint refuses the enclave its constant
                # keys (an IPv6 target keeps the default source)
                source = None if ":" in self.target[0] else (INSTANCE_SOURCE_ADDRESS, 0)
                upstream = socket.create_connection(self.target, timeout=10, source_address=source)
            except OSError:
                return
            with upstream:
                upstream.settimeout(None)
                pump(conn, upstream)

    def stop(self) -> None:
        super().stop()
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()
        self._pool.shutdown(wait=False, cancel_futures=True)
