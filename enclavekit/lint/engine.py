"""Run the rules over a set of templates and mark acknowledged findings."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from enclavekit.errors import InvalidInput
from enclavekit.lint.acknowledgments import parse_acknowledgments
from enclavekit.lint.model import Finding, Report, Rule
from enclavekit.lint.resolve import ACCOUNT
from enclavekit.lint.templates import Template, load_paths
from enclavekit.lint.world import World
from enclavekit.policy.parse import load_json

_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
_ACCOUNT_IN_ARN = re.compile(r"(arn:aws[a-z-]*:iam::)\d{12}:")


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


def load_key_policy(spec: str) -> tuple[str, str, Any]:
    """`KEYID=FILE` of --key-policy: a key policy applied outside the templates (PutKeyPolicy
    after deploy). KEYID is a key's logical id in a template, or the key id / ARN of a key no
    template creates. Account ids in IAM ARNs become the linter's account (keys are judged as
    owned by the caller's account), so a policy naming arn:aws:iam::<acct>:role/R meets the
    template's role R."""
    kid, eq, file = spec.partition("=")
    if not eq or not kid or not file:
        raise InvalidInput(f"--key-policy: expected KEYID=FILE, got {spec!r}")
    try:
        text = Path(file).read_text(encoding="utf-8")
        if len(text) > 1024 * 1024:
            raise InvalidInput(f"found {len(text)} characters (KMS allows 32 KB)")
        raw = load_json(_ACCOUNT_IN_ARN.sub(rf"\g<1>{ACCOUNT}:", text), "JSON")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = (str(exc).splitlines() or ["?"])[0][:200]
        raise InvalidInput(
            f"--key-policy {kid}={file}: expected a readable JSON key policy, {reason}"
        ) from None
    return kid, file, raw


def lint_templates(
    templates: Sequence[Template],
    rules: Sequence[Rule] | None = None,
    key_policies: Sequence[tuple[str, str, Any]] = (),
) -> Report:
    """Lint parsed templates with `rules` (all by default); `key_policies` from
    load_key_policy override or add key policies."""
    chosen = tuple(rules) if rules is not None else all_rules()
    world = World(tuple(templates), key_policies=tuple(key_policies))
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
    return Report(unique, chosen, tuple(sorted(str(t.path) for t in templates)))


def lint_paths(
    paths: Iterable[str | Path],
    rules: Sequence[Rule] | None = None,
    *,
    key_policies: Sequence[str] = (),
    skip_non_templates: bool = False,
) -> Report:
    """Lint cdk.out directories, directories of templates and template files (TemplateError on
    unreadable input); `key_policies` are --key-policy KEYID=FILE specs."""
    policies = [load_key_policy(spec) for spec in key_policies]
    return lint_templates(load_paths(list(paths), skip_non_templates), rules, policies)
