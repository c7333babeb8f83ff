"""`<state>/endpoint.json`: how to reach a running local endpoint, read in one place.

The endpoint process writes it once bound (local_backend.server) and removes it on a clean
stop; the CLI, the parents, the emulator's vsock-proxy and the tests read it through
`read_endpoint`. Imports: the stdlib and the core only, so any part of the backend can read it
without loading the server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from enclavekit.contract import ENDPOINT_FILE
from enclavekit.errors import InvalidInput

IAM_MODES = ("on", "off")


@dataclass(frozen=True)
class EndpointInfo:
    """What `<state>/endpoint.json` holds: how to reach a running endpoint."""

    endpoint: str
    port: int
    pid: int
    state_dir: str
    started: str
    tls_endpoint: str | None = None  # https://127.0.0.1:P, the TLS front (tls_front.py)
    iam: str = "on"  # IAM enforcement of non-KMS calls: "on" (AWS's behaviour) or "off"

    def __post_init__(self) -> None:
        if self.iam not in IAM_MODES:
            raise InvalidInput(f"endpoint.json: iam must be on or off, found {self.iam!r}")
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise InvalidInput(f"endpoint.json: port must be 1..65535, found {self.port!r}")
        if not isinstance(self.pid, int) or self.pid <= 0:
            raise InvalidInput(f"endpoint.json: pid must be a positive integer, found {self.pid!r}")


def read_endpoint(state_dir: Path) -> EndpointInfo | None:
    """The endpoint.json of `state_dir`, or None when there is none."""
    path = Path(state_dir) / ENDPOINT_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InvalidInput(
            f"{path}: expected the endpoint's JSON file, found unreadable data ({exc})"
        ) from exc
    keys = ("endpoint", "port", "pid", "state_dir", "started")
    try:
        return EndpointInfo(
            **{k: raw[k] for k in keys},
            tls_endpoint=raw.get("tls_endpoint"),
            iam=raw.get("iam", "on"),
        )
    except (KeyError, TypeError) as exc:
        raise InvalidInput(
            f"{path}: expected keys {', '.join(keys)}; missing or wrong: {exc}"
        ) from exc
