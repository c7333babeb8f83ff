"""Policy evaluation with AWS semantics: explicit deny wins, otherwise an allow is needed.

`evaluate_kms` adds the KMS rule: a key policy either allows the caller itself, or allows the
account (its root principal) and thereby delegates to the caller's identity policies.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

from .conditions import conditions_match, glob_match
from .model import Decision, Policy, PrincipalRef, RequestContext, Statement

_ASSUMED_ROLE = re.compile(r"^arn:(aws[\w-]*):sts::(\d{12}):assumed-role/([^/]+)/.+$")


def action_matches(pattern: str, action: str) -> bool:
    """`kms:Decrypt` vs `KMS:De*` — wildcards, case-insensitive (as IAM matches actions)."""
    return glob_match(pattern, action, ignore_case=True)


def resource_matches(pattern: str, resource: str) -> bool:
    """ARN pattern with `*`/`?` wildcards; `*` alone matches anything."""
    return pattern == "*" or glob_match(pattern, resource)


def root_arn(account: str, partition: str = "aws") -> str:
    return f"arn:{partition}:iam::{account}:root"


def principal_matches(ref: PrincipalRef, principal: str) -> bool:
    """Does the policy principal `ref` name the caller `principal` itself?

    An assumed-role session matches its role's ARN (any path). A root ARN matches only the
    root caller here; account delegation is the KMS evaluator's business.
    """
    if ref.kind == "AWS":
        if ref.value == "*" or ref.value == principal:
            return True
        m = _ASSUMED_ROLE.match(principal)
        if m:
            part, acct, name = m.groups()
            pref = f"arn:{part}:iam::{acct}:role/"
            return ref.value.startswith(pref) and ref.value.rsplit("/", 1)[-1] == name
        return False
    return ref.value == principal  # Service / Federated / CanonicalUser: exact name


def _principal_ok(stmt: Statement, principal: str) -> bool:
    if stmt.principals is not None:
        return any(principal_matches(p, principal) for p in stmt.principals)
    if stmt.not_principals is not None:
        return not any(principal_matches(p, principal) for p in stmt.not_principals)
    return True  # identity policy: the statement belongs to the caller


def _listed(
    listed: Iterable[str] | None, not_listed: Iterable[str] | None, matches: Callable[[str], bool]
) -> bool:
    """Action/NotAction (or Resource/NotResource): in the list, or not in the Not- list."""
    if listed is not None:
        return any(matches(p) for p in listed)
    return not_listed is None or not any(matches(p) for p in not_listed)


def request_matches(stmt: Statement, ctx: RequestContext) -> bool:
    """Action, resource and conditions (not the principal) apply to the request."""
    return (
        _listed(stmt.actions, stmt.not_actions, lambda a: action_matches(a, ctx.action))
        and _listed(stmt.resources, stmt.not_resources, lambda r: resource_matches(r, ctx.resource))
        and conditions_match(stmt.conditions, ctx.keys)  # type: ignore[arg-type]
    )


def statement_matches(stmt: Statement, ctx: RequestContext) -> bool:
    """The statement applies to this caller and request."""
    return _principal_ok(stmt, ctx.principal) and request_matches(stmt, ctx)


def _labels(policy: Policy, pred: Callable[[Statement], bool]) -> list[str]:
    return [s.label(i) for i, s in enumerate(policy.statements) if pred(s)]


def evaluate(ctx: RequestContext, policies: Sequence[Policy]) -> Decision:
    """Generic evaluation: any matching Deny denies, else any matching Allow allows."""
    denies: list[str] = []
    allows: list[str] = []
    for pol in policies:
        for i, s in enumerate(pol.statements):
            if statement_matches(s, ctx):
                (denies if s.effect == "Deny" else allows).append(s.label(i))
    if denies:
        return Decision(False, "with an explicit deny", tuple(denies))
    if allows:
        return Decision(True, "allowed", tuple(allows))
    return Decision(False, f"because no policy allows the {ctx.action} action", ())


def _delegates_to_account(stmt: Statement, ctx: RequestContext) -> bool:
    """A key-policy statement whose principal is the caller's account (root)."""
    if stmt.principals is None:
        return False
    acct_root = root_arn(ctx.account)
    return any(
        p.kind == "AWS" and (p.value == acct_root or p.value.endswith(f"::{ctx.account}:root"))
        for p in stmt.principals
    ) and request_matches(stmt, ctx)


def _resource_account(arn: str) -> str | None:
    parts = arn.split(":", 5)
    return parts[4] if len(parts) == 6 and parts[0] == "arn" and parts[4] else None


def evaluate_kms(
    ctx: RequestContext, key_policy: Policy, identity_policies: Sequence[Policy]
) -> Decision:
    """KMS authorization (KMS Developer Guide, "Key policies" / "Default key policy").

    Explicit deny in the key policy or an identity policy denies. Otherwise allowed when the
    key policy allows the caller directly, or allows the caller's account root and an identity
    policy of the caller allows. For a key of another account (from the resource ARN) both
    are always needed: the key policy must allow the caller or its account, and an identity
    policy of the caller must allow too. `reason` carries AWS's AccessDenied phrasing.
    """
    key_deny = _labels(key_policy, lambda s: s.effect == "Deny" and statement_matches(s, ctx))
    if key_deny:
        return Decision(False, "with an explicit deny in a resource-based policy", tuple(key_deny))
    id_deny = [
        lab
        for pol in identity_policies
        for lab in _labels(pol, lambda s: s.effect == "Deny" and statement_matches(s, ctx))
    ]
    if id_deny:
        return Decision(False, "with an explicit deny in an identity-based policy", tuple(id_deny))
    direct = _labels(key_policy, lambda s: s.effect == "Allow" and statement_matches(s, ctx))
    cross_account = _resource_account(ctx.resource) not in (None, ctx.account)
    if direct and not cross_account:
        return Decision(True, "allowed by the key policy", tuple(direct))
    delegated = direct or _labels(
        key_policy, lambda s: s.effect == "Allow" and _delegates_to_account(s, ctx)
    )
    if not delegated:
        return Decision(
            False, f"because no resource-based policy allows the {ctx.action} action", ()
        )
    id_allow = [
        lab
        for pol in identity_policies
        for lab in _labels(pol, lambda s: s.effect == "Allow" and statement_matches(s, ctx))
    ]
    if id_allow:
        return Decision(
            True,
            "allowed by the key policy (account) and an identity policy",
            tuple(delegated + id_allow),
        )
    return Decision(False, f"because no identity-based policy allows the {ctx.action} action", ())
