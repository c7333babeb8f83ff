"""An ACM for Nitro Enclaves agent host (set-up A) as verify reads it: acm.yaml and its tokens,
the certificates associated with the host role, the agent's nginx stanza and journal, the ACM
enclave's token, and HTTPS requests to the forwarded port 443 — what the TLS checks, the
probes and the renewal probe share.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from enclavekit.errors import CheckFailed
from local_backend.host import control, hooks
from local_backend.host.layout import HostLayout
from local_backend.verify.userdata import UserDataHost, running_enclaves

ACM_CONFIG = "/etc/nitro_enclaves/acm.yaml"
ACM_UNIT = "nitro-enclaves-acm.service"
ACM_READY_TIMEOUT_S = 120.0  # boot of the ACM enclave + AddToken (attested KMS) + nginx start
HTTPS_PORT = 443


def host_path(h: UserDataHost, path: str) -> Path:
    """A path of the host's root filesystem, seen from the machine."""
    return Path(f"/proc/{h.host.get('init_pid')}/root") / path.lstrip("/")


def acm_conf(h: UserDataHost) -> Any:
    """The host's acm.yaml, parsed as the agent parses it."""
    from local_backend.host import acm_config

    return acm_config.parse(host_path(h, ACM_CONFIG).read_text())


def acm_tokens(h: UserDataHost) -> list[Any]:
    """The ACM-sourced tokens of the host's acm.yaml that target an nginx stanza."""
    try:
        conf = acm_conf(h)
    except OSError:
        return []
    return [t for t in conf.tokens if t.source.kind == "Acm" and t.target is not None]


def association(h: UserDataHost, certificate_arn: str) -> dict[str, Any] | None:
    """The association of `certificate_arn` with the host role (bucket, object key, KMS key),
    None when the certificate is not associated with it."""
    roles = h.client("ec2").get_associated_enclave_certificate_iam_roles(
        CertificateArn=certificate_arn
    )["AssociatedRoles"]
    return next((r for r in roles if r.get("AssociatedRoleArn") == h.role_arn), None)


def associated_certificates(h: UserDataHost) -> list[str]:
    """ACM certificates associated with the host role (ACM for Nitro Enclaves)."""
    summaries = h.client("acm").list_certificates().get("CertificateSummaryList", [])
    return [c["CertificateArn"] for c in summaries if association(h, c["CertificateArn"])]


def served_token(tokens: Sequence[Any], certificates: Sequence[str]) -> Any:
    """The token that serves one of the role's associated certificates, else the first."""
    return next((t for t in tokens if t.source.certificate_arn in certificates), tokens[0])


def association_key(h: UserDataHost, token: Any) -> str | None:
    """The KMS key id the association's object is encrypted under (None: an S3 source, whose
    key the object does not name)."""
    if token.source.kind != "Acm":
        return None
    mine = association(h, token.source.certificate_arn)
    return str(mine["EncryptionKmsKeyId"]).rsplit("/", 1)[-1] if mine else None


def wait_for_stanza(
    h: UserDataHost, token: Any, timeout: float = ACM_READY_TIMEOUT_S
) -> str | None:
    """Wait until the agent has provisioned the token (its stanza exists): the agent does that
    after the user data has run. None when it is there; else why not, with the journal's end."""
    path = host_path(h, token.target.path)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            tail = " | ".join(x.strip() for x in journal(h).strip().splitlines()[-4:])
            return (
                f"the ACM agent wrote no {token.target.path} for token {token.label} within "
                f"{timeout:.0f} s; {ACM_UNIT}: {tail or '(no journal)'}"
            )
        time.sleep(0.5)
    return None


def stanza_pin(h: UserDataHost, token: Any) -> str:
    """The PIN the agent wrote into the token's nginx stanza (`...?pin-value=<pin>"`)."""
    text = host_path(h, token.target.path).read_text()
    if "pin-value=" not in text:
        raise CheckFailed(f"{token.target.path}: no pin-value in the agent's stanza")
    return text.split("pin-value=", 1)[1].split('"', 1)[0]


