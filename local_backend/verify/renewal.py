"""renewal (opt-in, ACM agent hosts): ACM renews the certificate and nginx serves the new one
with no HTTPS request failing while the agent puts it in place.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from enclavekit.errors import CheckFailed
from local_backend.verify.acm_host import (
    acm_conf,
    acm_tokens,
    associated_certificates,
    https_get,
    https_port,
    journal,
    served_token,
)
from local_backend.verify.processes import endpoint_admin
from local_backend.verify.report import Check, not_applicable
from local_backend.verify.userdata import UserDataHost

RENEWAL = "renewal"  # opt-in: it waits for the agent's sync (acm.yaml sync_interval_secs)


RENEWAL_MARGIN_S = 60.0  # past sync_interval_secs: S3 fetch, UpdateToken, nginx's restart


RENEWAL_SETTLE_S = 3.0  # requests kept up after the renewed certificate is first served


REQUEST_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Request:
    at: float  # seconds after the renewal (negative: before it)
    leaf: bytes | None  # the certificate served (DER), None when the request failed
    error: str | None


class HttpsClient(threading.Thread):
    """HTTPS requests to nginx until stopped, one fresh connection (full handshake) each,
    verified against the local CA for the domain: a client of the site during the renewal."""

    def __init__(self, port: int, ctx: Any, domain: str) -> None:
        super().__init__(daemon=True)
        self.port, self.ctx, self.domain = port, ctx, domain
        self.zero = time.monotonic()
        self.results: list[Request] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            at = time.monotonic() - self.zero
            try:
                head, leaf = https_get(self.port, self.ctx, self.domain, REQUEST_TIMEOUT_S)
                error = None if head.startswith(b"HTTP/1.1 200") else f"HTTP {head[9:12]!r}"
                self.results.append(Request(at, leaf, error))
            except (OSError, ConnectionError) as exc:  # ssl.SSLError is an OSError
                self.results.append(Request(at, None, f"{type(exc).__name__}: {exc}"))
            self.halt.wait(0.05)

    def stop(self) -> list[Request]:
        self.halt.set()
        self.join(REQUEST_TIMEOUT_S + 5)
        return list(self.results)


def judge_renewal(
    results: Sequence[Request], old: bytes, new: bytes, waited: float, why_late: str
) -> tuple[bool, str]:
    """Passed when the renewed certificate was served and no request failed or got another."""
    first_new = next((r.at for r in results if r.leaf == new), None)
    failed = [r for r in results if r.error is not None]
    other = [r for r in results if r.error is None and r.leaf not in (old, new)]
    if first_new is None:
        return False, (
            f"the renewed certificate was not served within {waited:.0f} s of the renewal "
            f"({why_late}); {len(results)} requests, {len(failed)} failed"
        )
    if other:
        return False, f"{len(other)} requests got a certificate that is neither the old nor new"
    if failed:
        shown = "; ".join(dict.fromkeys(r.error or "" for r in failed))[:240]
        return False, (
            f"{len(failed)} of {len(results)} HTTPS requests failed while the agent put the "
            f"renewed certificate in place, from +{failed[0].at:.1f} s to +{failed[-1].at:.1f} s "
            f"after the renewal ({shown}); the new certificate was served from "
            f"+{first_new:.1f} s"
        )
    return True, (
        f"the renewed certificate was served from +{first_new:.1f} s after the renewal; "
        f"{len(results)} HTTPS requests throughout, none failed"
    )


def check_acm_renewal(h: UserDataHost, token: Any, max_wait: float | None = None) -> Check:
    """ACM renews the certificate (a new certificate and key under the same ARN, the
    association's S3 object re-published, on the local endpoint); a client keeps making HTTPS
    requests to nginx while the agent, at its next sync, updates the token and nginx. Passes
    when the new certificate is served and no request failed. verify waits for the sync
    interval acm.yaml sets (AWS's agent reads it; verify shortens nothing)."""
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from local_backend import server

    start = time.monotonic()
    if token.source.kind != "Acm":
        return Check(RENEWAL, False, f"could not check: token {token.label} is not ACM-sourced")
    interval = acm_conf(h).options.sync_interval_secs
    wait = interval + RENEWAL_MARGIN_S if max_wait is None else max_wait
    arn = token.source.certificate_arn
    domain = h.client("acm").describe_certificate(CertificateArn=arn)["Certificate"]["DomainName"]
    ctx = ssl.create_default_context(cadata=server.ca_pem(h.state_dir).decode())
    port = https_port(h)
    # serving now, else could not check
    _head, old = https_get(port, ctx, domain, REQUEST_TIMEOUT_S)
    mark = len(journal(h))
    client = HttpsClient(port, ctx, domain)
    client.start()
    time.sleep(1.0)  # requests before the renewal: the site as its users see it
    try:
        req = {"certificate_arn": arn, "account_id": h.account_id, "region": h.region}
        done, renewed = endpoint_admin(h.endpoint, server.RENEW_PATH, req, h.state_dir)
        if not done:
            raise CheckFailed(f"{server.RENEW_PATH}: {renewed.get('error')}")
        client.zero = time.monotonic()
        new = x509.load_pem_x509_certificate(renewed["certificate"].encode()).public_bytes(
            serialization.Encoding.DER
        )
        deadline = client.zero + wait
        while time.monotonic() < deadline and not any(r.leaf == new for r in client.results):
            time.sleep(0.2)
        if any(r.leaf == new for r in client.results):
            time.sleep(RENEWAL_SETTLE_S)
    finally:
        results = client.stop()
    lines = [x.split("| ", 1)[-1].strip() for x in journal(h)[mark:].splitlines()]
    said = [x for x in lines if any(w in x for w in ("DB change", "Restart", "rror", "Broken"))]
    agent = " | ".join(said or lines[-2:])[:300]
    why_late = (
        f"acm.yaml sync_interval_secs {interval}: the agent looks for a renewal that often, "
        f"and verify waited that plus {RENEWAL_MARGIN_S:.0f} s"
        if max_wait is None
        else f"verify waited {wait:.0f} s"
    )
    ok, detail = judge_renewal(results, old, new, wait, why_late)
    detail += f"; the agent: {agent or '(nothing in its journal)'}"
    return Check(RENEWAL, ok, detail, round(time.monotonic() - start, 3))


def renewal_checks(h: UserDataHost) -> list[Check]:
    """The renewal probe where the host runs the ACM agent; N/A elsewhere."""
    tokens = acm_tokens(h)
    if not tokens:
        return [not_applicable(RENEWAL, "the host runs no ACM for Nitro Enclaves agent")]
    return [check_acm_renewal(h, served_token(tokens, associated_certificates(h)))]
