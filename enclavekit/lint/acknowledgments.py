"""Acknowledgments written in resource Metadata: `"enclavekit:acknowledge": [{"id", "reason"}]`.

An acknowledged finding stays in every report, marked as such (SARIF suppressions); only a
well-formed acknowledgment with a non-empty reason counts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from enclavekit.errors import InvalidInput

ACK_METADATA = "enclavekit:acknowledge"
RULE_ID = re.compile(r"^EK-[A-Z]+-\d{3}$")


@dataclass(frozen=True)
class Acknowledgment:
    """One acknowledged rule on one resource, with the reason someone gave for it."""

    rule_id: str
    reason: str

    def __post_init__(self) -> None:
        if not RULE_ID.match(self.rule_id):
            raise InvalidInput(
                f"acknowledgment id: expected a rule id like EK-KMS-001, got {self.rule_id!r}"
            )
        if not self.reason.strip():
            raise InvalidInput(f"acknowledgment of {self.rule_id}: a non-empty reason is required")

    def to_metadata(self) -> dict[str, str]:
        return {"id": self.rule_id, "reason": self.reason}


def parse_acknowledgments(metadata: Mapping[str, Any]) -> tuple[list[Acknowledgment], list[str]]:
    """The valid acknowledgments of a resource, and one line per malformed entry."""
    raw = metadata.get(ACK_METADATA)
    if raw is None:
        return [], []
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        return [], [
            f"{ACK_METADATA}: expected a list of {{id, reason}} objects, found {type(raw).__name__}"
        ]
    good: list[Acknowledgment] = []
    problems: list[str] = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            problems.append(
                f"{ACK_METADATA}[{i}]: expected an {{id, reason}} object, found {entry!r:.60}"
            )
            continue
        rid, reason = entry.get("id"), entry.get("reason")
        if not isinstance(rid, str) or not RULE_ID.match(rid):
            problems.append(
                f"{ACK_METADATA}[{i}]: expected an id like EK-KMS-001, found {rid!r:.60}"
            )
            continue
        if not isinstance(reason, str) or not reason.strip():
            problems.append(
                f"{ACK_METADATA}[{i}] ({rid}): a reason is mandatory, found {reason!r:.60}"
            )
            continue
        good.append(Acknowledgment(rid, reason.strip()))
    return good, problems
