"""Value objects of an IAM policy and of the request it is judged against.

Kept separate from parsing and evaluation so the linter can build and inspect them directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from enclavekit.errors import PolicyDocumentError

EFFECTS = ("Allow", "Deny")
QUALIFIERS = (None, "ForAnyValue", "ForAllValues")


@dataclass(frozen=True)
class PrincipalRef:
    """One principal of a Principal/NotPrincipal element, e.g. ("AWS", "arn:...:root").

    `kind` is "AWS", "Service", "Federated" or "CanonicalUser"; `Principal: "*"` becomes
    ("AWS", "*"); a bare account id becomes its root ARN (as AWS itself rewrites it).
    """

    kind: str
    value: str


@dataclass(frozen=True)
class Condition:
    """One (operator, key) pair of a Condition block; its `values` are ORed."""

    operator: str  # base operator without qualifier or IfExists, e.g. "StringEqualsIgnoreCase"
    key: str
    values: tuple[str, ...]
    if_exists: bool = False
    qualifier: str | None = None  # None | "ForAnyValue" | "ForAllValues"

    def __post_init__(self) -> None:
        if self.qualifier not in QUALIFIERS:
            raise PolicyDocumentError(
                f"Condition.qualifier must be one of {QUALIFIERS}, got {self.qualifier!r}"
            )


@dataclass(frozen=True)
class Statement:
    """One statement. `principals is None` means no Principal element (identity policy)."""

    sid: str | None
    effect: str
    principals: tuple[PrincipalRef, ...] | None = None
    not_principals: tuple[PrincipalRef, ...] | None = None
    actions: tuple[str, ...] | None = None
    not_actions: tuple[str, ...] | None = None
    resources: tuple[str, ...] | None = None
    not_resources: tuple[str, ...] | None = None
    conditions: tuple[Condition, ...] = ()

    def __post_init__(self) -> None:
        if self.effect not in EFFECTS:
            raise PolicyDocumentError(
                f"Statement.effect must be Allow or Deny, got {self.effect!r}"
            )

    def label(self, index: int) -> str:
        """The Sid, or `#index` for statements without one (used in decisions)."""
        return self.sid if self.sid else f"#{index}"


@dataclass(frozen=True)
class Policy:
    """A parsed policy document."""

    statements: tuple[Statement, ...]
    version: str | None = None
    id: str | None = None


def _freeze_keys(keys: Mapping[str, object]) -> Mapping[str, str | tuple[str, ...]]:
    out: dict[str, str | tuple[str, ...]] = {}
    for name, value in keys.items():
        if value is None:
            continue
        if isinstance(value, list | tuple | set | frozenset):
            out[name.lower()] = tuple(_scalar(v) for v in value)
        else:
            out[name.lower()] = _scalar(value)
    return MappingProxyType(out)


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class RequestContext:
    """What is being asked: who, in which account, which action on which resource, and the
    condition keys of the request (names case-insensitive; a list value is multi-valued)."""

    principal: str
    account: str
    action: str
    resource: str
    keys: Mapping[str, str | list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", _freeze_keys(self.keys))

    def key(self, name: str) -> str | tuple[str, ...] | None:
        """The value of condition key `name` (case-insensitive), None when absent."""
        return self.keys.get(name.lower())  # type: ignore[return-value]


@dataclass(frozen=True)
class Decision:
    """The answer. `reason` is AWS's phrase (e.g. "with an explicit deny in a resource-based
    policy"); `statements` are the labels of the statements that decided it."""

    allowed: bool
    reason: str
    statements: tuple[str, ...] = ()
