"""image-pcrs: the enclave's fresh attestation document verifies to the local root and its
PCRs are the image's and exactly those the attested key policies name.
"""

from __future__ import annotations

import json
import secrets

from enclavekit import attestation
from enclavekit import provisioning as prov
from enclavekit.pki import LocalPki
from local_backend.verify.agent_host import ParentAgentHost
from local_backend.verify.keys import bound_pcrs
from local_backend.verify.report import short


def check_image(host: ParentAgentHost) -> tuple[bool, str]:
    nonce = secrets.token_bytes(32)
    reply = host.control(prov.Attest(nonce=nonce))
    if not isinstance(reply, prov.AttestResult):
        return False, f"the enclave did not attest: {reply.to_json()}"
    doc = attestation.verify(reply.document, LocalPki.load_or_create(host.state_dir).trust_anchor())
    if doc.nonce != nonce:
        return False, "the attestation document does not carry our nonce (replayed?)"
    if doc.module_id != host.enclave.get("EnclaveID"):
        return False, f"document module_id {doc.module_id} is not the enclave {host.enclave}"
    want = {k: v.lower() for k, v in (host.spec.get("image") or {}).get("measurements", {}).items()}
    got = {f"PCR{i}": doc.pcrs[i].hex() for i in (0, 1, 2) if i in doc.pcrs}
    for name in ("PCR0", "PCR1", "PCR2"):
        if got.get(name) != want.get(name):
            return False, (
                f"enclave {name} {short(got.get(name, '-'))} is not the image's "
                f"{short(want.get(name, '-'))}"
            )
    keys = host.spec.get("attested_keys") or []
    if not keys:
        return False, "the host's Metadata names no attested key: nothing binds these PCRs"
    kms = host.client("kms")
    bound_names: list[str] = []
    for logical in keys:
        key_id = host.physical_id(logical)
        policy = kms.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"]
        bound = bound_pcrs(
            policy if isinstance(policy, str) else json.dumps(policy),
            (host.info.get("role_arns") or [None])[0],
        )
        if not bound:
            return False, (
                f"key {logical} grants the host role nothing under a "
                "kms:RecipientAttestation condition"
            )
        for name, values in sorted(bound.items()):
            index = int(name[3:])
            actual = doc.pcrs.get(index, b"").hex()
            if values != {actual}:
                shown = ", ".join(sorted(short(v) for v in values))
                return False, (
                    f"key {logical} binds {name} to {shown}; the enclave has {short(actual)}"
                )
        bound_names.append(f"{logical}({','.join(sorted(bound))})")
    return True, (
        f"PCR0 {short(got['PCR0'])} attested (local root, fresh nonce) = image = "
        f"policy of {', '.join(bound_names)}"
    )
