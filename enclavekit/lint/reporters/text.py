"""Plain-text table for terminals and CI logs."""

from __future__ import annotations

from enclavekit.lint.model import Report, Severity


def summary(report: Report) -> str:
    """One line: counts by severity and acknowledgment."""
    live = [f for f in report.findings if not f.acknowledged]
    n = {s: sum(1 for f in live if f.severity is s) for s in Severity}
    acked = len(report.findings) - len(live)
    return (
        f"{len(report.templates)} template(s), {n[Severity.ERROR]} error(s), "
        f"{n[Severity.WARNING]} warning(s), {n[Severity.INFO]} note(s), "
        f"{acked} acknowledged"
        + (f", {report.baselined} in the baseline" if report.baselined else "")
    )


def render(report: Report) -> str:
    rows = [("SEVERITY", "RULE", "LOCATION", "MESSAGE")]
    for f in report.findings:
        loc = f.location
        where = loc.template.rsplit("/", 1)[-1] + (f":{loc.line}" if loc.line else "")
        sev = f.severity.value + (" (ack)" if f.acknowledged else "")
        msg = f.message + (f"  [acknowledged: {f.reason}]" if f.acknowledged else "")
        rows.append((sev, f.rule_id, where, msg))
    lines = []
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for r in rows:
            lines.append(
                "  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3]
            )
    lines.append(summary(report))
    return "\n".join(lines) + "\n"
