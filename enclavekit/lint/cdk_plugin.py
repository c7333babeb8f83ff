"""CDK policy-validation plugin: every `cdk synth` of an app that opts in runs the rules.

    from enclavekit.lint.cdk_plugin import EnclaveLintPlugin
    app = cdk.App()
    cdk.Validations.of(app).add_plugins(EnclaveLintPlugin())

Unacknowledged errors fail the synth; every finding (acknowledged ones marked as such) shows in
CDK's validation report with its rule id.
"""

from __future__ import annotations

from collections.abc import Sequence

import aws_cdk as cdk
import jsii

from enclavekit.errors import EnclaveKitError
from enclavekit.lint.engine import all_rules, lint_paths
from enclavekit.lint.model import Finding, Rule

PLUGIN_NAME = "enclavekit"
PLUGIN_VERSION = "0.1.0"


def _violation(f: Finding, rules: dict[str, Rule]) -> cdk.PolicyViolation:
    rule = rules.get(f.rule_id)
    loc = f.location
    description = f"[{f.rule_id}] {f.message}"
    if f.acknowledged:
        description = f"[{f.rule_id}, acknowledged: {f.reason}] {f.message}"
    locations = [f"Resources/{loc.logical_id}{loc.pointer or ''}"] if loc.logical_id else []
    return cdk.PolicyViolation(
        rule_name=f.rule_id,
        description=description,
        fix=rule.fix if rule else None,
        severity="info" if f.acknowledged else f.severity.value,
        rule_metadata={"title": rule.title} if rule else None,
        violating_resources=[
            cdk.PolicyViolatingResource(
                locations=locations,
                resource_logical_id=loc.logical_id or "",
                template_path=loc.template,
            )
        ],
    )


# jsii needs the interface members as class-level properties, not instance attributes.
@jsii.implements(cdk.IPolicyValidationPlugin)
class EnclaveLintPlugin:
    """Runs the enclavekit lint rules over the synthesized templates."""

    def __init__(self, rules: Sequence[Rule] | None = None) -> None:
        self._rules = tuple(rules) if rules is not None else all_rules()

    @property
    def name(self) -> str:
        return PLUGIN_NAME

    @property
    def rule_ids(self) -> list[str]:
        return [r.id for r in self._rules]

    @property
    def version(self) -> str:
        return PLUGIN_VERSION

    def validate(self, context: cdk.IPolicyValidationContext) -> cdk.PolicyValidationPluginReport:
        """Lint every template CDK hands over; errors without acknowledgment fail the synth."""
        try:
            report = lint_paths(list(context.template_paths), self._rules)
        except EnclaveKitError as exc:
            return cdk.PolicyValidationPluginReport(
                success=False,
                violations=[
                    cdk.PolicyViolation(
                        rule_name="EK-LINT-INPUT",
                        description=str(exc),
                        severity="error",
                        violating_resources=[],
                    )
                ],
                plugin_version=PLUGIN_VERSION,
            )
        rules = {r.id: r for r in self._rules}
        return cdk.PolicyValidationPluginReport(
            success=not report.failed,
            violations=[_violation(f, rules) for f in report.findings],
            plugin_version=PLUGIN_VERSION,
        )
