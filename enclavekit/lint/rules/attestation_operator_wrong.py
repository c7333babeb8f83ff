"""EK-PCR-004: an operator that is wrong for an attestation condition key."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.attested_kms import condition_name
from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.rules._common import attestation_conditions, where
from enclavekit.lint.world import World

_OK = ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase", "Null")
_CASE = ("StringEquals", "StringNotEquals")


def check(world: World) -> Iterator[Finding]:
    for doc, i, stmt, cond in attestation_conditions(world):
        if condition_name(cond.key) is None:
            continue
        op = (
            (f"{cond.qualifier}:" if cond.qualifier else "")
            + cond.operator
            + ("IfExists" if cond.if_exists else "")
        )
        loc, what = doc.location, f"{where(doc, i, stmt)}: {op} on {cond.key}"
        if cond.qualifier:
            yield RULE.finding(
                loc,
                f"{what}: {cond.qualifier} is for multi-valued keys; "
                "attestation keys are single-valued",
            )
        elif cond.operator in ("StringLike", "StringNotLike") or any(
            "*" in v or "?" in v for v in cond.values
        ):
            yield RULE.finding(loc, f"{what}: wildcards let other images match")
        elif cond.if_exists and stmt.effect == "Allow" and cond.operator != "Null":
            yield RULE.finding(
                loc,
                f"{what}: IfExists makes the Allow match requests without an attestation document",
            )
        elif cond.operator in _CASE:
            yield RULE.finding(
                loc,
                f"{what}: case-sensitive comparison of hex; use {cond.operator}IgnoreCase",
                severity=Severity.WARNING,
            )
        elif cond.operator not in _OK:
            yield RULE.finding(loc, f"{what}: expected StringEqualsIgnoreCase")


RULE = Rule(
    id="EK-PCR-004",
    severity=Severity.ERROR,
    title="Wrong operator for an attestation condition key",
    explanation="Attestation keys are single-valued hex strings: ForAnyValue/ForAllValues "
    "change the meaning (ForAllValues is true for a missing key), wildcards admit other images, "
    "IfExists on an Allow admits unattested calls, and case-sensitive StringEquals breaks on "
    "upper-case hex (warning).",
    fix="Use StringEqualsIgnoreCase in Allows and StringNotEqualsIgnoreCase in Denies, with "
    "exact 96-character values.",
    check=check,
)
