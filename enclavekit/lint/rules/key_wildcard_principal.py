"""EK-KMS-004: a wildcard principal on a key that grants attested access."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.rules._kms import enclave_keys, key_policy_at
from enclavekit.lint.world import World

_PRINCIPAL_LIMITS = (
    "aws:principalarn",
    "aws:principalaccount",
    "kms:calleraccount",
    "aws:principalorgid",
    "aws:sourceaccount",
)
_POSITIVE = ("StringEquals", "StringEqualsIgnoreCase", "StringLike", "ArnEquals", "ArnLike")


def check(world: World) -> Iterator[Finding]:
    for key in enclave_keys(world):
        assert key.doc is not None
        for i, stmt in enumerate(key.doc.policy.statements):
            if stmt.effect != "Allow":
                continue
            wildcard = stmt.not_principals is not None or any(
                p.kind == "AWS" and p.value == "*" for p in stmt.principals or ()
            )
            limited = any(
                c.key.lower() in _PRINCIPAL_LIMITS and c.operator in _POSITIVE
                for c in stmt.conditions
            )
            if wildcard and not limited:
                yield RULE.finding(
                    key_policy_at(world, key),
                    f"key {key.resource.logical_id} statement {stmt.label(i)!r} allows a "
                    "wildcard principal on a key with attested grants",
                )


RULE = Rule(
    id="EK-KMS-004",
    severity=Severity.ERROR,
    title="Wildcard principal on a key with attested grants",
    explanation='Principal "*" (or NotPrincipal) opens the key to every AWS account; the '
    "attestation conditions then become the only barrier, and any account that can run the "
    "same public image satisfies them.",
    fix="Name the enclave host's role (or the account root) as principal, or restrict the "
    "statement with aws:PrincipalArn / kms:CallerAccount.",
    check=check,
)
