"""https (agent host): a TLS request to the host's port verifies to the local CA for the
configured domain and is answered from inside the enclave.
"""

from __future__ import annotations

import json
import secrets
import socket
import ssl

from enclavekit import provisioning as prov
from enclavekit.errors import EnclaveKitError
from local_backend import server
from local_backend.verify.agent_host import ParentAgentHost


def check_https(host: ParentAgentHost) -> tuple[bool, str]:
    domain = (host.spec.get("service") or {}).get("domain")
    port = host.state.get("relay_port")
    if not domain or not port:
        if reason := certificate_not_held(host):
            return False, reason
        return False, (
            f"host has no domain ({domain}) or no machine port forwarded to its service port "
            f"{(host.spec.get('service') or {}).get('port')} (its security groups let nothing in)"
        )
    ca = server.ca_pem(host.state_dir)
    ctx = ssl.create_default_context(cadata=ca.decode())
    nonce = secrets.token_hex(8)
    try:
        with (
            socket.create_connection(("127.0.0.1", int(port)), timeout=15) as raw,
            ctx.wrap_socket(raw, server_hostname=domain) as tls,
        ):
            request = f"GET /verify/{nonce} HTTP/1.1\r\nHost: {domain}\r\nConnection: close"
            tls.sendall(f"{request}\r\n\r\n".encode())
            data = b""
            version = tls.version()
            while chunk := tls.recv(65536):
                data += chunk
    except OSError:  # ssl.SSLError too: no handshake. Does the enclave say why?
        reason = certificate_not_held(host)
        if reason is None:
            raise
        return False, reason
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        return False, f"HTTP answer {head[:40]!r}"
    answer = json.loads(body)
    if answer.get("enclave_module_id") != host.enclave.get("EnclaveID"):
        return False, f"answered by {answer.get('enclave_module_id')}, not the enclave"
    if nonce not in answer.get("path", ""):
        return False, "the response does not echo our request"
    return True, (
        f"{version} to {domain} via 127.0.0.1:{port}: chain verifies to the local CA; "
        f"served by enclave {answer['enclave_module_id'][-8:]}"
    )


def certificate_not_held(host: ParentAgentHost) -> str | None:
    """Why the enclave holds no certificate key, when its Status says it holds none. An image
    of ours that claims ACM's certificate (set-up C) ends here on AWS too: ACM releases the key
    only to its own enclave image, so the image's Decrypt is AccessDeniedException."""
    try:
        status = host.control(prov.Status(), timeout=15)
    except (OSError, EnclaveKitError):
        return None
    if not isinstance(status, prov.StatusReport) or status.certificate_sha256:
        return None
    return f"the enclave holds no certificate key ({status.state}): {status.last_error}"
