"""keys, and the KMS evidence helpers both host kinds share: which PCRs a key policy releases
to the host role under attestation, and whether KMS itself answered AccessDeniedException.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from enclavekit import attested_kms, pcr
from enclavekit.policy import parse_policy
from local_backend.verify.report import Check, not_applicable, short
from local_backend.verify.userdata import UserDataHost, running_enclaves


def bound_pcrs(policy_text: str, role_arn: str | None) -> dict[str, set[str]]:
    """PCR condition values (lower-case) of the Allow statements that grant the host role
    (`role_arn`) under attestation keys: what the key releases to this host's enclave."""
    bound: dict[str, set[str]] = {}
    if role_arn is None:
        return bound
    for b in attested_kms.bindings(parse_policy(policy_text), principal=role_arn):
        if b.effect == "Allow":
            bound.setdefault(f"PCR{b.pcr}", set()).update(v.lower() for v in b.values)
    return bound


def denied(call: Callable[[], Any], key_id: str | None) -> tuple[bool, str]:
    """Did KMS itself answer AccessDeniedException for `key_id` (any key if None)? The only
    evidence of a denial: any other error (unreachable, bad ciphertext...) proves nothing."""
    try:
        call()
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code, message = str(err.get("Code", "")), str(err.get("Message", ""))
        if code != "AccessDeniedException":
            return False, f"could not check: KMS answered {code or 'no error code'}: {message}"
        if why := denied_other_resource(message, key_id, f"key {key_id or '(any KMS key)'}"):
            return False, f"could not check: {why}"
        return True, code
    return False, "ALLOWED"


def denied_other_resource(message: str, key_id: str | None, subject: str) -> str | None:
    """Why KMS's AccessDeniedException `message` is no denial of key `key_id` (any KMS key if
    None), the key named `subject`: it names another resource (a denial of that proves
    nothing). None when it names that key."""
    resource = message.partition(" on resource: ")[2].split(" ", 1)[0]
    if resource.startswith("arn:aws:kms:") and not (key_id and key_id not in resource):
        return None
    return f"AccessDeniedException for {resource or 'no resource'}, not for {subject}"


def attested_keys(h: UserDataHost) -> dict[str, dict[str, set[str]]]:
    """key ARN -> the PCR values its policy releases to the host role under attestation."""
    kms = h.client("kms")
    out: dict[str, dict[str, set[str]]] = {}
    for page in kms.get_paginator("list_keys").paginate():
        for k in page["Keys"]:
            policy = kms.get_key_policy(KeyId=k["KeyId"], PolicyName="default")["Policy"]
            text = policy if isinstance(policy, str) else json.dumps(policy)
            bound = bound_pcrs(text, h.role_arn)
            if bound:
                out[k["KeyArn"]] = bound
    return out


def _enclave_pcrs(h: UserDataHost, e: dict[str, Any]) -> dict[str, str]:
    doc = h.documents.get(str(e["EnclaveID"]))
    if doc is not None:
        return {f"PCR{i}": v.hex() for i, v in doc.pcrs.items()}
    m = {k: str(v).lower() for k, v in (e.get("Measurements") or {}).items()}
    if h.role_arn:
        m["PCR3"] = pcr.pcr3_of_role_arn(h.role_arn).hex()
    m["PCR4"] = pcr.pcr4_of_instance_id(h.info["instance_id"]).hex()
    return m


def check_keys(h: UserDataHost) -> tuple[bool, str] | Check:
    keys = attested_keys(h)
    if not keys:
        return not_applicable(
            "keys", "no KMS key policy grants the host role under kms:RecipientAttestation"
        )
    running = [_enclave_pcrs(h, e) for e in running_enclaves(h)]
    parts = []
    for arn, bound in sorted(keys.items()):
        key = arn.rsplit("/", 1)[-1]
        if not any(all(have.get(n) in vals for n, vals in bound.items()) for have in running):
            shown = ", ".join(f"{n} {short(min(v))}" for n, v in sorted(bound.items()))
            return False, f"key {key} releases to {shown}: no enclave of this host has them"
        parts.append(f"{key}({','.join(sorted(bound))})")
    return True, f"bound to an enclave running here: {', '.join(parts)}"
