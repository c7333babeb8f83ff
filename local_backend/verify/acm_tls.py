"""https and key-not-on-parent of an ACM agent host: HTTPS from nginx with the association's
certificate, each handshake signed in ACM's enclave, and the key in no parent-side process or
file (and in the enclave, as the control).
"""

from __future__ import annotations

from typing import Any

from local_backend.verify.acm_host import (
    ACM_CONFIG,
    acm_tokens,
    associated_certificates,
    https_port,
    served_token,
    stanza_pin,
    token_signatures,
    wait_for_stanza,
)
from local_backend.verify.processes import comm, key_leaks, search_key, searched_mib
from local_backend.verify.report import Check, not_applicable, timed
from local_backend.verify.userdata import UserDataHost

TLS_CHECKS = ("https", "key-not-on-parent")


def check_tls(h: UserDataHost) -> list[Check]:
    """https and key-not-on-parent apply where the host serves an ACM certificate."""
    certs = associated_certificates(h)
    if not certs:
        why = "no ACM certificate is associated with the host role: the host serves no TLS of ours"
        return [not_applicable("https", why), not_applicable("key-not-on-parent", why)]
    tokens = acm_tokens(h)
    if not tokens:
        why = (
            f"could not check: certificate {certs[0].rsplit('/', 1)[-1]} is associated with the "
            f"host role, but the host runs no ACM for Nitro Enclaves agent ({ACM_CONFIG} with a "
            "token whose target is an nginx stanza) that could serve it"
        )
        return [Check("https", False, why), Check("key-not-on-parent", False, why)]
    token = served_token(tokens, certs)
    waiting = wait_for_stanza(h, token)
    if waiting:
        return [Check("https", False, waiting), Check("key-not-on-parent", False, waiting)]
    https = timed("https", lambda: check_acm_https(h, token))
    key = timed("key-not-on-parent", lambda: check_acm_key_not_on_parent(h, token))
    return [https, key]


def check_acm_https(h: UserDataHost, token: Any) -> tuple[bool, str]:
    """HTTPS from the host's web server with the association's certificate and a chain to the
    local CA, each handshake's private-key operation done in the ACM enclave."""
    import socket
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from local_backend import server

    arn = token.source.certificate_arn
    got = h.client("acm").get_certificate(CertificateArn=arn)
    want_leaf = x509.load_pem_x509_certificate(got["Certificate"].encode())
    domain = h.client("acm").describe_certificate(CertificateArn=arn)["Certificate"]["DomainName"]
    pin = stanza_pin(h, token)
    port = https_port(h)
    ctx = ssl.create_default_context(cadata=server.ca_pem(h.state_dir).decode())
    before = token_signatures(h, token, pin)
    handshakes = 2
    for _ in range(handshakes):  # fresh connections: each one a full handshake, signed
        with (
            socket.create_connection(("127.0.0.1", port), timeout=20) as raw,
            ctx.wrap_socket(raw, server_hostname=domain) as tls,
        ):
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {domain}\r\nConnection: close\r\n\r\n".encode())
            head = tls.recv(65536)
            version = tls.version()
            leaf = tls.getpeercert(binary_form=True)
    signed = token_signatures(h, token, pin) - before
    if not head.startswith(b"HTTP/1.1 "):
        return False, f"no HTTP answer over TLS: {head[:40]!r}"
    if leaf != want_leaf.public_bytes(serialization.Encoding.DER):
        return False, f"the server's certificate is not {arn.rsplit('/', 1)[-1]}'s"
    if signed < handshakes:
        return False, (
            f"{handshakes} handshakes but the ACM enclave's token signed {signed} times: the key "
            "used is not the enclave's"
        )
    return True, (
        f"{version} to {domain} via 127.0.0.1:{port}: certificate {arn.rsplit('/', 1)[-1][:8]}… "
        f"chain verifies to the local CA; {handshakes} handshakes, {signed} signatures by the "
        f"ACM enclave's token {token.label}"
    )


def check_acm_key_not_on_parent(h: UserDataHost, token: Any) -> tuple[bool, str]:
    """The certificate's key is in none of the host's parent-side processes (nginx's master and
    workers, the agent), the S3 object, the state and log files — and is in the enclave
    (positive control, searched while it signs)."""

    arn = token.source.certificate_arn
    parent, enclave, result = search_key(h, arn, h.account_id)
    if "error" in result:
        return False, f"the key search failed: {result['error']}"
    leaks = key_leaks(result, parent, lambda pid: f"{pid} {comm(pid)}")
    if leaks:
        return False, "private key found on the parent side: " + "; ".join(leaks[:4])
    if not any(result["processes"].get(str(p), {}).get("hits") for p in enclave):
        return False, (
            "the search did not find the key in the ACM enclave either, so its absence "
            "elsewhere proves nothing"
        )
    nginx = sum(1 for p in parent if comm(p) == "nginx")
    mib = searched_mib(result)
    return True, (
        f"absent from {result['files_read']} state/log files and {len(parent)} parent-side "
        f"processes ({nginx} nginx); found only in the ACM enclave ({mib} MiB searched)"
    )
