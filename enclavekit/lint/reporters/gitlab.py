"""GitLab Code Quality report (artifacts:reports:codequality): a JSON array of issues with
description, check_name, fingerprint, severity and location.path / location.lines.begin, as
GitLab documents it. Acknowledged findings are left out: GitLab has no suppressed state."""

from __future__ import annotations

import json

from enclavekit.lint.baseline import display_path, fingerprint
from enclavekit.lint.model import Report

# GitLab's severities: info, minor, major, critical, blocker.
_SEVERITY = {"error": "major", "warning": "minor", "info": "info"}


def to_list(report: Report) -> list[dict]:
    return [
        {
            "description": f"{f.rule_id}: {f.message}",
            "check_name": f.rule_id,
            "fingerprint": fingerprint(f),
            "severity": _SEVERITY[f.severity.value],
            "location": {
                "path": display_path(f.location.template),
                "lines": {"begin": f.location.line or 1},
            },
        }
        for f in report.findings
        if not f.acknowledged
    ]


def render(report: Report) -> str:
    return json.dumps(to_list(report), indent=2) + "\n"
