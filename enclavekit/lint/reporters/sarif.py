"""SARIF 2.1.0 for GitHub code scanning: rule metadata, levels, the template line of each
resource as physical location, the CDK construct path as logical location, and acknowledged
findings as in-source suppressions (kept, never dropped)."""

from __future__ import annotations

import json

from enclavekit.lint.baseline import SARIF_KEY, display_path, fingerprint
from enclavekit.lint.model import Finding, Report, Rule

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://github.com/enclavekit/enclavekit/blob/main/docs/lint-rules.md"
VERSION = "0.1.0"


def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."


def _pascal(title: str) -> str:
    return "".join(w[:1].upper() + w[1:] for w in title.replace("-", " ").split() if w.isalnum())


def _rule(rule: Rule) -> dict:
    anchor = rule.id.lower()
    return {
        "id": rule.id,
        "name": _pascal(rule.title),
        "shortDescription": {"text": _sentence(rule.title)},
        "fullDescription": {"text": _sentence(rule.explanation)},
        "help": {
            "text": _sentence(rule.fix),
            "markdown": f"**{rule.title}**\n\n{rule.explanation}\n\n**Fix:** {rule.fix}",
        },
        "helpUri": f"{INFORMATION_URI}#{anchor}",
        "defaultConfiguration": {"level": rule.severity.sarif_level},
        "properties": {"tags": ["security", "nitro-enclaves"]},
    }


def _result(f: Finding, index: dict[str, int]) -> dict:
    loc = f.location
    physical: dict = {"artifactLocation": {"uri": display_path(loc.template, uri=True)}}
    if loc.line:
        physical["region"] = {"startLine": loc.line}
    location: dict = {"physicalLocation": physical}
    if loc.cdk_path or loc.logical_id:
        location["logicalLocations"] = [
            {
                "name": loc.logical_id or loc.cdk_path,
                "fullyQualifiedName": loc.cdk_path or loc.logical_id,
                "kind": "resource",
            }
        ]
    fp = fingerprint(f)
    result: dict = {
        "ruleId": f.rule_id,
        "level": f.severity.sarif_level,
        "message": {"text": _sentence(f.message)},
        "locations": [location],
        "partialFingerprints": {SARIF_KEY: fp},
    }
    if f.rule_id in index:
        result["ruleIndex"] = index[f.rule_id]
    if f.acknowledged:
        result["suppressions"] = [
            {
                "kind": "inSource",
                "status": "accepted",
                "justification": f.reason or "",
            }
        ]
    return result


def to_dict(report: Report) -> dict:
    index = {r.id: i for i, r in enumerate(report.rules)}
    return {
        "$schema": SCHEMA_URI,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "enclavekit-lint",
                        "version": VERSION,
                        "semanticVersion": VERSION,
                        "informationUri": INFORMATION_URI,
                        "rules": [_rule(r) for r in report.rules],
                    }
                },
                "results": [_result(f, index) for f in report.findings],
                "columnKind": "utf16CodeUnits",
            }
        ],
    }


def render(report: Report) -> str:
    return json.dumps(to_dict(report), indent=2) + "\n"
