"""EK-POL-001: a policy document that is not valid IAM policy grammar."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.world import World


def check(world: World) -> Iterator[Finding]:
    _ = (world.keys, world.roles)  # parsing them records the errors
    for location, message in world.policy_errors:
        yield RULE.finding(location, f"{location.logical_id}: {message}")


RULE = Rule(
    id="EK-POL-001",
    severity=Severity.ERROR,
    title="Invalid policy document",
    explanation="IAM and KMS reject a policy that is not valid grammar (unknown condition "
    "operator, bad element), so nothing else about it can be judged.",
    fix="Correct the element named in the message; condition operators are case-sensitive.",
    check=check,
)
