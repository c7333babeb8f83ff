"""Construct-level helper that writes enclavekit acknowledgments into resource Metadata.

    acknowledge(host, "EK-PCR-002", "dev stack: the debug image is intended")

The reason is mandatory; the acknowledged finding is still reported, marked as acknowledged.
"""

from __future__ import annotations

import aws_cdk as cdk

from constructs import IConstruct
from enclavekit.errors import InvalidInput
from enclavekit.lint.acknowledgments import ACK_METADATA, RULE_ID, Acknowledgment


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
