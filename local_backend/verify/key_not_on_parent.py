"""key-not-on-parent: the certificate's private key is in no parent-side file or process of
the host, and (the control that the search works) it is in the enclave's memory.
"""

from __future__ import annotations

import json

from enclavekit.localenv import LOCAL_ACCOUNT
from local_backend.verify.agent_host import ParentAgentHost
from local_backend.verify.https import certificate_not_held
from local_backend.verify.processes import key_leaks, search_key, searched_mib


def check_key_not_on_parent(host: ParentAgentHost) -> tuple[bool, str]:

    cert = host.spec.get("certificate")
    if not cert:
        return False, "the host has no certificate"
    # The S3 object as the parent downloads it, searched by the endpoint too.
    creds = host.parent.role_credentials()
    bundle = host.parent.certificate_bundle(creds)
    if bundle is None:
        return False, "could not check: the host's certificate bundle is not in S3"
    s3_copy = host.dir / "verify-s3-object.json"
    s3_copy.write_text(json.dumps(bundle.to_json()))
    try:
        # every process of the host's own PID namespace (the agent, socat, systemd's
        # stand-in...) is parent side; those in the enclaves' nested namespaces the control
        pids, enclave_pids, result = search_key(host.h, cert["arn"], LOCAL_ACCOUNT)
    finally:
        s3_copy.unlink(missing_ok=True)
    if "error" in result:
        return False, f"the key search failed: {result['error']}"
    leaks = key_leaks(result, pids)
    if leaks:
        return False, "private key found on the parent side: " + "; ".join(leaks[:4])
    control = [result["processes"].get(str(p), {}) for p in enclave_pids]
    if not any(c.get("hits") for c in control) and (reason := certificate_not_held(host)):
        return False, reason
    if not any(c.get("hits") for c in control):
        errors = "; ".join(c["error"] for c in control if "error" in c) or "no hits"
        return False, (
            "the search did not find the key in the enclave either, so its absence "
            f"elsewhere proves nothing ({errors})"
        )
    mib = searched_mib(result)
    return True, (
        f"absent from S3 object, {result['files_read']} state/log files and "
        f"{len(pids)} parent-side processes of the host; found only in the enclave "
        f"({mib} MiB of memory searched)"
    )
