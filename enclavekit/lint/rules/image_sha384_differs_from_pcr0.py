"""EK-PCR-005: ImageSha384 and PCR0 that disagree in one statement."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.attested_kms import condition_name
from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.rules._common import POSITIVE_STRING_OPS, policy_docs, where
from enclavekit.lint.world import World


def check(world: World) -> Iterator[Finding]:
    for doc in policy_docs(world):
        for i, stmt in enumerate(doc.policy.statements):
            found: dict[str, set[str]] = {}
            for cond in stmt.conditions:
                name = condition_name(cond.key)
                if name in ("ImageSha384", "PCR0") and cond.operator in POSITIVE_STRING_OPS:
                    found.setdefault(name, set()).update(v.lower() for v in cond.values)
            if len(found) == 2 and not (found["ImageSha384"] & found["PCR0"]):
                yield RULE.finding(
                    doc.location,
                    f"{where(doc, i, stmt)}: ImageSha384 {sorted(found['ImageSha384'])[0][:16]}… "
                    f"and PCR0 {sorted(found['PCR0'])[0][:16]}… disagree, so no enclave matches",
                )


RULE = Rule(
    id="EK-PCR-005",
    severity=Severity.ERROR,
    title="ImageSha384 and PCR0 disagree",
    explanation="kms:RecipientAttestation:ImageSha384 is PCR0 of the attestation document; a "
    "statement requiring two different values for it can never match.",
    fix="Use the same image's PCR0 for both, or keep only one of the two conditions.",
    check=check,
)
