"""EK-PCR-003: an attestation condition key that does not exist."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.attested_kms import condition_name
from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.rules._common import attestation_conditions, where
from enclavekit.lint.world import World


def check(world: World) -> Iterator[Finding]:
    for doc, i, stmt, cond in attestation_conditions(world):
        if condition_name(cond.key) is None:
            yield RULE.finding(
                doc.location,
                f"{where(doc, i, stmt)}: condition key {cond.key} does not exist "
                "(expected kms:RecipientAttestation:ImageSha384 or :PCR0 … :PCR31)",
            )


RULE = Rule(
    id="EK-PCR-003",
    severity=Severity.ERROR,
    title="Non-existent attestation condition key",
    explanation="Only kms:RecipientAttestation:ImageSha384 and kms:RecipientAttestation:PCR<n> "
    "(n = 0..31) exist; the bare kms:RecipientAttestation or a made-up suffix is never present "
    "in a request, so an Allow never matches and a negated Deny always does "
    "(aws/aws-nitro-enclaves-sdk-c#157).",
    fix="Use kms:RecipientAttestation:ImageSha384 or kms:RecipientAttestation:PCR0 (1, 2, 8…).",
    check=check,
)
