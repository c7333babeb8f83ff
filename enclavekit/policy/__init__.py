"""IAM policy model and evaluator with AWS semantics, for the local KMS and the linter.

Pure: no I/O. `parse_policy` -> `Policy`; `evaluate_kms` / `evaluate` -> `Decision`.
Imports: the stdlib and `enclavekit.errors` only.
"""

from __future__ import annotations

from .conditions import OPERATORS, condition_matches, conditions_match, glob_match
from .evaluate import (
    action_matches,
    evaluate,
    evaluate_kms,
    principal_matches,
    request_matches,
    resource_matches,
    root_arn,
    statement_matches,
)
from .model import Condition, Decision, Policy, PrincipalRef, RequestContext, Statement
from .parse import parse_policy

__all__ = [
    "OPERATORS",
    "Condition",
    "Decision",
    "Policy",
    "PrincipalRef",
    "RequestContext",
    "Statement",
    "action_matches",
    "condition_matches",
    "conditions_match",
    "evaluate",
    "evaluate_kms",
    "glob_match",
    "parse_policy",
    "principal_matches",
    "request_matches",
    "resource_matches",
    "root_arn",
    "statement_matches",
]
