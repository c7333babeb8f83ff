"""Helpers shared by rules: walking policy documents and attestation conditions."""

from __future__ import annotations

import re
from collections.abc import Iterator

from enclavekit.attested_kms import is_attestation_key
from enclavekit.lint.world import PolicyDoc, World
from enclavekit.policy import Condition, Statement

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


def where(doc: PolicyDoc, index: int, stmt: Statement) -> str:
    """How a message names a statement: "key policy of K statement 'Sid'"."""
    return f"{doc.name} statement {stmt.label(index)!r}"
