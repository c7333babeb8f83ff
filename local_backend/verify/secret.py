"""secret: the enclave answers an HMAC challenge under the application secret, proving it
decrypted it with attestation.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from enclavekit import provisioning as prov
from local_backend.verify.agent_host import VERIFIER_DIR, ParentAgentHost


def reference_secret(state_dir: Path, stack: str, name: str) -> bytes | None:
    path = state_dir / VERIFIER_DIR / stack / f"{name}.secret"
    return path.read_bytes() if path.is_file() else None


def check_secret(host: ParentAgentHost) -> tuple[bool, str]:
    names = [s["name"] for s in host.spec.get("secrets") or []]
    if not names:
        return False, "the host's Metadata declares no application secret to check"
    done = []
    for name in names:
        ref = reference_secret(host.state_dir, host.info["stack_name"], name)
        if ref is None:
            return False, (
                f"secret {name!r}: no reference copy under {VERIFIER_DIR}/ "
                "(sealed outside `enclavekit up`), cannot challenge the enclave"
            )
        nonce = secrets.token_bytes(32)
        reply = host.control(prov.Challenge(name=name, nonce=nonce))
        if not isinstance(reply, prov.ChallengeAnswer):
            return False, f"secret {name!r}: the enclave does not hold it: {reply.to_json()}"
        if not hmac.compare_digest(reply.mac, hmac.new(ref, nonce, hashlib.sha256).digest()):
            return False, f"secret {name!r}: the enclave's answer does not match the secret"
        done.append(name)
    return True, f"{', '.join(done)}: HMAC challenge answered from inside the enclave"
