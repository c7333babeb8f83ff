"""Fingerprints of findings and the baseline mode (`--baseline FILE`).

A team adopting the linter on an existing stack records one run and from then on sees only
what is new. A finding's fingerprint is its rule, template (relative to the working
directory), resource and message: stable across machines and runs, changed when the finding
changes. A previous `--format json`, `sarif` or `gitlab` report can serve as the baseline.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

from enclavekit.errors import InvalidInput
from enclavekit.lint.model import Finding, Report
from enclavekit.policy.parse import load_json

SARIF_KEY = "enclavekitFinding/v1"


def display_path(template: str, *, uri: bool = False) -> str:
    """The template path relative to the working directory when inside it, else absolute
    (`uri`: as a file:// URI, what SARIF wants for a file outside the checkout)."""
    path = Path(template).resolve()
    try:
        return path.relative_to(Path(os.getcwd()).resolve()).as_posix()
    except ValueError:
        return path.as_uri() if uri else path.as_posix()


def fingerprint(f: Finding) -> str:
    loc = f.location
    text = f"{f.rule_id}|{display_path(loc.template)}|{loc.logical_id}|{f.message}"
    return hashlib.sha256(text.encode()).hexdigest()


def _collect(doc: Any) -> set[str]:
    if isinstance(doc, dict) and isinstance(doc.get("runs"), list):  # SARIF
        out = set()
        for run in doc["runs"]:
            for r in (run or {}).get("results") or [] if isinstance(run, dict) else []:
                fp = (
                    (r.get("partialFingerprints") or {}).get(SARIF_KEY)
                    if isinstance(r, dict)
                    else None
                )
                if isinstance(fp, str):
                    out.add(fp)
        return out
    items = doc.get("findings") if isinstance(doc, dict) else doc  # ours / GitLab's list
    if not isinstance(items, list):
        raise InvalidInput("found neither findings, a list nor SARIF runs")
    return {
        i["fingerprint"]
        for i in items
        if isinstance(i, dict) and isinstance(i.get("fingerprint"), str)
    }


def load_baseline(path: str | Path) -> set[str]:
    """The fingerprints of a previous report (json, sarif or gitlab format)."""
    try:
        return _collect(load_json(Path(path).read_text(encoding="utf-8"), "JSON"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = (str(exc).splitlines() or ["?"])[0][:200]
        raise InvalidInput(
            f"--baseline {path}: expected a previous enclavekit lint report (json, sarif or "
            f"gitlab format), {reason}"
        ) from None


def apply_baseline(report: Report, known: set[str]) -> Report:
    """The report without the findings the baseline already has."""
    kept = tuple(f for f in report.findings if fingerprint(f) not in known)
    return dataclasses.replace(report, findings=kept, baselined=len(report.findings) - len(kept))
