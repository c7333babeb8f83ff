"""Machine-readable JSON: every finding with its location, plus the rule table."""

from __future__ import annotations

import json

from enclavekit.lint.baseline import fingerprint
from enclavekit.lint.model import Report, Severity


def to_dict(report: Report) -> dict:
    live = [f for f in report.findings if not f.acknowledged]
    return {
        "tool": "enclavekit-lint",
        "version": 1,
        "failed": report.failed,
        "templates": list(report.templates),
        "summary": {
            "errors": sum(1 for f in live if f.severity is Severity.ERROR),
            "warnings": sum(1 for f in live if f.severity is Severity.WARNING),
            "info": sum(1 for f in live if f.severity is Severity.INFO),
            "acknowledged": len(report.findings) - len(live),
            "baselined": report.baselined,
        },
        "findings": [
            {
                "rule_id": f.rule_id,
                "fingerprint": fingerprint(f),
                "severity": f.severity.value,
                "message": f.message,
                "template": f.location.template,
                "logical_id": f.location.logical_id,
                "line": f.location.line,
                "cdk_path": f.location.cdk_path,
                "pointer": f.location.pointer,
                "acknowledged": f.acknowledged,
                "reason": f.reason,
            }
            for f in report.findings
        ],
        "rules": [
            {
                "id": r.id,
                "severity": r.severity.value,
                "title": r.title,
                "explanation": r.explanation,
                "fix": r.fix,
            }
            for r in report.rules
        ],
    }


def render(report: Report) -> str:
    return json.dumps(to_dict(report), indent=2) + "\n"
