"""EK-KMS-005: a key policy that no administrator can manage (lock-out)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.resolve import ACCOUNT
from enclavekit.lint.rules._kms import key_policy_at
from enclavekit.lint.world import KeyFact, World
from enclavekit.policy import Policy, evaluate_kms, root_arn


def _admin_possible(world: World, key: KeyFact) -> bool:
    assert key.doc is not None
    # Judge the grant, not its circumstances: Allows count without their conditions, and only
    # unconditional Denies take one away.
    relaxed = Policy(
        tuple(
            dataclasses.replace(s, conditions=()) if s.effect == "Allow" else s
            for s in key.doc.policy.statements
            if s.effect == "Allow" or not s.conditions
        )
    )
    candidates = [root_arn(ACCOUNT)]
    for stmt in relaxed.statements:
        for p in stmt.principals or ():
            if p.kind == "AWS" and p.value != "*":
                candidates.append(p.value)
    for principal in dict.fromkeys(candidates):
        role = world.role_by_arn(principal, key.template)
        identity = [d.policy for d in role.policies] if role else []
        ctx = world.unattested(principal, "kms:PutKeyPolicy", key.arn)
        if evaluate_kms(ctx, relaxed, identity).allowed:
            return True
    return False


def check(world: World) -> Iterator[Finding]:
    for key in world.keys:
        if key.doc is None or not key.explicit_policy:
            continue
        if not _admin_possible(world, key):
            yield RULE.finding(
                key_policy_at(world, key),
                f"key {key.resource.logical_id}: no principal can call kms:PutKeyPolicy, so "
                "nobody can ever manage this key",
            )


RULE = Rule(
    id="EK-KMS-005",
    severity=Severity.ERROR,
    title="Key policy no administrator can manage",
    explanation="KMS refuses (or, with BypassPolicyLockoutSafetyCheck, accepts) a key policy "
    "that nobody can change; the key then can never be re-bound to a new enclave image and "
    "only AWS Support can recover it.",
    fix="Allow kms:PutKeyPolicy (e.g. the administrative kms:* minus Decrypt) to the account "
    "root or a named administrator role.",
    check=check,
)
