"""EK-KMS-001: a key policy lets a principal use an attested KMS action without attestation."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.attested_kms import ATTESTED_ACTIONS
from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.rules._kms import (
    enclave_keys,
    key_policy_at,
    key_principals,
    unattested_decision,
)
from enclavekit.lint.world import World


def check(world: World) -> Iterator[Finding]:
    for key in enclave_keys(world):
        assert key.doc is not None
        hits: dict[tuple[str, tuple[str, ...]], list[str]] = {}
        for principal in key_principals(world, key):
            for action in ATTESTED_ACTIONS:
                d = unattested_decision(world, key, principal, action)
                if d.allowed and d.reason == "allowed by the key policy":
                    hits.setdefault((principal, d.statements), []).append(action)
        for (principal, labels), actions in hits.items():
            yield RULE.finding(
                key_policy_at(world, key),
                f"key {key.resource.logical_id} lets {principal} call "
                f"{', '.join(actions)} without an attestation document "
                f"(statement {', '.join(labels)} has no kms:RecipientAttestation condition)",
            )


RULE = Rule(
    id="EK-KMS-001",
    severity=Severity.ERROR,
    title="Attested KMS action allowed without an attestation condition",
    explanation="A key bound to an enclave image is only as strong as its weakest Allow: a "
    "statement granting Decrypt, GenerateDataKey*, GenerateRandom, DeriveSharedSecret or kms:* "
    "without a kms:RecipientAttestation:* condition lets the parent instance (or anyone holding "
    "the principal) get plaintext with no enclave at all.",
    fix="Add a StringEqualsIgnoreCase condition on kms:RecipientAttestation:ImageSha384 or "
    "PCR0/1/2 (and PCR8 for signed images) to every Allow of these actions, or drop the action.",
    check=check,
)
