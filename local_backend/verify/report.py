"""What verify reports: a Check per host and check, rendered as a table, JSON or JUnit XML."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from enclavekit.lint.reporters import junit


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0
    applies: bool = True  # False: the check does not apply to this host (`detail` says why)


@dataclass
class HostReport:
    stack: str
    logical_id: str
    instance_id: str
    enclave_id: str | None
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


@dataclass
class VerifyReport:
    hosts: list[HostReport]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.hosts) and not self.problems and all(h.ok for h in self.hosts)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": self.problems,
            "hosts": [
                {
                    "stack": h.stack,
                    "logical_id": h.logical_id,
                    "instance_id": h.instance_id,
                    "enclave_id": h.enclave_id,
                    "ok": h.ok,
                    "checks": [c.__dict__ for c in h.checks],
                }
                for h in self.hosts
            ],
        }

    def table(self) -> str:
        rows = [("stack/host", "check", "result", "detail")]
        shared = Counter((h.stack, h.logical_id) for h in self.hosts)
        for h in self.hosts:
            # a fleet's instances share their launch template's logical id: name the instance
            label = f"{h.stack}/{h.logical_id}" + (
                f"/{h.instance_id}" if shared[(h.stack, h.logical_id)] > 1 else ""
            )
            for c in h.checks:
                result = "N/A" if not c.applies else "PASS" if c.ok else "FAIL"
                rows.append((label, c.name, result, c.detail))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = []
        for i, r in enumerate(rows):
            lines.append("  ".join(r[j].ljust(widths[j]) for j in range(3)) + "  " + r[3])
            if i == 0:
                lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
        lines.extend(f"problem: {p}" for p in self.problems)
        passed = sum(c.ok and c.applies for h in self.hosts for c in h.checks)
        na = sum(not c.applies for h in self.hosts for c in h.checks)
        total = sum(len(h.checks) for h in self.hosts)
        lines.append(
            f"{passed} passed, {total - passed - na} failed"
            + (f", {na} did not apply" if na else "")
        )
        return "\n".join(lines)

    def to_junit(self) -> str:
        """One test case per host and check (N/A ones skipped), one failed case per problem,
        written by lint's JUnit writer."""
        cases = []
        shared = Counter((h.stack, h.logical_id) for h in self.hosts)
        for h in self.hosts:
            fleet = f".{h.instance_id}" if shared[(h.stack, h.logical_id)] > 1 else ""
            for c in h.checks:
                cases.append(
                    junit.Case(
                        classname=f"enclavekit.verify.{h.stack}.{h.logical_id}{fleet}",
                        name=c.name,
                        failure=None if c.ok else c.detail,
                        skipped=None if c.applies else c.detail,
                        seconds=c.seconds,
                    )
                )
        cases += [junit.Case("enclavekit.verify", "deployment", failure=p) for p in self.problems]
        return junit.document("enclavekit verify", [("enclavekit verify", cases)])


def timed(name: str, call: Callable[[], tuple[bool, str] | Check]) -> Check:
    """Run one check: `call` answers (ok, detail) or a whole `Check` (one that did not apply);
    an exception is a failed check with its reason (a check that cannot run fails)."""
    start = time.monotonic()
    try:
        out = call()
    except Exception as exc:  # noqa: BLE001 - a check that cannot run fails, with its reason
        out = (False, f"could not check: {type(exc).__name__}: {exc}")
    seconds = round(time.monotonic() - start, 3)
    if isinstance(out, Check):
        return Check(name, out.ok, out.detail, seconds, out.applies)
    ok, detail = out
    return Check(name, ok, detail.replace("\n", " "), seconds)


def not_applicable(name: str, why: str) -> Check:
    """The row of a check that does not apply to a host, saying why (N/A, not a skip)."""
    return Check(name, True, f"does not apply: {why}", applies=False)


def could_not_check(names: Sequence[str], exc: Exception, seconds: float = 0.0) -> list[Check]:
    """Failed rows for checks that could not run because of `exc`."""
    why = f"could not check: {type(exc).__name__}: {exc}"
    return [Check(n, False, why, seconds) for n in names]


def short(hex_value: str) -> str:
    """A PCR or digest as a table shows it: its first 8 hex digits."""
    return f"{hex_value[:8]}…"
