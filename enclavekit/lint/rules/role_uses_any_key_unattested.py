"""EK-KMS-007: an enclave host's role may use every key of the account without attestation."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.attested_kms import ATTESTED_ACTIONS
from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.resolve import ACCOUNT, PARTITION
from enclavekit.lint.world import World
from enclavekit.policy import evaluate

# A key no template names: what a wildcard key ARN (or "*") in an identity policy reaches.
_ANY_KEY = "key/enclavekit-any-key-in-the-account"


def check(world: World) -> Iterator[Finding]:
    seen: set[tuple[str, str]] = set()
    for host in world.hosts:
        role = host.role
        if role is None:
            continue
        for doc in role.policies:
            actions = []
            for action in ATTESTED_ACTIONS:
                for region in ("us-east-1", "eu-west-1"):
                    arn = f"arn:{PARTITION}:kms:{region}:{ACCOUNT}:{_ANY_KEY}"
                    if evaluate(world.unattested(role.arn, action, arn), [doc.policy]).allowed:
                        actions.append(action)
                        break
            marker = (doc.name, role.arn)
            if actions and marker not in seen:
                seen.add(marker)
                yield RULE.finding(
                    doc.location,
                    f"{doc.name} lets role {role.resource.logical_id} of enclave host "
                    f"{host.resource.logical_id} call {', '.join(actions)} on any KMS key "
                    "(wildcard key ARN) without an attestation document",
                )


RULE = Rule(
    id="EK-KMS-007",
    severity=Severity.ERROR,
    title="Enclave role may use every key without attestation",
    explanation="An identity policy granting Decrypt (or another attested action) on "
    'arn:aws:kms:*:*:key/* or "*" reaches every key whose policy delegates to the account, '
    "including enclave keys created later or in other stacks: the parent decrypts their "
    "ciphertext itself, and no key in this template shows it.",
    fix="Name the keys the parent really needs in Resource, or add kms:RecipientAttestation "
    "conditions to the statement; keep enclave keys' policies with an explicit Deny of "
    "unattested calls.",
    check=check,
)
