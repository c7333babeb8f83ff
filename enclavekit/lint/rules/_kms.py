"""KMS facts shared by the KMS rules: which keys are enclave keys, who to ask about."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.lint.model import Location
from enclavekit.lint.world import HostFact, KeyFact, RoleFact, World
from enclavekit.policy import Decision, evaluate_kms


def enclave_keys(world: World) -> list[KeyFact]:
    """Keys bound to an enclave: attestation conditions in the policy, or named by a host."""
    out = {id(k): k for k in world.keys if k.attested and k.doc is not None}
    for host in world.hosts:
        for k in world.host_keys(host):
            if k.doc is not None:
                out.setdefault(id(k), k)
    return list(out.values())


def key_principals(world: World, key: KeyFact) -> list[str]:
    """Every role of the run plus the literal AWS principals of the key policy (not roots:
    an account root delegates to identity policies, which EK-KMS-002 judges)."""
    names = [r.arn for r in world.roles]
    assert key.doc is not None
    for stmt in key.doc.policy.statements:
        for p in stmt.principals or ():
            if p.kind == "AWS" and not p.value.endswith(":root") and "{{" not in p.value:
                names.append(p.value if p.value != "*" else "arn:aws:iam::999999999999:role/any")
    return list(dict.fromkeys(names))


def unattested_decision(world: World, key: KeyFact, principal: str, action: str) -> Decision:
    """KMS's answer to `principal` calling `action` on `key` without an attestation document."""
    assert key.doc is not None
    role = world.role_by_arn(principal, key.template)
    identity = [d.policy for d in role.policies] if role else []
    return evaluate_kms(world.unattested(principal, action, key.arn), key.doc.policy, identity)


def host_roles_and_keys(world: World) -> Iterator[tuple[HostFact, RoleFact, KeyFact]]:
    """(host, its role, a key it can use whose policy was read), for every host with a role."""
    for host in world.hosts:
        if host.role is None:
            continue
        for key in world.host_keys(host):
            if key.doc is not None:
                yield host, host.role, key


def key_policy_at(world: World, key: KeyFact) -> Location:
    """Where a finding about `key`'s policy points: its KeyPolicy property."""
    return world.at(key, "/Properties/KeyPolicy")
