"""Helpers shared by rules: walking policy documents and attestation conditions."""

from __future__ import annotations

import re
from collections.abc import Iterator

from enclavekit.lint.world import PolicyDoc, World, is_attestation_key
from enclavekit.policy import Condition, Statement

PCR_KEY = re.compile(r"^kms:recipientattestation:(imagesha384|pcr(\d+))$", re.IGNORECASE)
HEX96 = re.compile(r"^[0-9a-fA-F]{96}$")
POSITIVE_STRING_OPS = ("StringEquals", "StringEqualsIgnoreCase")


def policy_docs(world: World) -> list[PolicyDoc]:
    """Every parsed policy document of the run (key policies, then identity policies)."""
    docs: dict[tuple, PolicyDoc] = {}
    for key in world.keys:
        if key.doc is not None and key.explicit_policy:
            docs[(key.doc.location, key.doc.name)] = key.doc
    for role in world.roles:
        for doc in role.policies:
            docs[(doc.location, doc.name)] = doc
    return list(docs.values())


def attestation_conditions(
    world: World,
) -> Iterator[tuple[PolicyDoc, int, Statement, Condition]]:
    """(doc, statement index, statement, condition) for every attestation condition key."""
    for doc in policy_docs(world):
        for i, stmt in enumerate(doc.policy.statements):
            for cond in stmt.conditions:
                if is_attestation_key(cond.key):
                    yield doc, i, stmt, cond


def pcr_name(key: str) -> str | None:
    """ "kms:RecipientAttestation:PCR0" -> "PCR0", ImageSha384 -> "ImageSha384", else None."""
    m = PCR_KEY.match(key)
    if not m:
        return None
    if m.group(2) is not None:
        return f"PCR{int(m.group(2))}" if int(m.group(2)) <= 31 else None
    return "ImageSha384"


def where(doc: PolicyDoc, index: int, stmt: Statement) -> str:
    """How a message names a statement: "key policy of K statement 'Sid'"."""
    return f"{doc.name} statement {stmt.label(index)!r}"
