"""Helpers shared by rules: walking policy documents, attestation conditions and the enclave
hosts' user data."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from enclavekit.attested_kms import is_attestation_key
from enclavekit.lint.model import Location
from enclavekit.lint.userdata import UserData
from enclavekit.lint.world import HostFact, PolicyDoc, World
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


@dataclass(frozen=True)
class HostUserData:
    """An enclave host that has user data, as the user-data rules see it."""

    host: HostFact
    ud: UserData
    location: Location  # the host's UserData property: where each user-data finding points

    @property
    def name(self) -> str:
        """The host's logical id, as messages name it."""
        return self.host.resource.logical_id

    @property
    def where(self) -> str:
        """How an error in one of the user data's files names it ("user data of HOST")."""
        return f"user data of {self.name}"


def hosts_with_user_data(world: World) -> Iterator[HostUserData]:
    """Every enclave host with user data, in the run's host order (hosts without it are
    passed over: there is nothing to judge)."""
    for host in world.hosts:
        ud = world.user_data(host)
        if ud is not None:
            yield HostUserData(host, ud, world.at(host, "/Properties/UserData"))