def acm_enclave(h: UserDataHost) -> dict[str, Any]:
    if not h.enclaves:  # outside verify's run (benches): ask the host
        h.enclaves = hooks.host_enclaves(h.layout)
    running = running_enclaves(h)
    if len(running) != 1:
        raise CheckFailed(f"expected the one ACM enclave RUNNING, found {len(running)}")
    return running[0]


def token_signatures(h: UserDataHost, token: Any, pin: str) -> int:
    """The token's signature count (DescribeToken over the ACM enclave's RPC port, as the
    agent asks it), which grows by one per private-key operation done in the enclave."""
    from local_backend.acm_enclave import RPC_PORT
    from local_backend.acm_enclave.p11ne import rpc

    cid = int(acm_enclave(h)["EnclaveCID"])
    with h.vsock.connect(cid, RPC_PORT) as sock:
        sock.settimeout(10)
        answer = rpc.call(sock, rpc.Request("DescribeToken", {"label": token.label, "pin": pin}))
    if "Ok" not in answer:
        raise CheckFailed(f"DescribeToken {token.label}: {answer.get('Err')}")
    return int(answer["Ok"]["TokenDescription"]["signatures"])


def https_port(h: UserDataHost) -> int:
    port = h.forwarded_port(HTTPS_PORT)
    if port is not None:
        return port
    raise CheckFailed(
        f"port {HTTPS_PORT} of the instance is not forwarded (its security groups allow no "
        "ingress to it)"
    )


def https_get(port: int, ctx: Any, domain: str | None, timeout: float = 20) -> tuple[bytes, bytes]:
    """One GET / on a fresh TLS connection: (the first bytes of the answer, the leaf DER)."""
    import socket

    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
        ctx.wrap_socket(raw, server_hostname=domain) as tls,
    ):
        host = domain or "localhost"
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        head = tls.recv(65536)
        leaf = tls.getpeercert(binary_form=True)
    if not head.startswith(b"HTTP/1.1 "):
        raise ConnectionError(f"no HTTP answer over TLS: {head[:40]!r}")
    return head, leaf or b""


def wait_serving(h: UserDataHost, token: Any, timeout: float = ACM_READY_TIMEOUT_S) -> str | None:
    """Wait until nginx completes a TLS handshake again (the agent restarted: new enclave,
    token, nginx restart). None when it does; else why not."""
    import ssl

    from local_backend import server

    domain = (
        h.client("acm").describe_certificate(CertificateArn=token.source.certificate_arn)[
            "Certificate"
        ]["DomainName"]
        if token.source.kind == "Acm"
        else None
    )
    ctx = ssl.create_default_context(cadata=server.ca_pem(h.state_dir).decode())
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            https_get(https_port(h), ctx, domain)
            return None
        except (OSError, ssl.SSLError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    return f"nginx did not serve HTTPS again within {timeout:.0f} s ({last})"


def journal(h: UserDataHost) -> str:
    """The ACM agent's journal (`journalctl -u nitro-enclaves-acm.service` in the host)."""
    return control.host_exec(h.layout, ["journalctl", "-u", ACM_UNIT]).stdout


def served_https(layout: HostLayout, state_dir: Path) -> tuple[str, int] | None:
    """(domain, machine port) of the HTTPS an ACM agent host serves, for a "Try it" line."""
    h = UserDataHost(layout, state_dir)
    try:
        tokens = acm_tokens(h)
        if not tokens:
            return None
        arn = tokens[0].source.certificate_arn
        cert = h.client("acm").describe_certificate(CertificateArn=arn)["Certificate"]
        return cert["DomainName"], https_port(h)
    except Exception:  # noqa: BLE001 - no line to print; verify says why
        return None
