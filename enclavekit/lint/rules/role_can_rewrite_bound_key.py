"""EK-KMS-006: the enclave host's role can rewrite, grant away or re-encrypt its bound key."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.rules._kms import host_roles_and_keys, key_policy_at, unattested_decision
from enclavekit.lint.world import World

DANGEROUS = ("kms:PutKeyPolicy", "kms:CreateGrant", "kms:ReEncryptFrom", "kms:ReEncryptTo")


def check(world: World) -> Iterator[Finding]:
    for host, role, key in host_roles_and_keys(world):
        allowed = [a for a in DANGEROUS if unattested_decision(world, key, role.arn, a).allowed]
        if allowed:
            yield RULE.finding(
                key_policy_at(world, key),
                f"role {role.resource.logical_id} of enclave host "
                f"{host.resource.logical_id} can call {', '.join(allowed)} on its bound key "
                f"{key.resource.logical_id}",
            )


RULE = Rule(
    id="EK-KMS-006",
    severity=Severity.ERROR,
    title="Enclave role can rewrite or bypass its bound key",
    explanation="PutKeyPolicy lets the parent drop the PCR conditions, CreateGrant hands out "
    "unattested use, and ReEncrypt* moves ciphertext to a key without attestation: each turns "
    "the parent (the party the enclave protects against) into the key's owner.",
    fix="Keep key administration with an administrator principal; grant the host role only the "
    "attested actions, with kms:RecipientAttestation conditions.",
    check=check,
)
