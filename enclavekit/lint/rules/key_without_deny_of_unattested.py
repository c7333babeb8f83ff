"""EK-KMS-003: no explicit deny of unattested calls for the enclave host's role (warning)."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.rules._kms import host_roles_and_keys, key_policy_at
from enclavekit.lint.world import World
from enclavekit.policy import Policy, evaluate


def check(world: World) -> Iterator[Finding]:
    for host, role, key in host_roles_and_keys(world):
        assert key.doc is not None
        denies = Policy(tuple(s for s in key.doc.policy.statements if s.effect == "Deny"))
        d = evaluate(world.unattested(role.arn, "kms:Decrypt", key.arn), [denies])
        if not d.statements:
            yield RULE.finding(
                key_policy_at(world, key),
                f"key {key.resource.logical_id} has no explicit Deny of unattested "
                f"kms:Decrypt for role {role.resource.logical_id} of enclave host "
                f"{host.resource.logical_id}",
            )


RULE = Rule(
    id="EK-KMS-003",
    severity=Severity.WARNING,
    title="No explicit deny of unattested calls for the enclave role",
    explanation="An Allow with PCR conditions only holds while no other policy allows the same "
    "call; a Deny with StringNotEqualsIgnoreCase on the PCRs (true when the attestation is "
    "missing) keeps the key enclave-only even if an identity policy grants too much "
    "(aws/nitrotpm-attestation-samples#22).",
    fix="Add a Deny of the attested actions for the host role with "
    "StringNotEqualsIgnoreCase on kms:RecipientAttestation:ImageSha384 (or PCR0).",
    check=check,
)
