"""EK-PCR-001: a PCR / image digest value that is not 96 hex characters (or carries 0x)."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.attested_kms import condition_name
from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.rules._common import HEX96, attestation_conditions, where
from enclavekit.lint.world import World


def check(world: World) -> Iterator[Finding]:
    for doc, i, stmt, cond in attestation_conditions(world):
        if condition_name(cond.key) is None or cond.operator == "Null":
            continue  # a wrong key is EK-PCR-003; Null takes true/false
        for value in cond.values:
            if value[:2].lower() == "0x":
                problem = "carries a 0x prefix (KMS compares plain hex)"
            elif not HEX96.match(value):
                problem = f"is {len(value)} characters, expected 96 hex characters (SHA-384)"
            else:
                continue
            yield RULE.finding(
                doc.location,
                f"{where(doc, i, stmt)}: {cond.key} value {_short(value)} {problem}",
            )


def _short(value: str) -> str:
    return value if len(value) <= 20 else value[:20] + "…"


RULE = Rule(
    id="EK-PCR-001",
    severity=Severity.ERROR,
    title="Malformed PCR value",
    explanation="KMS compares the attestation document's PCRs as lower-case hex strings of 96 "
    "characters; any other value (short, 0x-prefixed, not hex) can never match, so the enclave "
    "is locked out.",
    fix="Copy the value from `enclavekit describe-eif` / `nitro-cli describe-eif` Measurements.",
    check=check,
)
