"""EK-ACK-001: a malformed acknowledgment (no reason, bad id, unknown rule)."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.lint.acknowledgments import parse_acknowledgments
from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.world import World


def check(world: World) -> Iterator[Finding]:
    from enclavekit.lint.rules import BY_ID

    for tpl, res in world.resources():
        good, problems = parse_acknowledgments(res.metadata)
        for problem in problems:
            yield RULE.finding(
                world.location(tpl, res, "/Metadata"), f"{res.logical_id}: {problem}"
            )
        for ack in good:
            if ack.rule_id not in BY_ID:
                yield RULE.finding(
                    world.location(tpl, res, "/Metadata"),
                    f"{res.logical_id}: acknowledges {ack.rule_id}, which is not a rule",
                )


RULE = Rule(
    id="EK-ACK-001",
    severity=Severity.ERROR,
    title="Malformed acknowledgment",
    explanation="An acknowledgment must say why a finding is accepted; one without a reason, "
    "or for a rule that does not exist, hides nothing and explains nothing.",
    fix='Write {"id": "EK-...", "reason": "why this is acceptable"} '
    "(enclave_constructs.lint.acknowledge(construct, id, reason)).",
    check=check,
)
