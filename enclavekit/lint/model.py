"""Value objects of the linter: rules, findings, acknowledgments and the run's report."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from enclavekit.errors import InvalidInput

if TYPE_CHECKING:
    from enclavekit.lint.world import World


class Severity(enum.Enum):
    """How bad a finding is; only errors fail a run (exit 1, failed synth)."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def sarif_level(self) -> str:
        return {"error": "error", "warning": "warning", "info": "note"}[self.value]


@dataclass(frozen=True)
class Location:
    """Where a finding sits: template file, resource, line, construct path, JSON pointer."""

    template: str
    logical_id: str | None = None
    line: int | None = None
    cdk_path: str | None = None
    pointer: str | None = None


@dataclass(frozen=True)
class Finding:
    """One rule violation on one resource; `message` is one line naming the resource."""

    rule_id: str
    severity: Severity
    message: str
    location: Location
    acknowledged: bool = False
    reason: str | None = None

    def __post_init__(self) -> None:
        if "\n" in self.message:
            raise InvalidInput(f"finding message must be one line, got {self.message!r}")


RuleCheck = Callable[["World"], Iterable[Finding]]


@dataclass(frozen=True)
class Rule:
    """A rule: stable id, severity, title, why it matters and how to fix it, plus its check."""

    id: str
    severity: Severity
    title: str
    explanation: str
    fix: str
    check: RuleCheck = field(compare=False, repr=False)

    def finding(
        self,
        location: Location,
        message: str,
        severity: Severity | None = None,
    ) -> Finding:
        """Build a finding of this rule (severity may be lowered per finding)."""
        return Finding(self.id, severity or self.severity, message, location)


@dataclass(frozen=True)
class Report:
    """The result of one lint run over a set of templates."""

    findings: tuple[Finding, ...]
    rules: tuple[Rule, ...]
    templates: tuple[str, ...]
    baselined: int = 0  # findings dropped because a --baseline report already had them

    @property
    def errors(self) -> tuple[Finding, ...]:
        """Unacknowledged errors: what makes the run fail."""
        return tuple(
            f for f in self.findings if f.severity is Severity.ERROR and not f.acknowledged
        )

    @property
    def failed(self) -> bool:
        return bool(self.errors)
