"""The linter from the CDK side: a synth-time validation plugin and the acknowledgment helper.

    from enclave_constructs.lint import EnclaveLintPlugin, acknowledge
    app = cdk.App()
    cdk.Validations.of(app).add_plugins(EnclaveLintPlugin())
    acknowledge(host, "EK-PCR-002", "dev stack: the debug image is intended")

The plugin runs enclavekit's lint rules (`enclavekit.lint`) over every synthesized template:
unacknowledged errors fail the synth; every finding (acknowledged ones marked as such) shows in
CDK's validation report with its rule id. `acknowledge` writes the acknowledgment into the
resource Metadata the linter reads; the reason is mandatory and the finding is still reported,
marked as acknowledged. Both need aws_cdk, so they live here and not in the core.
"""

from __future__ import annotations

from collections.abc import Sequence

import aws_cdk as cdk
import jsii

from constructs import IConstruct
from enclavekit.errors import EnclaveKitError, InvalidInput
from enclavekit.lint.acknowledgments import ACK_METADATA, RULE_ID, Acknowledgment
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


# ------------------------------------------------------------------ acknowledgments


def _cfn_resources(scope: IConstruct) -> list[cdk.CfnResource]:
    if isinstance(scope, cdk.CfnResource):
        return [scope]
    default = scope.node.default_child
    if isinstance(default, cdk.CfnResource):
        return [default]
    return [c for c in scope.node.find_all() if isinstance(c, cdk.CfnResource)]


def acknowledge(scope: IConstruct, rule_id: str, reason: str) -> list[str]:
    """Acknowledge `rule_id` on the CloudFormation resource(s) behind `scope`.

    An L1 resource gets it directly, an L2 construct on its default child, any other scope on
    every resource under it. Returns the paths of the resources written to.
    """
    if not isinstance(rule_id, str) or not RULE_ID.match(rule_id):
        raise InvalidInput(f"acknowledge: rule id must look like EK-KMS-001, got {rule_id!r}")
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput(
            f"acknowledge {rule_id}: reason must be a non-empty string, got {reason!r}"
        )
    ack = Acknowledgment(rule_id, reason.strip())
    targets = _cfn_resources(scope)
    if not targets:
        raise InvalidInput(
            f"acknowledge {rule_id}: expected a construct with CloudFormation resources under "
            f"it, found none at {scope.node.path!r}"
        )
    for res in targets:
        existing = res.get_metadata(ACK_METADATA) or []
        entries = [e for e in existing if not (isinstance(e, dict) and e.get("id") == rule_id)]
        entries.append(ack.to_metadata())
        res.add_metadata(ACK_METADATA, entries)
    return [r.node.path for r in targets]
