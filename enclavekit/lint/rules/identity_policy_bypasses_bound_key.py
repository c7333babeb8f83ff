"""EK-KMS-002: an identity policy bypasses the attestation binding of a key (sdk-c #157)."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.attested_kms import ATTESTED_ACTIONS
from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.rules._kms import enclave_keys, unattested_decision
from enclavekit.lint.world import World
from enclavekit.policy import evaluate


def check(world: World) -> Iterator[Finding]:
    keys = enclave_keys(world)
    for role in world.roles:
        for key in keys:
            per_doc: dict[int, list[str]] = {}
            for action in ATTESTED_ACTIONS:
                d = unattested_decision(world, key, role.arn, action)
                if not d.allowed or d.reason == "allowed by the key policy":
                    continue
                ctx = world.unattested(role.arn, action, key.arn)
                for i, doc in enumerate(role.policies):
                    if evaluate(ctx, [doc.policy]).allowed:
                        per_doc.setdefault(i, []).append(action)
            for i, actions in per_doc.items():
                doc = role.policies[i]
                yield RULE.finding(
                    doc.location,
                    f"{doc.name} lets role {role.resource.logical_id} call {', '.join(actions)} "
                    f"on attested key {key.resource.logical_id} without an attestation document "
                    "(the key policy delegates to the account)",
                )


RULE = Rule(
    id="EK-KMS-002",
    severity=Severity.ERROR,
    title="Identity policy bypasses a PCR-bound key",
    explanation="When the key policy allows the account root, IAM policies grant access on "
    "their own: an unconditioned kms:Decrypt in the instance role's policy lets the parent "
    "decrypt without an enclave, whatever the key policy's PCR conditions say "
    "(aws/aws-nitro-enclaves-sdk-c#157).",
    fix="Add the same kms:RecipientAttestation conditions to the identity policy, or remove the "
    "action from it; better, add an explicit Deny of unattested calls to the key policy.",
    check=check,
)
