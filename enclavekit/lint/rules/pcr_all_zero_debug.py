"""EK-PCR-002: an all-zero PCR (debug-mode enclaves) allowed by a policy."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.attested_kms import condition_name
from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.rules._common import attestation_conditions, where
from enclavekit.lint.world import World

ZERO = "0" * 96


def check(world: World) -> Iterator[Finding]:
    for doc, i, stmt, cond in attestation_conditions(world):
        if stmt.effect != "Allow" or condition_name(cond.key) is None:
            continue
        if any(v.lower().removeprefix("0x") == ZERO for v in cond.values):
            yield RULE.finding(
                doc.location,
                f"{where(doc, i, stmt)}: {cond.key} is all zeros, which admits any enclave "
                "started in debug mode",
            )


RULE = Rule(
    id="EK-PCR-002",
    severity=Severity.ERROR,
    title="All-zero PCR (debug enclave) allowed",
    explanation="Debug-mode enclaves attest with all-zero PCRs and expose their console to the "
    "parent; a key that accepts zeros releases secrets to any debug enclave, whatever it runs.",
    fix="Bind the measured image's PCRs; for a development stack, acknowledge EK-PCR-002 on the "
    "key with a reason.",
    check=check,
)
