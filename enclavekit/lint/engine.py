"""Run the rules over a set of templates and mark acknowledged findings."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path

from enclavekit.lint.acknowledgments import parse_acknowledgments
from enclavekit.lint.model import Finding, Report, Rule
from enclavekit.lint.templates import Template, load_paths
from enclavekit.lint.world import World

_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


def all_rules() -> tuple[Rule, ...]:
    """Every rule shipped, in id order."""
    from enclavekit.lint.rules import RULES

    return RULES


def _acknowledge(findings: Iterable[Finding], world: World) -> list[Finding]:
    acks: dict[tuple[str, str], dict[str, str]] = {}
    for tpl, res in world.resources():
        good, _ = parse_acknowledgments(res.metadata)
        if good:
            acks[(str(tpl.path), res.logical_id)] = {a.rule_id: a.reason for a in good}
    out = []
    for f in findings:
        reason = acks.get((f.location.template, f.location.logical_id or ""), {}).get(f.rule_id)
        if reason and not f.rule_id.startswith("EK-ACK-"):
            f = dataclasses.replace(f, acknowledged=True, reason=reason)
        out.append(f)
    return out


def lint_templates(templates: Sequence[Template], rules: Sequence[Rule] | None = None) -> Report:
    """Lint parsed templates with `rules` (all by default)."""
    chosen = tuple(rules) if rules is not None else all_rules()
    world = World(tuple(templates))
    findings: list[Finding] = []
    for rule in chosen:
        findings.extend(rule.check(world))
    findings = _acknowledge(findings, world)
    findings.sort(
        key=lambda f: (
            f.acknowledged,
            _SEVERITY_ORDER[f.severity.value],
            f.location.template,
            f.location.line or 0,
            f.rule_id,
            f.message,
        )
    )
    unique = tuple(dict.fromkeys(findings))
    return Report(unique, chosen, tuple(str(t.path) for t in templates))


def lint_paths(paths: Iterable[str | Path], rules: Sequence[Rule] | None = None) -> Report:
    """Lint cdk.out directories and/or template files (TemplateError on unreadable input)."""
    return lint_templates(load_paths(list(paths)), rules)
